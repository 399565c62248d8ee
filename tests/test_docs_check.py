"""The site checker finds broken links; every public name has a docstring."""

import importlib
import inspect
import pkgutil

from check_site import check_links  # tools/browser, on sys.path (conftest.py)

import mailqueue


def page(body):
    return f"<html><body>{body}</body></html>"


def test_a_broken_link_anchor_or_image_is_reported(tmp_path):
    (tmp_path / "api").mkdir()
    (tmp_path / "index.html").write_text(
        page(
            '<a href="api/one.html#mailqueue.Runner">ok</a>'
            '<a href="api/one.html#nowhere">broken anchor</a>'
            '<a href="gone.html">broken link</a>'
            '<img src="_images/missing.svg">'
            '<a href="https://example.org/">external</a><a href="#">top</a>'
        )
    )
    (tmp_path / "api" / "one.html").write_text(
        page('<dt id="mailqueue.Runner">Runner</dt><a href="../index.html">up</a>')
    )
    assert check_links(tmp_path) == [
        "index.html: <a> api/one.html#nowhere: no such anchor",
        "index.html: <a> gone.html: no such file",
        "index.html: <img> _images/missing.svg: no such file",
    ]
    (tmp_path / "index.html").write_text(
        page('<a href="api/one.html#mailqueue.Runner">ok</a>')
    )
    assert check_links(tmp_path) == []


def test_every_public_name_has_a_docstring():
    undocumented = []
    for module in pkgutil.walk_packages(mailqueue.__path__, "mailqueue."):
        # mailqueue.mailman imports GNU Mailman, which this process must not
        # (tests/mailman_plugin/in_mailman.py checks its docstrings there).
        if module.name.endswith("__main__") or module.name == "mailqueue.mailman":
            continue
        loaded = importlib.import_module(module.name)
        assert loaded.__doc__, module.name
        for name in loaded.__all__:
            value = getattr(loaded, name)
            # Only what mailqueue defines: a name may stand for the standard
            # library's own function (pickle_rules.RECONSTRUCTOR).
            if (
                (inspect.isclass(value) or inspect.isfunction(value))
                and value.__module__.startswith("mailqueue")
                and not (value.__doc__ or "").strip()
            ):
                undocumented.append(f"{module.name}.{name}")
    assert undocumented == []

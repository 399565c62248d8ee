"""The plugin's page shows the configuration the live test enables it with."""

from pathlib import Path

from hostile_site import PLUGIN_CFG

PAGE = Path(__file__).resolve().parents[2] / "docs" / "mailman-plugin.rst"


def ini_blocks(text):
    blocks, lines = [], text.splitlines()
    for index, line in enumerate(lines):
        if line.strip() == ".. code-block:: ini":
            body = []
            for inner in lines[index + 2 :]:
                if inner and not inner.startswith("    "):
                    break
                body.append(inner[4:])
            blocks.append("\n".join(body).strip() + "\n")
    return blocks


def test_the_page_enables_the_plugin_as_the_live_test_does():
    assert ini_blocks(PAGE.read_text(encoding="utf-8")) == [PLUGIN_CFG.lstrip()]

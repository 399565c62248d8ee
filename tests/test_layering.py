"""Imports point one way: core -> configuration -> runners -> master -> CLI.

Read from the source (every import, also those inside functions), so that a
late import cannot hide a cycle.
"""

import ast
import importlib
from pathlib import Path

import pytest

import mailqueue

PACKAGE = Path(mailqueue.__file__).parent

#: Each module's layer: a module may import only from its own layer or below.
LAYERS = {
    # The core: queue files, messages, switchboards, lists.  No configuration.
    "errors": 0,
    "message": 0,
    "pickle_rules": 0,
    "pickle_sketch": 0,
    "pickle_checker": 0,
    "safepickle": 0,
    "seal": 0,
    "qfile": 0,
    "ownership": 0,
    "spares": 0,
    "entry_format": 0,
    "switchboard": 0,
    "lists": 0,
    "logs": 0,
    "mailman_site": 0,
    # The configuration, which makes the core's objects, and its file syntax.
    "configfile": 1,
    "configuration": 1,
    # What runs on a configuration.
    "runner": 2,
    "runners": 2,
    "queuetools": 2,
    "metrics": 2,
    "testing": 2,
    # The supervisor, then the command line and the conformance tools.
    "master": 3,
    "cli": 4,
    "cli_base": 4,
    "cli_queues": 4,
    "__main__": 4,
    "conformance": 4,
    # The package itself re-exports from every layer.
    "__init__": 4,
    # A plugin for GNU Mailman's processes: above everything, so that nothing
    # of mailqueue imports it (it imports mailman).
    "mailman": 5,
}


def imported(path):
    """The mailqueue modules *path* imports, as names below the package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mailqueue":
                names.update(alias.name for alias in node.names)
            elif node.module.startswith("mailqueue."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.add("relative import")  # not used here: the test says so
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mailqueue."):
                    names.add(alias.name.split(".")[1])
                elif alias.name == "mailqueue":
                    names.add("__init__")  # the package: it imports every layer
    # The package's public names (from mailqueue import config) live in
    # these modules.
    where = {"config": "configuration", "__version__": None}
    return {where.get(name, name) for name in names} - {None}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts != ("__init__",):
            yield parts[0], path


@pytest.mark.parametrize(("name", "path"), list(modules()), ids=lambda x: str(x))
def test_every_import_points_down(name, path):
    layer = LAYERS[name]
    upward = {
        other: LAYERS[other]
        for other in imported(path)
        if other != name and LAYERS[other] > layer
    }
    assert not upward, f"{path.name} (layer {layer}) imports {upward}"


def test_the_core_never_reads_the_configuration():
    for name, path in modules():
        if LAYERS[name] == 0:
            assert "configuration" not in imported(path), name


def test_the_configuration_module_has_its_own_name():
    # The instance is mailqueue.config; the module is not shadowed by it.
    module = importlib.import_module("mailqueue.configuration")
    assert module.config is mailqueue.config
    assert type(mailqueue.config).__name__ == "Configuration"
    import mailqueue.configuration as by_import

    assert by_import is module


#: What a module may import inside a function: optional dependencies only,
#: which are not installed unless their extra is (mailqueue[mailman],
#: mailqueue[postgresql], mailqueue[conformance]).  Nothing else is imported
#: late, so no late import stands in for a cycle.
OPTIONAL = ("mailman", "zope", "psycopg", "pytest")


@pytest.mark.parametrize(("name", "path"), list(modules()), ids=lambda x: str(x))
def test_only_optional_dependencies_are_imported_inside_functions(name, path):
    late = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    late.update(alias.name for alias in inner.names)
                elif isinstance(inner, ast.ImportFrom):
                    late.add(inner.module or "." * inner.level)
    assert {
        module for module in late if module.split(".")[0] not in OPTIONAL
    } == set(), path.name

"""Sphinx configuration for the mailqueue documentation."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "mailqueue"
author = "The mailqueue developers"
copyright = "2026, the mailqueue developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "levels",
    "conformance_results",
]

html_theme = "furo"
html_static_path = ["_static"]
html_title = "mailqueue"
exclude_patterns = ["_build"]

# A broken cross-reference is a build error (make docs runs with -n -W).
nitpicky = True
# The build is offline, so there is no intersphinx inventory of the standard
# library; references to its classes in signatures are left unresolved.
# (pytest's classes appear in the conformance report's signatures.)
_UNRESOLVED = "collections email datetime sqlite3 types typing logging pathlib pytest"
nitpick_ignore_regex = [
    (r"py:.*", rf"_?({'|'.join(_UNRESOLVED.split())})(\..*)?"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

"""Sphinx configuration for the mailqueue documentation."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "mailqueue"
author = "The mailqueue developers"
copyright = "2026, the mailqueue developers"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.graphviz",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "levels",
    "conformance_results",
    "run_figures",
]

html_theme = "furo"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_title = "mailqueue"
exclude_patterns = ["_build"]

# A broken cross-reference is a build error (make docs runs with -n -W).
nitpicky = True
# The build is offline, so there is no intersphinx inventory of the standard
# library; references to its classes in signatures are left unresolved.
# (pytest's and Sybil's classes appear in the conformance plugin's and
# report's signatures, argparse's in the conformance command's, and
# pickle.Unpickler as the base of safepickle.SafeUnpickler; the pages name
# mailbox.MMDFMessage, of GNU Mailman's digests.)
_UNRESOLVED = (
    "argparse collections email datetime sqlite3 types typing logging pathlib pytest"
    " mailbox pickle sybil"
)
nitpick_ignore_regex = [
    (r"py:.*", rf"_?({'|'.join(_UNRESOLVED.split())})(\..*)?"),
]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

# Pictures are drawn from their source at build time, by graphviz's dot.
graphviz_output_format = "svg"

# The copy button copies the code of an example, not its prompts or output.
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# A name a module re-exports (safepickle.PickleRefused, from pickle_rules)
# links to its source from the page of the module that defines it only:
# followed from the re-exporting page, viewcode's link back names an anchor
# that page does not have.
viewcode_follow_imported_members = False

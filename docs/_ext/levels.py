"""The ``level`` directive: marks the requirement level of the examples after it.

``.. level:: MUST`` or ``.. level:: SHOULD`` (RFC 2119) applies to every
example that follows, up to the next marker.  The conformance report reads
the same markers (:mod:`mailqueue.conformance.spec`).
"""

from docutils import nodes
from docutils.parsers.rst import Directive

from mailqueue.conformance.spec import LEVELS

MEANINGS = {
    "MUST": "every implementation must behave as the examples from here on show.",
    "SHOULD": "an implementation should behave as the examples from here on show; "
    "one that does not is still a switchboard, but a less robust one.",
}
assert set(MEANINGS) == set(LEVELS)


class LevelDirective(Directive):
    required_arguments = 1

    def run(self):
        level = self.arguments[0]
        if level not in MEANINGS:
            raise self.error(f"unknown requirement level {level!r}: use MUST or SHOULD")
        paragraph = nodes.paragraph()
        paragraph += nodes.strong(text=level)
        paragraph += nodes.Text(f": {MEANINGS[level]}")
        box = nodes.container(classes=["requirement-level", f"level-{level.lower()}"])
        box += paragraph
        return [box]


def setup(app):
    app.add_directive("level", LevelDirective)
    app.add_css_file("levels.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""``python -m mailqueue.conformance ADAPTER``: ``mailqueue conformance ADAPTER``.

See :mod:`mailqueue.conformance.command`.
"""

import sys

from mailqueue.conformance.command import main

sys.exit(main())

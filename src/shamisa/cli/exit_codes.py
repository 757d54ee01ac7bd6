"""Exit codes of every ``shamisa`` command, defined once.

0 when every item succeeded; 1 when some items failed (their rows carry the error); 2 for a usage,
configuration, data or model-file error (one ``error: ...`` line); 3 for an unexpected internal
error (one line; ``SHAMISA_DEBUG=1`` shows the traceback); 130 when interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ITEM_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_UNEXPECTED = 3
EXIT_INTERRUPTED = 130

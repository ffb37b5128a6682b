"""The one exception type that means "the user asked for something we cannot do".

Anything raised as ``UserError`` reaches the user as a single line and exit status 2,
never as a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input (flag, config, path, file, device): the message names the problem and the fix."""

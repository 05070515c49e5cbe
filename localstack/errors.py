"""The stack manager's one exception type.

Every failure the stack manager reports is something a person has to act on (install a package, run a
command as root, free a port, read a log), so the message always says what to do next.
"""

from __future__ import annotations


class StackError(RuntimeError):
    """The local servers could not be installed, started, stopped or reached; the message says why and what to do."""

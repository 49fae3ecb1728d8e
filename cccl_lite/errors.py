"""The one error the engine raises for what a user can cause.

:class:`InputError` is raised by the engine (``train``, ``evaluate``,
``checkpoint``) and the studies for an expected failure: a missing or
unreadable file, an unknown preset or ablation, a checkpoint that does not
fit its data, a device that is not there. Its message is all the user needs
to see; ``python -m cccl_lite`` (:mod:`cccl_lite.cli`) prints it as one line
and exits with status 1, with no traceback. It is a ValueError, so library
callers that already catch ValueError keep working.

This module imports nothing of the package: every layer may raise it.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """An expected failure caused by an argument or a file; the message says
    which and what to do instead."""

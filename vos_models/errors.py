"""The project's error type for what a user gets wrong, and its kinds.

:class:`VOSInputError` is raised where user input is checked: a command-line option, a
method's configuration, an input file or folder, a checkpoint. The command lines catch this
type only (``vos_models.cli.common.run_main``) and print its message on one line; any other
exception is a bug and keeps its traceback.

It derives from ``ValueError`` so that callers that caught ``ValueError`` keep working. The
kinds below say where the bad input came from; each message names the argument or file, what
was expected and what arrived.
"""
from __future__ import annotations


class VOSInputError(ValueError):
    """Input that the user can fix: an option, a configuration, a file. Shown as one line."""


class DataError(VOSInputError):
    """Input data that cannot be used (missing, unreadable, wrong format or size)."""


class InputNotFoundError(VOSInputError, FileNotFoundError):
    """A file or folder named by the user does not exist (also a ``FileNotFoundError``)."""


class CheckpointError(VOSInputError):
    """A checkpoint that cannot be used: wrong format, another method, mismatched weights."""

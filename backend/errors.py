"""Exceptions the backend raises, each with the `kind` the protocol and the CLI report."""


class SlimDiffSRError(Exception):
    """Base class; `kind` names the error in protocol `error` events."""

    kind = "internal"
    exit_code = 1


class BadInput(SlimDiffSRError):
    """The request cannot be run as given (missing file, bad band, bad extent, ...).

    The message names the bad input and what to do about it.
    """

    kind = "bad_input"
    exit_code = 2


class Cancelled(SlimDiffSRError):
    """The caller asked to stop; raised between tiles."""

    kind = "cancelled"
    exit_code = 130

"""The errors ckpt-core reports, one class per kind, each with its own exit code.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``. Messages say
what went wrong, with which file, and what to do. Exit code 1 is kept for ``diff`` finding
differences.
"""

from __future__ import annotations


class CkptError(Exception):
    """Base of every error ckpt-core reports to a user."""

    exit_code = 2
    kind = "error"


class UsageError(CkptError):
    """The command or call was given wrong arguments or options."""

    exit_code = 2
    kind = "usage"


class NotFound(CkptError):
    """A path, format, checkpoint or tensor that was named does not exist."""

    exit_code = 3
    kind = "not-found"


class UnknownFormat(CkptError):
    """No installed format recognises the input (or the named format is not installed)."""

    exit_code = 4
    kind = "unknown-format"


class CorruptInput(CkptError):
    """The input is damaged or malformed: a bad header, truncated data, inconsistent shapes."""

    exit_code = 5
    kind = "corrupt-input"


class UnsafeInput(CkptError):
    """The input would need code execution or escapes its directory (pickle globals, ``..``)."""

    exit_code = 6
    kind = "unsafe-input"


class LossyConversion(CkptError):
    """The conversion would drop or change something; nothing was written.

    ``losses`` lists what would be lost, each with the flag or option that allows it.
    """

    exit_code = 7
    kind = "lossy-conversion"

    def __init__(self, message: str, losses: list | None = None):
        super().__init__(message)
        self.losses = losses or []


class DestinationExists(CkptError):
    """The destination exists and ``overwrite`` was not given."""

    exit_code = 8
    kind = "destination-exists"


class PluginError(CkptError):
    """A plugin failed in a way it did not report itself (a bug in the plugin)."""

    exit_code = 9
    kind = "plugin-error"


class DiskFull(CkptError):
    """The destination's filesystem ran out of space (or quota) while writing; nothing was left
    behind: the destination is as it was."""

    exit_code = 11
    kind = "disk-full"


class DestinationIsSource(CkptError):
    """The destination is the source, holds it, lies inside it, or is a file the read used
    (a state file, a shard, a base model): writing there would destroy what is being read.
    Nothing was written."""

    exit_code = 12
    kind = "destination-is-source"


class BaseMissing(UsageError):
    """The checkpoint holds adapters without their base weights (only the base's names,
    dtypes and shapes), and the step asked for needs the weights themselves: merging, or
    writing a format that stores full weights. The fix is to name the base model."""

    exit_code = 13
    kind = "base-missing"


class CkptWarning(UserWarning):
    """Something a user should know that is not an error: raised with ``warnings.warn``.

    Plugins warn, for example, that two families compute differently although their keys
    map, or that optimizer state was dropped because the parameter set changed. The CLI
    prints each as one ``warning:`` line on stderr (stdout stays clean for ``--json``); the
    API leaves them to Python's warnings machinery.
    """

"""User errors: one base class that the command line prints as one line (no traceback), exit code 2.

Every error a user can cause — bad data, a bad config, an unusable checkpoint, a missing GPU, a full disk —
is a :class:`SkinsegError` whose message names the file or key and says what to do. Anything else reaching the
command line is a bug and keeps its traceback. Kept free of heavy imports.
"""


class SkinsegError(Exception):
    """Base of every user error; the message names the file or key and what to do."""


class ConfigError(SkinsegError, ValueError):
    """A bad key or value in a config; the message names it and the valid choices."""


class DataError(SkinsegError, ValueError):
    """Bad input data: the message names the file and what to do."""


class CheckpointError(SkinsegError, RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


class TrainingError(SkinsegError, RuntimeError):
    """Training cannot go on (non-finite loss or outputs, out of memory); the message says what to try."""


class EnvironmentProblem(SkinsegError, RuntimeError):
    """The machine cannot do what was asked: no GPU for ``device: cuda``, fp16 on a CPU, a read-only folder,
    a full disk."""


class DiskFullError(EnvironmentProblem, OSError):
    """Not enough free space to write a file; the message says how much is needed and where."""


class SweepError(SkinsegError, RuntimeError):
    """A run of a sweep failed or left no complete run; the message names it and its log or notebook."""


class ReportError(SkinsegError, RuntimeError):
    """A notebook of the report failed: the message names it, the cell, and the partly executed copy."""


class RunInUse(SkinsegError, RuntimeError):
    """Another process is training in this run folder (resuming it twice at once would log every step twice)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the message says what was kept and how to go on. The command line prints it as one line, exit 130."""


class SkinsegWarning(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""

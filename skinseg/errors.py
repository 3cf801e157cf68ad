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


class NonFiniteOutputError(SkinsegError, RuntimeError):
    """The model produced NaN or infinite outputs (its weights diverged)."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        super().__init__(f"the model's outputs are NaN or infinite (images {', '.join(ids[:4])}); its weights have "
                         "diverged. Train again with a lower lr, grad_clip: 1.0, warmup_epochs, or amp: off")

class UnknownModelError(ConfigError, KeyError):
    """A model name not in the registry; the message lists the valid names. Catch it as KeyError or ValueError."""

    def __str__(self) -> str:
        return str(self.args[0])

class WeightsMismatch(EnvironmentProblem):
    """A packaged weights file does not fit the timm model tensor for tensor."""

class PretrainedWeightsError(EnvironmentProblem):
    """ImageNet weights could not be loaded (typically: no network); the message says how to proceed."""

class DownloadError(DataError):
    """A download or extraction failed: the message names the URL or file and what to do."""


class ArchiveNotFound(DownloadError):
    """The server answered 403 or 404 (S3 answers 403 for a missing key of a public bucket)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the message says what was kept and how to go on. The command line prints it as one line, exit 130."""


class SkinsegWarning(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""


def did_you_mean(name: object, valid, n: int = 1, cutoff: float = 0.5) -> str:
    """' (did you mean 'x'?)' naming the closest of ``valid`` to a misspelt name, or '' when none is close: the
    one suggestion every "unknown key / model / encoder / attribute" message ends with."""
    import difflib

    close = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=cutoff)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""

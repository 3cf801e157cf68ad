"""Errors that the command line reports as a message (no traceback); kept free of heavy imports."""


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it is loaded into."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, out of memory); the message says what to try."""

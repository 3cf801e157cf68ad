"""Training: the trainer loop (`loop.py`) and its optimizers, schedulers and EMA (`optim.py`). Checkpoints live in
`skinseg.checkpoint`, run folders in `skinseg.runs`, device and DDP set-up in `skinseg.runtime`."""
from skinseg.train.loop import TrainingError, train, train_or_reuse

__all__ = ["train", "train_or_reuse", "TrainingError"]

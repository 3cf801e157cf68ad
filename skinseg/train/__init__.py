"""Training: optimizers and schedulers, checkpoints, the trainer loop, distributed helpers."""
from skinseg.train.loop import TrainingError, train, train_or_reuse

__all__ = ["train", "train_or_reuse", "TrainingError"]

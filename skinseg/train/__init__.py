"""Training: optimizers and schedulers, checkpoints, the trainer loop, distributed helpers."""
from skinseg.train.loop import TrainingError, train

__all__ = ["train", "TrainingError"]

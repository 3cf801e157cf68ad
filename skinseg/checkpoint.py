"""The checkpoint file, one module that writes it and reads it back: for resuming a run, and for predicting
(:mod:`skinseg.predict.load` builds the model from it; :mod:`skinseg.predict.ensemble` writes the ensemble file).

A checkpoint is a ``torch.save`` dict marked ``format: skinseg-checkpoint-v1`` holding everything needed to
continue or rebuild: weights (EMA weights when EMA is on, the raw ones beside them), optimizer, scheduler, grad
scaler, epoch, step, config, tuned thresholds and gates, the best score so far, history and RNG states. An
ensemble file is a checkpoint with ``kind: ensemble`` holding every member's config and weights instead.

Files are loaded with ``weights_only=True``: a checkpoint that needs code to unpickle is refused.
Writes are atomic (temporary file, then rename) and check free space first, so a kill or a full disk leaves
the previous file whole.
"""
from __future__ import annotations

import io
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinseg.config import N_ATTRIBUTES, Config
from skinseg.errors import CheckpointError, DiskFullError
from skinseg.files import ensure_space, is_disk_full, space_message, write_atomic

FORMAT = "skinseg-checkpoint-v1"
ENSEMBLE_KIND = "ensemble"
# what each use of a checkpoint reads: predicting (a run's checkpoint or an ensemble file) and resuming
INFERENCE_KEYS = ("config", "model", "thresholds", "gates")
ENSEMBLE_KEYS = ("config", "members", "thresholds", "gates")
RESUME_KEYS = INFERENCE_KEYS + ("train_model", "ema", "optimizer", "scheduler", "scaler", "epoch", "step", "best",
                                "stale_epochs", "history", "rng")


# ---- writing ------------------------------------------------------------------------------
def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically; DiskFullError (old file kept) when it does not fit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    data = buffer.getbuffer()
    what = f"disk full while writing checkpoint {path}"
    hint = (f"the previous {path.name} is kept. Free space, then resume the run from its last checkpoint "
            "(config key `load`)")
    try:
        ensure_space(path.parent, len(data), what, hint)
        write_atomic(path, data, fsync=True)
    except DiskFullError:
        raise
    except OSError as e:
        if is_disk_full(e):
            raise DiskFullError(f"{what} ({space_message(path.parent, len(data))}); {hint}") from None
        raise CheckpointError(f"could not write checkpoint {path}: {e.strerror or e}; the previous file is kept") from None
    return path


# ---- reading ------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """The state dict of a skinseg checkpoint; CheckpointError naming the file when it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the best.pt or last.pt of a run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # torch's hint to retry with weights_only=False is not passed on
            raise CheckpointError(
                f"{path} holds Python objects that a skinseg checkpoint never contains; refusing to load it (loading "
                "it could run code). Use a best.pt / last.pt written by skinseg"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file (it cannot be unpickled); use "
                              "another checkpoint of the run (best.pt / last.pt), or retrain") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).splitlines()[0][:120] if str(e) else ""
        if "weights_only" in first:
            first = "unreadable"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({type(e).__name__}: {first}); "
            "use another checkpoint of the run (best.pt / last.pt), or retrain"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skinseg checkpoint (no '{FORMAT}' marker)")
    return state


def check_for_inference(state: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming the file when a checkpoint lacks what predicting reads, or its thresholds and gates
    are not one number in [0, 1] per attribute."""
    keys = ENSEMBLE_KEYS if is_ensemble(state) else INFERENCE_KEYS
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: it was not written whole by skinseg; "
                              "use the run's best.pt / last.pt (or retrain)")
    n = N_ATTRIBUTES
    for key in ("thresholds", "gates", "thresholds_per_attribute"):
        values = state.get(key)
        if values is None and key == "thresholds_per_attribute":  # optional: older checkpoints lack it
            continue
        ok = isinstance(values, (list, tuple)) and len(values) == n and all(
            isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values)
        if not ok:
            raise CheckpointError(f"checkpoint {path}: {key} must be {n} numbers in [0, 1], one per attribute; got "
                                  f"{values!r}. Use the run's best.pt / last.pt (or retrain)")


def checkpoint_epoch(path: str | Path) -> int | None:
    """The epoch a checkpoint was written at, read without loading its tensors; None when unreadable."""
    try:
        return int(load_checkpoint(path, mmap=True).get("epoch", -1))
    except CheckpointError:
        return None


def load_model_weights(model: torch.nn.Module, state: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Load the weights of a checkpoint, with an error naming both architectures when they differ."""
    saved = state.get("config", {}).get("model")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path} holds weights of model {saved!r} that do not fit this model "
            f"({type(model).__name__}): {str(e).splitlines()[0]}. Set `model` (and its options) to match the "
            "checkpoint, or drop `load`."
        ) from None


def checkpoint_config(values: dict, source: str) -> Config:
    """The config stored in a checkpoint, to rebuild its model (weights come from the checkpoint, not a hub)."""
    cfg = Config.from_dict(dict(values), source=source)
    return cfg.replace(pretrained=False, pretrained_path=None, load=None)


# ---- resuming: RNG state and the best checkpoint ------------------------------------------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def repair_best(best: Path, last_state: dict[str, Any]) -> bool:
    """Make ``best`` hold the epoch that last.pt (``last_state``) records as best, when a kill came between the
    two writes.

    The trainer writes last.pt, then best.pt when the score improved: both hold the same state then. A kill
    between the writes leaves last.pt naming the new best epoch while best.pt holds an older one; since that
    epoch is last.pt's own, best.pt is rewritten from it. Returns True when it rewrote best.
    """
    wanted = int(last_state.get("best", {}).get("epoch", 0))
    if wanted == 0 or wanted != int(last_state.get("epoch", -1)):
        return False
    if best.exists() and checkpoint_epoch(best) == wanted:
        return False
    save_checkpoint({k: v for k, v in last_state.items() if k != "format"}, best)
    return True


# ---- the ensemble file's marker ------------------------------------------------------------
def is_ensemble(state: dict) -> bool:
    return state.get("kind") == ENSEMBLE_KIND

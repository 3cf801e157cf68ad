"""Checkpoints: written atomically (temp file + rename), read with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to continue or rebuild: model, optimizer, scheduler and scaler state,
epoch, step, the resolved config, tuned thresholds and gate cut-offs, the metric history and every RNG state.
"""
from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from skinseg.errors import CheckpointError

FORMAT = "skinseg-checkpoint-v1"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the best.pt or last.pt of a run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({type(e).__name__}: {str(e)[:200]}); "
            "use another checkpoint of the run (best.pt / last.pt)"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a skinseg checkpoint (no '{FORMAT}' marker)")
    return state


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

"""Project folders. Everything hangs off the package root, never the working directory."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
PROJ_ROOT = PACKAGE_ROOT.parent
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
PARAMS_DIR = PROJ_ROOT / "params"
REPORTS_DIR = PROJ_ROOT / "reports"
IMAGES_DIR = PROJ_ROOT / "images"
DATA_DIR = PROJ_ROOT / "data"
SYNTH_DIR = DATA_DIR / "synthetic"
# The one set of options of the synthetic generator: `skinseg synth`'s defaults, write_synthetic's, and the embedded
# dataset the notebooks and the report use when no data root is named (kept here, free of heavy imports)
SYNTH_DEFAULTS = {"n_train": 160, "n_val": 40, "n_test": 40, "seed": 2018, "width_range": [300, 900]}


def cache_dir() -> Path:
    """Where preprocessing caches live; ``SKINSEG_CACHE_DIR`` overrides it."""
    return Path(os.environ.get("SKINSEG_CACHE_DIR", PROJ_ROOT / ".cache"))


def resolve(path: str | os.PathLike | None) -> Path | None:
    """Resolve a user path: absolute stays, relative is taken from the project root."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJ_ROOT / p).resolve()

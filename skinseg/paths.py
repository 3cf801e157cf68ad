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


def cache_dir() -> Path:
    """Where preprocessing caches live; ``SKINSEG_CACHE_DIR`` overrides it."""
    return Path(os.environ.get("SKINSEG_CACHE_DIR", PROJ_ROOT / ".cache"))


def resolve(path: str | os.PathLike | None) -> Path | None:
    """Resolve a user path: absolute stays, relative is taken from the project root."""
    if path is None or str(path) == "":
        return None
    p = Path(path).expanduser()
    return p if p.is_absolute() else (PROJ_ROOT / p).resolve()

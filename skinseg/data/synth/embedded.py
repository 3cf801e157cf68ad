"""The embedded synthetic dataset: what the notebooks and ``skinseg report`` use when no data root is named,
generated once into ``data/synthetic`` (again only when its options change)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from skinseg.data.synth.writer import SYNTH_DEFAULTS, write_synthetic
from skinseg.errors import DataError
from skinseg.paths import SYNTH_DIR


def ensure_synthetic(root: str | os.PathLike | None = None, **options: Any) -> Path:
    """The embedded synthetic dataset, generated once (again only when the options change)."""
    root = Path(root) if root else SYNTH_DIR
    opts = {**SYNTH_DEFAULTS, **options}
    marker = root / "synth.json"
    if marker.exists() and json.loads(marker.read_text()) == opts:
        return root
    if marker.exists():  # made here with other options: ours to replace
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        raise DataError(f"{root} holds files but no synth.json: not the embedded synthetic dataset, so it is left "
                        "alone; move it away, or pass a data root")
    write_synthetic(root, n_train=opts["n_train"], n_val=opts["n_val"], n_test=opts["n_test"], seed=opts["seed"],
                    width_range=tuple(opts["width_range"]))
    marker.write_text(json.dumps(opts))
    return root

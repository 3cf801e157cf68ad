"""What the notebooks share: the display setup, and what a ``None`` data root or checkpoint parameter means.

Notebooks only orchestrate and show. The rules "no data root: the synthetic set" and "no checkpoint: the best one of
the newest run" live here, and :mod:`skinseg.report` asks the same functions.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd
from IPython import get_ipython

from skinseg.data.synth import ensure_synthetic
from skinseg.paths import resolve
from skinseg.runs import chosen_checkpoint, latest_run

PANDAS_PRECISION = 4

# 03_train's parameter defaults are Config's, overlaid with params/demo.yaml, overlaid with this: the notebook's own
# run (nbval in `make test`) stays a short smoke run. Papermill runs with `-f params/demo.yaml` replace both keys.
QUICK_TRAIN = {"epochs": 2, "image_size": 96}


def setup() -> None:
    """What every notebook starts with: inline figures under IPython, pandas at 4 decimals, no torch UserWarnings."""
    pd.set_option("display.precision", PANDAS_PRECISION)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    shell = get_ipython()
    if shell is not None:  # None in plain Python: no figures to inline
        shell.run_line_magic("matplotlib", "inline")


def is_synthetic(data_root: str | os.PathLike | None) -> bool:
    """True when no data root is named (None or empty): the embedded synthetic set is used."""
    return data_root is None or str(data_root) == ""


def resolve_data(data_root: str | os.PathLike | None) -> tuple[Path, bool]:
    """(data root, whether it is the synthetic set); the synthetic set is generated once when none is named."""
    if is_synthetic(data_root):
        return ensure_synthetic(), True
    return resolve(data_root), False


def resolve_checkpoint(checkpoint: str | os.PathLike | None, output_dir: str | os.PathLike = "runs") -> Path:
    """The given checkpoint, or else the chosen checkpoint (``checkpoint_rule``) of the newest run below
    ``output_dir``."""
    path = resolve(checkpoint)
    return path if path is not None else chosen_checkpoint(latest_run(output_dir))


def config_table(cfg) -> pd.DataFrame:
    """The keys of ``cfg`` that differ from Config's defaults, one a row (value and default): what this run is,
    readable without scrolling through every key."""
    from skinseg.config import Config

    defaults = Config().to_dict()
    rows = {k: {"value": _cell(v), "default": _cell(defaults.get(k))}
            for k, v in cfg.to_dict().items() if v != defaults.get(k)}
    table = pd.DataFrame(rows, index=["value", "default"]).T if rows else pd.DataFrame(columns=["value", "default"])
    table.index.name = "key"
    return table


def _cell(value) -> str:
    """A config value as one short table cell (lists and dicts as YAML flow text)."""
    if isinstance(value, (list, tuple, dict)):
        import yaml

        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return "null" if value is None else str(value)

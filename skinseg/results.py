"""``results/*.csv``: one comparison row per run, written by the run itself when training ends.

A run whose config names a ``results_file`` evaluates the checkpoint that stands for it (``checkpoint_rule``) on
its tuning split (dev, where it holds one out) and on the official validation split, at both operating points,
and appends one row: what was trained (model, encoder, pretrained, seed, epochs, parameters), what it cost
(seconds per epoch, wall), how it scored (the low-noise statistic — the mean tuned score of the last validations —
beside the peak, then overall, macro and per-attribute Jaccard on dev and val), and the rule that chose the
checkpoint. Numbers in the documentation come from these files, never typed by hand.
"""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pandas as pd

from skinseg.choices import MODEL_ALIASES
from skinseg.data.isic import ATTRIBUTES
from skinseg.files import write_atomic
from skinseg.paths import resolve
from skinseg.runs import EPOCH_TIME_COLUMNS, LAST_VALIDATIONS, RunFolder, last_mean


# "own" in rows whose last.pt was scored at thresholds tuned on its own weights (every row since 2026-12-02)
LAST_PT_THRESHOLDS = "last_pt_thresholds"
CURVE_COLUMN = "tune_curve"  # the tuned validation score of every validated epoch, "epoch:score" space-separated
RESULTS_DIR_NAME = "results"
# what a reader compares first: the columns study_table shows, in order
SUMMARY_COLUMNS = {
    "config": "config", "seed": "seed",  # what was trained: the by_architecture table, and the sweep file named
    "epochs": "epochs", "params": "params (M)", "s_per_epoch": "train s/epoch", "wall_min": "wall (min)",
    "checkpoint_rule": "rule", f"tune_last{LAST_VALIDATIONS}": "dev last-3",
    "tune_peak": "dev peak", "dev_micro_overall": "dev micro", "dev_each_macro": "dev macro (per-attr)",
    "val_micro_overall": "val micro", "val_each_macro": "val macro (per-attr)",
}


def curve_text(epochs: pd.DataFrame) -> str:
    """A run's tuned validation curve as one CSV cell: ``epoch:score`` for every validated epoch."""
    key = "val_tuned_jaccard" if "val_tuned_jaccard" in epochs else "val_jaccard"
    done = epochs.dropna(subset=[key])
    return " ".join(f"{int(e)}:{v:.4f}" for e, v in zip(done["epoch"], done[key]))


def parse_curve(text) -> pd.Series:
    """The curve of :func:`curve_text` back as a Series (epoch -> score); empty for a row without one."""
    if not isinstance(text, str) or not text.strip():
        return pd.Series(dtype=float)
    pairs = [item.split(":") for item in text.split()]
    return pd.Series([float(v) for _, v in pairs], index=[int(e) for e, _ in pairs], dtype=float)


def run_config(row: pd.Series) -> str:
    """The sweep file (run_name) a row came from; for rows written before the column, read from the run folder's
    name (``<time>_<model>_<run_name>``)."""
    config = row.get("config")
    if isinstance(config, str) and config:
        return config
    parts = str(row["run"]).split("_", 2)
    return parts[2] if len(parts) == 3 else str(row["run"])


def read_results(path: str | Path) -> pd.DataFrame:
    """A results CSV, with ``config`` filled for every row, and for rows written before the columns existed what
    follows from the row itself: under the rule ``best``, the best epoch is the checkpoint's; where that is the last
    epoch, best.pt and last.pt are one checkpoint, so both score the row's val score."""
    table = pd.read_csv(resolve(path))
    if not len(table):
        return table
    if "model" in table:  # rows written under a model's former name
        table["model"] = table["model"].replace(MODEL_ALIASES)
    table["config"] = table.apply(run_config, axis=1)
    if not {"checkpoint_rule", "checkpoint_epoch", "epochs", "val_micro_overall"} <= set(table):
        return table  # a sweep's comparison table
    for col in ("best_epoch", "val_micro_best_pt", "val_micro_last_pt"):
        if col not in table:
            table[col] = float("nan")
    by_best = table["checkpoint_rule"] == "best"
    table.loc[by_best & table["best_epoch"].isna(), "best_epoch"] = table["checkpoint_epoch"]
    one = table["best_epoch"] == table["epochs"]
    for col in ("val_micro_best_pt", "val_micro_last_pt"):
        table.loc[one & table[col].isna(), col] = table["val_micro_overall"]
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    return table


def study_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run with what a reader compares first (SUMMARY_COLUMNS), best first by dev last-3."""
    have = {k: v for k, v in SUMMARY_COLUMNS.items() if k in table}
    out = table[list(have)].rename(columns=have)
    if "params (M)" in out:
        out["params (M)"] = out["params (M)"] / 1e6
    return out.sort_values("dev last-3", ascending=False).reset_index(drop=True) if "dev last-3" in out else out


def by_architecture(table: pd.DataFrame) -> pd.DataFrame:
    """Runs grouped by what was trained (model, encoder, pretrained): seeds, mean and spread (max - min over
    seeds) of dev last-3 and val micro, and mean val macro at the per-attribute operating point. A difference
    between two architectures means something only where it exceeds both spreads."""
    keys = ["model", "encoder", "pretrained"]
    last = f"tune_last{LAST_VALIDATIONS}"
    frame = table.assign(encoder=table["encoder"].fillna(""))
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        rows.append({**dict(zip(keys, key)), "seeds": len(group),
                     "dev last-3": group[last].mean(), "dev spread": group[last].max() - group[last].min(),
                     "val micro": group["val_micro_overall"].mean(),
                     "val spread": group["val_micro_overall"].max() - group["val_micro_overall"].min(),
                     "val macro (per-attr)": group["val_each_macro"].mean(),
                     "wall (min)": group["wall_min"].mean()})
    return pd.DataFrame(rows).sort_values("dev last-3", ascending=False).reset_index(drop=True)


def study_tables(folder: str | Path = RESULTS_DIR_NAME) -> dict[str, pd.DataFrame]:
    """Every results CSV of ``folder`` (below the project), name -> table, sorted by name."""
    root = resolve(folder)
    return {p.stem: read_results(p) for p in sorted(root.glob("*.csv"))} if root.is_dir() else {}


def curves(table: pd.DataFrame) -> dict[str, pd.Series]:
    """label (config, seed) -> tuned validation curve, for the rows that carry one."""
    out = {}
    for _, row in table.iterrows():
        curve = parse_curve(row.get(CURVE_COLUMN))
        if len(curve):
            out[f"{run_config(row)} (seed {row['seed']})"] = curve
    return out


def run_row(run_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """The comparison row of a finished run (evaluates its chosen checkpoint on dev and val)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="skinseg-row-") as tmp:
        return _run_row(RunFolder(run_dir), Path(tmp))


def _run_row(run: RunFolder, tmp: Path) -> dict[str, Any]:
    from skinseg.checkpoint import checkpoint_config, load_checkpoint
    from skinseg.models.registry import MODELS
    from skinseg.predict.evaluate import evaluate_checkpoint, operating_points

    cfg = run.config()
    root = resolve(cfg["data_root"])
    checkpoint = own_decision(run.chosen, root, cfg["val_split"], tmp)
    state = load_checkpoint(checkpoint, mmap=True)
    _, epochs = run.metrics()
    model = MODEL_ALIASES.get(cfg["model"], cfg["model"])
    row: dict[str, Any] = {
        "run": run.path.name, "model": model,
        "encoder": cfg["encoder"] if MODELS[model].pretrained_encoder else "",  # the others take no encoder
        "pretrained": bool(cfg.get("pretrained")), "seed": cfg["seed"], "epochs": len(epochs),
        "params": sum(v.numel() for v in state["model"].values() if v.is_floating_point()),
        "s_per_epoch": float(epochs["epoch_seconds"].mean()),
        "wall_min": wall_minutes(epochs),
        "checkpoint_rule": cfg.get("checkpoint_rule", "best"), "checkpoint_epoch": int(state["epoch"]),
        f"tune_last{LAST_VALIDATIONS}": last_mean(epochs),
        "tune_peak": float(epochs["val_tuned_jaccard"].max()) if "val_tuned_jaccard" in epochs else float("nan"),
        "tune_split": cfg["val_split"], "config": cfg.get("run_name") or "",
        # which dev hold-out tuned and selected (its seed: dev_seed, or seed where that is null); rows of one
        # study compare on dev only when they share it
        "dev_seed": checkpoint_config(state["config"], str(checkpoint)).holdout_seed if cfg["val_split"] == "dev"
        else "",
        CURVE_COLUMN: curve_text(epochs),
    }
    for split in dict.fromkeys((cfg["val_split"], "val")):
        result = evaluate_checkpoint(checkpoint, root, split)
        for name, point in operating_points(result, state).items():
            s, tag = point["scores"], f"{split}_{'micro' if name == 'micro' else 'each'}"
            row[f"{tag}_overall"], row[f"{tag}_macro"] = s.overall, s.macro_jaccard
            row.update({f"{tag}_{a}": s.jaccard[a] for a in ATTRIBUTES})
        row.update({f"{split}_auc_{a}": v for a, v in result.presence_auc().items()})
    # the two selection rules side by side on val, which neither selects on: best.pt (the dev peak) and last.pt,
    # each at the micro thresholds tuned on its own weights
    for rule, path in (("best", run.best), ("last", run.last)):
        same = path.resolve() == Path(run.chosen).resolve()
        row[f"val_micro_{rule}_pt"] = (
            row["val_micro_overall"] if same else float("nan") if not path.exists() else
            evaluate_checkpoint(own_decision(path, root, cfg["val_split"], tmp), root, "val").scores.overall)
    row["best_epoch"] = int(load_checkpoint(run.best, mmap=True)["epoch"]) if run.best.exists() else -1
    row[LAST_PT_THRESHOLDS] = "own"  # rows written before 2026-12-02 scored last.pt at the best epoch's
    if cfg.get("ema") and run.last.exists():
        row.update(trained_weights_scores(run.last, root, cfg["val_split"], tmp))
    return row


def wall_minutes(epochs: pd.DataFrame) -> float:
    """Training, validation and checkpoint time of a run's epochs, in minutes; a history written before a column
    existed (checkpoint_seconds came later) counts it as 0."""
    parts = [c for c in EPOCH_TIME_COLUMNS if c in epochs]
    return float(epochs[parts].fillna(0).to_numpy().sum() / 60)


def own_decision(checkpoint: str | Path, data_root: str | Path, tune_split: str, tmp: Path) -> Path:
    """``checkpoint``, when its thresholds were tuned on its own weights; else (a last.pt written before each
    checkpoint carried its own, which holds the best epoch's) a copy in ``tmp`` with thresholds, gates and
    per-attribute thresholds tuned on ``tune_split`` for its weights, as training tunes them."""
    from skinseg.checkpoint import load_checkpoint
    from skinseg.predict.decisions import tuned_on_own_weights

    state = load_checkpoint(checkpoint)
    if tuned_on_own_weights(state):
        return Path(checkpoint)
    return _retuned(checkpoint, state, data_root, tune_split, tmp / f"{Path(checkpoint).stem}-own-thresholds.pt")[0]


def _retuned(source: str | Path, state: dict[str, Any], data_root: str | Path, tune_split: str,
             out: Path) -> tuple[Path, float]:
    """``state`` (whose weights ``source`` holds) written to ``out`` with its decision tuned on ``tune_split`` as
    training tunes it; ``out`` and the tuned micro score."""
    from skinseg.checkpoint import save_checkpoint
    from skinseg.predict.evaluate import evaluate_checkpoint

    sweep = evaluate_checkpoint(source, data_root, tune_split, tuned=False).sweep
    thresholds, gates, tuned = sweep.tune(tune_gate=bool(state["config"].get("aux_head")))
    save_checkpoint({**{k: v for k, v in state.items() if k != "format"}, "thresholds": thresholds, "gates": gates,
                     "thresholds_per_attribute": sweep.tune_each(), "thresholds_epoch": state["epoch"]}, out)
    return out, tuned


def trained_weights_scores(last: str | Path, data_root: str | Path, tune_split: str, tmp: Path) -> dict[str, float]:
    """What the weight average adds, on the same trajectory: the trained weights that a run with ``ema`` keeps
    beside the average in ``last.pt`` (``train_model``), scored as the run scores its own checkpoints, with
    thresholds tuned for the micro score on ``tune_split`` and applied on val. Beside the row's last.pt columns
    (the averaged weights of the same final step), no seed, data order or schedule differs between the two."""
    from skinseg.checkpoint import load_checkpoint, save_checkpoint
    from skinseg.predict.evaluate import evaluate_checkpoint

    state = load_checkpoint(last)
    if state.get("train_model") is None:
        return {}
    trained = {**{k: v for k, v in state.items() if k != "format"}, "model": state["train_model"]}
    path = save_checkpoint(trained, tmp / "last-trained-weights.pt")
    path, tuned = _retuned(path, trained, data_root, tune_split, path)
    return {f"{tune_split}_micro_trained_last": tuned,
            "val_micro_trained_last": evaluate_checkpoint(path, data_root, "val").scores.overall}


def append_row(results_file: str | Path, row: dict[str, Any]) -> Path:
    """Add ``row`` to a results CSV (a row of the same run replaced), written atomically."""
    path = resolve(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if len(table) and "run" in table:
        table = table[table["run"] != row["run"]]
    table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
    text = io.StringIO()
    table.to_csv(text, index=False, float_format="%.4f")
    write_atomic(path, text.getvalue())
    return path


# ---- the experiment log's tables, generated from results/*.csv ------------------------------------------------
# docs/experiments.md holds blocks "<!-- results: NAME VIEW -->" ... "<!-- /results -->"; render_doc fills each with
# the table of results/NAME.csv (VIEW: a key of VIEWS below, e.g. runs, the study_table), so no figure in
# the log is typed by hand. `make docs` rewrites the file; a test fails when it drifts from the CSVs.


def _columns(table: pd.DataFrame, cols: dict[str, str]) -> pd.DataFrame:
    """The columns of ``cols`` that ``table`` has, in that order, renamed to their labels."""
    have = {k: v for k, v in cols.items() if k in table}
    return table[list(have)].rename(columns=have).reset_index(drop=True)


def rules_table(table: pd.DataFrame) -> pd.DataFrame:
    """The two selection rules per run: the dev peak's epoch and score beside the last-3 mean, and val (which no
    rule selects on) at best.pt and at last.pt."""
    cols = {"config": "config", "seed": "seed", "best_epoch": "best epoch", "epochs": "epochs",
            "tune_peak": "dev peak", f"tune_last{LAST_VALIDATIONS}": "dev last-3",
            "val_micro_best_pt": "val at best.pt", "val_micro_last_pt": "val at last.pt"}
    out = _columns(table, cols)
    if {"val at best.pt", "val at last.pt"} <= set(out):
        out["last - best"] = out["val at last.pt"] - out["val at best.pt"]
        # which thresholds scored last.pt: tuned on its own weights, or (rows written before 2026-12-02, when
        # last.pt carried the best epoch's thresholds) the best epoch's, unless the two are one checkpoint
        own = (table[LAST_PT_THRESHOLDS].eq("own") if LAST_PT_THRESHOLDS in table
               else pd.Series(False, index=table.index))
        if {"best_epoch", "epochs"} <= set(table):
            own = own | (table["best_epoch"] == table["epochs"])
        out["last.pt thresholds"] = ["own" if o else "best epoch's" for o in own.to_numpy()]
        out = out.dropna(subset=["val at best.pt", "val at last.pt"])
    return out.reset_index(drop=True)


def averaging_table(table: pd.DataFrame) -> pd.DataFrame:
    """Runs that average their weights (``ema``): the final checkpoint's averaged weights against the trained
    weights of the same last step, tuned on dev and scored on val; the difference is what the average adds."""
    if "val_micro_trained_last" not in table:
        return pd.DataFrame(columns=["config", "seed"])
    table = table.dropna(subset=["val_micro_trained_last"]).copy()
    table["dev_at_last"] = [parse_curve(c).iloc[-1] for c in table[CURVE_COLUMN]]
    cols = {"config": "config", "seed": "seed", "dev_at_last": "dev at last.pt (EMA)",
            "dev_micro_trained_last": "dev, trained weights", "val_micro_last_pt": "val at last.pt (EMA)",
            "val_micro_trained_last": "val, trained weights"}
    out = _columns(table, cols)
    out["EMA - trained, dev"] = out["dev at last.pt (EMA)"] - out["dev, trained weights"]
    out["EMA - trained, val"] = out["val at last.pt (EMA)"] - out["val, trained weights"]
    return out


def points_table(table: pd.DataFrame) -> pd.DataFrame:
    """Each run at both operating points on dev and val: overall (micro) and macro Jaccard, and per attribute at
    the per-attribute thresholds."""
    cols = {"config": "config", "seed": "seed"}
    for split in ("dev", "val"):
        cols.update({f"{split}_micro_overall": f"{split} micro@micro", f"{split}_micro_macro": f"{split} macro@micro",
                     f"{split}_each_overall": f"{split} micro@each", f"{split}_each_macro": f"{split} macro@each"})
    cols.update({f"val_each_{a}": f"val {SHORT[a]}@each" for a in ATTRIBUTES})
    return _columns(table, cols)


def presence_table(table: pd.DataFrame) -> pd.DataFrame:
    """Image-level presence per attribute ("is there a streak in this image?"): the ROC AUC of the image score (the
    map's peak probability, or the presence head where one is trained) on dev and on val."""
    cols = {"config": "config", "seed": "seed"}
    for split in ("dev", "val"):
        cols.update({f"{split}_auc_{a}": f"{split} AUC {SHORT[a]}" for a in ATTRIBUTES})
    return _columns(table, cols)


SHORT = dict(zip(ATTRIBUTES, ("PN", "NN", "streaks", "MLC", "globules")))
VIEWS = {"runs": study_table, "architectures": by_architecture, "rules": rules_table, "points": points_table,
         "presence": presence_table, "averaging": averaging_table}
DOC_BLOCK = re.compile(rf"(?P<open><!-- results: (?P<name>[\w.-]+) (?P<view>{'|'.join(VIEWS)}) -->\n)"
                       r"(?P<body>.*?)(?P<close><!-- /results -->)", re.S)
# "<!-- sweeps -->" ... "<!-- /sweeps -->": which of the study's sweeps have written their rows (sweep_status)
STATUS_BLOCK = re.compile(r"(?P<open><!-- sweeps -->\n)(?P<body>.*?)(?P<close><!-- /sweeps -->)", re.S)


def markdown_table(table: pd.DataFrame, digits: int = 3) -> str:
    """A DataFrame as a GitHub markdown table (no index), floats at ``digits`` decimals."""
    def cell(v) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def render_doc(text: str, folder: str | Path = RESULTS_DIR_NAME) -> str:
    """``text`` with every results block refilled from ``folder``'s CSVs (a missing CSV: a line saying so), and
    the sweeps block with the status of the study's sweeps."""
    root = resolve(folder)

    def fill(m: re.Match) -> str:
        path = root / f"{m['name']}.csv"
        body = (markdown_table(VIEWS[m["view"]](read_results(path))) if path.exists()
                else f"*(no runs yet: {RESULTS_DIR_NAME}/{path.name} does not exist)*\n")
        return m["open"] + body + m["close"]

    text = DOC_BLOCK.sub(fill, text)
    if STATUS_BLOCK.search(text):
        from skinseg.sweeps import sweep_status

        status = markdown_table(sweep_status())
        text = STATUS_BLOCK.sub(lambda m: m["open"] + status + m["close"], text)
    return text


def update_doc(path: str | Path) -> bool:
    """Rewrite the results blocks of a markdown file; whether it changed."""
    path = resolve(path)
    old = path.read_text()
    new = render_doc(old)
    if new != old:
        write_atomic(path, new)
    return new != old


if __name__ == "__main__":  # python -m skinseg.results docs/experiments.md README.md  (make docs)
    import sys

    for name in sys.argv[1:] or ["docs/experiments.md", "README.md"]:
        print(f"{name}: {'updated' if update_doc(name) else 'up to date'}")

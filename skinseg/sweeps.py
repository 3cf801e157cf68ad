"""Sweeps: run ``03_train`` through papermill (or ``skinseg train``, several at once) for each YAML of
``params/sweeps/<name>/`` and compare the runs.

Each run's parameters are ``base`` (a params YAML, e.g. params/demo.yaml) updated by the sweep YAML, then by
``overrides``. A run whose resolved config matches a complete run already on disk is skipped.

A study sweep's table in ``results/`` is the ``results_file`` its ``_sweep.yaml`` sets under ``overrides``: each
run appends its own comparison row when it ends, so the table grows run by run and outlives the run folders. Only a
sweep run as recorded writes there; one with another base or an override of what a run learns writes its rows to
``results.csv`` in its own output folder instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from skinseg.config import Config, read_params
from skinseg.errors import ConfigError, SweepError
from skinseg.files import claim_folder, write_atomic
from skinseg.paths import NOTEBOOKS_DIR, PARAMS_DIR, REPORTS_DIR, resolve
from skinseg.progress import ENV as PROGRESS_ENV, bar as progress_bar, quiet
from skinseg.runs import (LAST_VALIDATIONS, MAY_CHANGE_ON_RESUME, RunFolder, find_complete_run, read_metrics,
                          run_summary)


SWEEP_MARKER = ".skinseg-sweep"  # in a sweep's --out outside reports/: the sweep may write there again


COMPARISON_FILE = "comparison.csv"  # in each sweep's output folder
OWN_RESULTS_FILE = "results.csv"  # in a sweep's output folder: the rows of a sweep not run as recorded
SWEEP_RECORD = "_sweep.yaml"  # in each sweep folder: its base params file and the overrides every run takes


def sweep_files(name: str) -> list[Path]:
    """The run files of a sweep (every YAML of its folder but the record)."""
    folder = PARAMS_DIR / "sweeps" / name
    files = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("_"))
    if not files:
        known = sorted(p.name for p in (PARAMS_DIR / "sweeps").iterdir() if p.is_dir())
        raise ConfigError(f"no sweep {name!r} (no YAML files in {folder}); sweeps: {', '.join(known)}")
    return files


def sweep_record(name: str) -> tuple[Path, dict[str, Any]]:
    """(base params file, overrides) a sweep records in its ``_sweep.yaml``; demo.yaml and none without one."""
    path = PARAMS_DIR / "sweeps" / name / SWEEP_RECORD
    if not path.exists():
        return PARAMS_DIR / "demo.yaml", {}
    record = _read_record(path)
    return PARAMS_DIR / record["base"], dict(record.get("overrides") or {})


def _read_record(path: Path) -> dict[str, Any]:
    record = read_params(path)
    unknown = set(record) - {"base", "overrides"}
    if unknown or not isinstance(record.get("base"), str) or not isinstance(record.get("overrides", {}), dict):
        hint = ("; a sweep's table in results/ is the results_file its runs write: set `results_file:` under "
                "`overrides:` instead of `table:`" if "table" in unknown else "")
        raise ConfigError(f"{path}: needs `base: <params file below params/>` and optionally `overrides:` (a "
                          f"mapping){'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}{hint}")
    return record


def as_recorded(name: str, base: str | Path | None, overrides: dict | None) -> bool:
    """Whether a sweep runs with what its files pin: its recorded base, and overrides only of where and how it
    executes (data_root, device, workers, ...), which do not change what a run learns."""
    if base is not None and resolve(base) != sweep_record(name)[0].resolve():
        return False
    return all(k in MAY_CHANGE_ON_RESUME for k in (overrides or {}))


def load_params(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    path = resolve(path)
    data = read_params(path)
    Config.from_dict(data, source=str(path))  # validates keys and values, naming the file
    return data


def run_parameters(base: dict, sweep_file: Path, overrides: dict | None, out_dir: Path) -> dict[str, Any]:
    """A sweep file is an overlay on the base: checked merged with it (naming the file), not on its own, so a
    key that needs another (``crop_foreground_p`` needs ``crop_size``) may come from the base."""
    for key in ("output_dir", "run_name"):
        if key in (overrides or {}):
            raise ConfigError(f"--set {key}: a sweep puts each config's run in OUT/<config>/runs, named after the "
                              "config; choose OUT with --out")
    params = {**base, **read_params(resolve(sweep_file))}
    params.update(output_dir=str(out_dir / sweep_file.stem / "runs"), run_name=sweep_file.stem)
    return Config.with_overrides(params, overrides, source=str(sweep_file)).to_dict()


def run_sweep(name: str, base: str | Path | None = None, overrides: dict | None = None,
              out_dir: str | Path | None = None, kernel: str = "python3", progress: bool = True,
              runner: str = "papermill", jobs: int = 1) -> pd.DataFrame:
    """Run every config of a sweep that is not done yet; return the comparison table (one row per config).

    ``base`` None takes the base the sweep records (``params/sweeps/<name>/_sweep.yaml``); the record's
    overrides update the base (under the sweep files and ``overrides``). ``runner="papermill"`` executes
    ``03_train`` per config (an executed notebook per run, one at a time);
    ``runner="cli"`` runs ``skinseg train`` on the config's merged parameters (written next to its log as
    ``<out_dir>/<config>.yaml``), ``jobs`` at a time: for nodes without Jupyter, and for filling a large GPU.
    """
    sweep_files(name)  # an unknown sweep is refused before any folder is made
    recorded_base, recorded_overrides = sweep_record(name)
    # the record's overrides belong to the base (a sweep file may set them otherwise); --set overrides all
    base_params = {**load_params(base if base is not None else recorded_base), **recorded_overrides}
    out_dir = Path(out_dir or REPORTS_DIR / "sweeps" / name).expanduser().resolve()
    for f in sweep_files(name):  # every config checked before the folder is made
        run_parameters(base_params, f, overrides, out_dir)
    out_dir = claim_folder(out_dir, SWEEP_MARKER, "the sweep's --out", own=REPORTS_DIR)
    # not the study the record pins: its rows go to the sweep's own folder, which keeps results/ clean
    if not as_recorded(name, base, overrides) and "results_file" in base_params:
        base_params["results_file"] = str(out_dir / OWN_RESULTS_FILE)
    todo, runs, results_files = {}, {}, set()
    for f in sweep_files(name):
        params = run_parameters(base_params, f, overrides, out_dir)
        if params.get("results_file"):
            results_files.add(params["results_file"])
        done = find_complete_run(Path(params["output_dir"]), params)
        if done is None:
            todo[f.stem] = params
        runs[f.stem] = done
    if runner == "papermill":
        import papermill as pm

        for stem, params in progress_bar(todo.items(), desc=f"sweep {name}", show=progress):
            notebook = out_dir / f"{stem}.ipynb"
            try:
                with quiet():  # no tqdm frames in the executed notebook
                    pm.execute_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"), str(notebook), parameters=params,
                                        kernel_name=kernel, cwd=str(NOTEBOOKS_DIR), progress_bar=False)
            except pm.PapermillExecutionError as e:
                raise SweepError(f"sweep {name}: run {stem} failed in cell {e.exec_count}: {e.ename}: "
                                 f"{str(e.evalue).splitlines()[0] if e.evalue else ''}; partly executed notebook: "
                                 f"{notebook}. Fix it, then run the sweep again (finished runs are skipped)") from None
    elif runner == "cli":
        _train_in_processes(todo, out_dir, jobs, progress)
    else:
        raise ConfigError(f"sweep runner {runner!r}: choose papermill or cli")
    for stem, params in todo.items():
        runs[stem] = find_complete_run(Path(params["output_dir"]), params)
        if runs[stem] is None:
            raise SweepError(f"sweep {name}: {stem} ran but left no complete run in {params['output_dir']}")
    for target in sorted(results_files):  # the file the runs' own configs name (one, unless a sweep file sets it)
        fill_results(target, runs, progress)
    table = comparison(runs)
    write_table(table, out_dir / COMPARISON_FILE)
    return table


def fill_results(results_file: str | Path, runs: dict[str, Path], progress: bool = False) -> None:
    """Append the row of every finished run that its results file lacks: a run found done that was trained before
    the sweep recorded the file, or one stopped between its last checkpoint and its row (evaluates it)."""
    from skinseg.results import append_row, run_row

    path = resolve(results_file)
    have = set(pd.read_csv(path)["run"]) if path.exists() and path.stat().st_size else set()
    for stem, run in runs.items():
        if run.name not in have:
            append_row(path, run_row(run))
            if progress:
                print(f"{stem}: comparison row of {run.name} written to {path}", flush=True)


def write_table(table: pd.DataFrame, path: Path) -> None:
    """A comparison table as CSV (4 decimals), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, table.to_csv(float_format="%.4f"))


def _train_in_processes(todo: dict[str, dict], out_dir: Path, jobs: int, progress: bool) -> None:
    """``skinseg train`` per config, ``jobs`` at a time; output to ``<out_dir>/<config>.log``. A failed run is
    a SweepError naming the run and the last line of its log (after the others finished)."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    def train_one(stem: str, params: dict) -> int:
        config, log = out_dir / f"{stem}.yaml", out_dir / f"{stem}.log"
        config.write_text(yaml.safe_dump(params, sort_keys=False))
        if progress:
            print(f"started {stem} (log: {log})", flush=True)
        with open(log, "w") as f:
            code = subprocess.run([sys.executable, "-m", "skinseg", "train", "--config", str(config)],
                                  stdout=f, stderr=subprocess.STDOUT,
                                  env={**os.environ, PROGRESS_ENV: "0"}).returncode  # no bar frames in the log
        if progress:
            print(f"{stem}: {'failed' if code else 'done'} (exit {code})", flush=True)
        return code

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        codes = dict(zip(todo, pool.map(train_one, todo, todo.values())))
    failed = [stem for stem, code in codes.items() if code]
    if failed:
        said = "; ".join(f"{s}: {_last_line(out_dir / f'{s}.log')} (log: {out_dir / f'{s}.log'})" for s in failed)
        raise SweepError(f"{len(failed)} of {len(codes)} sweep runs failed: {said}. Fix them, then run the sweep "
                         "again (finished runs are skipped)")


def _last_line(log: Path) -> str:
    """The last line a failed run printed: its one-line error (or the last line of its traceback)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines()]
    except OSError:
        return "no log"
    return next((line for line in reversed(lines) if line), "no output")


def sweep_status() -> pd.DataFrame:
    """The study's sweeps (those whose record names a ``results_file``): per sweep, its base, its table in
    ``results/``, how many of its runs have written their row there, which have not yet, and the rows there of
    runs that are no file of the sweep (trained on their own, e.g. a second seed)."""
    from skinseg.results import read_results

    rows = []
    for folder in sorted(p for p in (PARAMS_DIR / "sweeps").iterdir() if (p / SWEEP_RECORD).is_file()):
        base, overrides = sweep_record(folder.name)
        if not overrides.get("results_file"):
            continue
        stems = [f.stem for f in sweep_files(folder.name)]
        path = resolve(overrides["results_file"])
        table = read_results(path) if path.is_file() and path.stat().st_size else pd.DataFrame()
        done = set(table["config"]) if "config" in table else set()
        missing = [s for s in stems if s not in done]
        rows.append({"sweep": folder.name, "base": base.name, "table": str(overrides["results_file"]),
                     "runs": len(stems), "rows written": len(stems) - len(missing),
                     "not run yet": " ".join(missing), "rows of other runs": " ".join(sorted(done - set(stems)))})
    return pd.DataFrame(rows, columns=["sweep", "base", "table", "runs", "rows written", "not run yet",
                                       "rows of other runs"])


def comparison(runs: dict[str, Path]) -> pd.DataFrame:
    """One row per run, best first by the mean tuned validation score of its last three validations (far less
    noisy than a curve's peak), with the peak, its epoch, per-attribute Jaccard there and time per epoch."""
    rows = [{"config": name, **run_summary(path)} for name, path in runs.items()]
    return pd.DataFrame(rows).set_index("config").drop(columns=["run"]).sort_values(
        [f"last{LAST_VALIDATIONS}_val_jaccard", "best_val_jaccard"], ascending=False)


def curves(runs_root: str | Path) -> dict[str, pd.DataFrame]:
    """Per-epoch metrics of the newest complete run of each config below a sweep's output folder."""
    out = {}
    for cfg_dir in sorted(Path(runs_root).iterdir()):
        found = sorted((cfg_dir / "runs").glob("*")) if (cfg_dir / "runs").exists() else []
        runs = [r for r in found if RunFolder(r).is_complete()]
        if runs:
            out[cfg_dir.name] = read_metrics(runs[-1])[1]
    return out

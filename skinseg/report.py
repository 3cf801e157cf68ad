"""``skinseg report``: execute notebooks 01-06 with papermill and build one HTML report (and a PDF).

Data: the given root, or the params' ``data_root``, or else the embedded synthetic dataset, generated once
into ``data/synthetic``. Executed notebooks go to ``reports/notebooks/``, runs to ``reports/runs/``.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import nbformat

from skinseg.errors import EnvironmentProblem, Interrupted, ReportError
from skinseg.files import claim_folder
from skinseg.notebook import is_synthetic, resolve_checkpoint, resolve_data
from skinseg.paths import IMAGES_DIR, NOTEBOOKS_DIR, PARAMS_DIR, REPORTS_DIR, resolve
from skinseg.progress import quiet

NOTEBOOKS = ("01_eda", "02_architectures", "03_train", "04_sweeps", "05_test_evaluation", "06_qualitative")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync")
SKIP_TAG = "report-skip"
# left in an --out or --update-images folder outside reports/ and images/: the report may write there again
REPORT_MARKER = ".skinseg-report"
FIGURES_MARKER = ".skinseg-figures"


def chosen_data_root(values: dict[str, Any], data_root: str | Path | None) -> str | Path | None:
    """The caller's data root, else the params' (None: the synthetic set, see :func:`skinseg.notebook.is_synthetic`)."""
    return data_root or values.get("data_root")


def notebook_parameters(name: str, source_dir: Path = NOTEBOOKS_DIR) -> dict[str, Any]:
    import papermill as pm

    return pm.inspect_notebook(str(Path(source_dir) / f"{name}.ipynb"))


def execute(name: str, parameters: dict[str, Any], out_dir: Path, kernel: str = "python3",
            source_dir: Path = NOTEBOOKS_DIR) -> Path:
    """Run one notebook with papermill (cwd fixed to its folder), passing the parameters it declares.

    A failing cell raises ReportError naming the notebook, the cell and the partly executed copy.
    """
    import papermill as pm

    out = Path(out_dir) / f"{name}.ipynb"
    accepted = notebook_parameters(name, source_dir)
    params = {k: v for k, v in parameters.items() if k in accepted}
    from nbclient.exceptions import DeadKernelError

    try:
        with quiet():  # no tqdm frames in the report
            pm.execute_notebook(str(Path(source_dir) / f"{name}.ipynb"), str(out), parameters=params,
                                kernel_name=kernel, cwd=str(source_dir), progress_bar=False)
    except pm.PapermillExecutionError as e:
        if e.ename == "KeyboardInterrupt":
            raise Interrupted(f"notebook {name} was stopped in cell {e.exec_count}; nothing is damaged: run the same "
                              "command again (finished training runs are reused)") from None
        evalue = str(e.evalue).splitlines()[0] if e.evalue else ""
        raise ReportError(f"notebook {name} failed in cell {e.exec_count} (cell index {e.cell_index}): {e.ename}: "
                          f"{evalue}; partly executed notebook: {out}") from None
    except DeadKernelError:
        raise ReportError(f"the kernel running notebook {name} died (out of memory, or killed); partly executed "
                          f"notebook: {out}. Run the same command again (finished training runs are reused)") from None
    return out


def run_notebooks(params: str | Path = PARAMS_DIR / "demo.yaml", data_root: str | Path | None = None,
                  out_dir: str | Path = REPORTS_DIR, notebooks=NOTEBOOKS, kernel: str = "python3",
                  sweep: str | None = "architectures", sweep_overrides: dict | None = None,
                  progress: bool = True) -> list[Path]:
    """Execute the notebooks in order; returns the executed copies. ``sweep=None``: notebook 04 trains no sweep
    and shows only the study's tables in ``results/`` (the real report: a short sweep on the real data says
    nothing, the 13-epoch comparison is in ``results/``)."""
    from skinseg.sweeps import load_params

    out_dir = Path(out_dir)
    nb_dir = out_dir / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    values = load_params(params)
    root, synthetic = resolve_data(chosen_data_root(values, data_root))
    run_root = out_dir / "runs"
    # the synthetic set stays None: every notebook then applies the same rule (and shows the synthetic-data notes)
    values.update(data_root=None if synthetic else str(root), output_dir=str(run_root), run_name="report")
    shared = {**values, "params_file": str(resolve(params)), "sweep": sweep,
              "sweep_overrides": sweep_overrides if sweep_overrides is not None else {"epochs": 2},
              "sweep_out": str(out_dir / "sweeps" / sweep) if sweep else None, "checkpoint": None,
              "submission_dir": str(out_dir / "submission"), "figures_dir": str(out_dir / "figures")}
    executed = []
    for k, name in enumerate(notebooks, 1):
        start = time.perf_counter()
        if progress:
            print(f"[{k}/{len(notebooks)}] {name} ...", flush=True)
        if name in ("05_test_evaluation", "06_qualitative") and shared["checkpoint"] is None:
            shared["checkpoint"] = str(resolve_checkpoint(None, run_root))
        executed.append(execute(name, shared, nb_dir, kernel))
        if progress:
            print(f"[{k}/{len(notebooks)}] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    return executed


def _anchor(text: str) -> str:
    """The id nbconvert gives a markdown heading."""
    return re.sub(r"\s", "-", text.strip())


def combine(executed: list[Path], title: str, intro: str = "") -> nbformat.NotebookNode:
    """One notebook of all executed ones: a title, a table of contents, then every notebook's cells."""
    merged = nbformat.v4.new_notebook()
    toc, cells = [], []
    for path in executed:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if SKIP_TAG in tags or "parameters" in tags or "injected-parameters" in tags:
                continue
            if cell.cell_type == "code":
                # progress bars and kernel warnings go to stderr: not part of the report
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
            if cell.cell_type == "markdown":
                for line in cell.source.splitlines():
                    m = re.match(r"^(#{1,2})\s+(.*)$", line)
                    if m:
                        indent = "    " * (len(m.group(1)) - 1)
                        toc.append(f"{indent}- [{m.group(2).strip()}](#{_anchor(m.group(2))})")
            cells.append(cell)
    head = f"# {title}\n\n{intro}\n\n## Contents\n\n" + "\n".join(toc)
    merged.cells = [nbformat.v4.new_markdown_cell(head), *cells]
    merged.metadata = nbformat.read(executed[0], as_version=4).metadata if executed else {}
    return merged


def build_html(executed: list[Path], out: str | Path, title: str = "skinseg: ISIC 2018 Task 2 study",
               intro: str = "") -> Path:
    """Convert the combined notebook to HTML with the code hidden (every figure and table kept)."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(combine(executed, title, intro))
    out = Path(out)
    out.write_text(body, encoding="utf-8")
    return out


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def print_pdf(html: str | Path, out: str | Path, chromium: str | None = None, timeout: int = 180) -> Path | None:
    """Print the HTML to PDF with headless Chromium; None (and a message) when none is installed."""
    chromium = chromium or find_chromium()
    if chromium is None:
        print("no Chromium found (apt-get install chromium): skipping the PDF")
        return None
    out = Path(out).resolve()
    tmp = out.with_name(f".{out.name}.tmp.pdf")
    cmd = [chromium, *CHROMIUM_FLAGS, "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw",
           f"--user-data-dir={out.parent / '.chromium-profile'}", f"--print-to-pdf={tmp}",
           Path(html).resolve().as_uri()]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise EnvironmentProblem(f"Chromium wrote no PDF ({' '.join(cmd)})")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(out.parent / ".chromium-profile", ignore_errors=True)
    return out


# the real data's terms of use, as its README gives them: said wherever the report shows real images
ISIC_CREDIT = ("Images and masks: ISIC 2018 Challenge data (Codella et al. 2018, arXiv:1902.03368), for "
               "non-commercial research and education; HAM10000 (c) ViDIR Group, Department of Dermatology, Medical "
               "University of Vienna (Tschandl et al., Sci. Data 5, 180161, 2018); MSK Dataset (c) Anonymous.")

# figures the README shows: (notebook, heading of the section, file name in images/)
README_FIGURES = (
    ("01_eda", "Attribute prevalence", "prevalence.png"),
    ("01_eda", "Examples with their masks", "examples.png"),
    ("03_train", "Loss, learning rate and validation score", "training_curves.png"),
    ("04_sweeps", "Validation curves", "sweep_curves.png"),
    ("04_sweeps", "The study on the real data (`results/`)", "study_curves.png"),
    ("06_qualitative", "Worst images", "worst_images.png"),
)


def export_figures(executed: list[Path], images_dir: str | Path) -> list[Path]:
    """Copy the first PNG under each README heading from the executed notebooks into ``images_dir``."""
    import base64

    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    by_name = {p.stem: p for p in executed}
    written = []
    for notebook, heading, filename in README_FIGURES:
        if notebook not in by_name:
            continue
        section = None
        for cell in nbformat.read(by_name[notebook], as_version=4).cells:
            if cell.cell_type == "markdown":
                m = re.match(r"^#+\s+(.*)$", cell.source.splitlines()[0]) if cell.source else None
                if m:
                    section = m.group(1).strip()
                continue
            if section != heading:
                continue
            png = next((o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})),
                       None)
            if png:
                (images_dir / filename).write_bytes(base64.b64decode(png))
                written.append(images_dir / filename)
                break
    return written


def build_report(params: str | Path = PARAMS_DIR / "demo.yaml", data_root: str | Path | None = None,
                 out_dir: str | Path = REPORTS_DIR, pdf: bool = True, images_dir: str | Path | None = None,
                 **options: Any) -> dict[str, Any]:
    """Execute 01-06 and build reports/report.html (+ report.pdf where Chromium exists)."""
    start = time.perf_counter()
    out_dir = claim_folder(out_dir, REPORT_MARKER, "--out", own=REPORTS_DIR)
    if images_dir is not None:
        images_dir = claim_folder(images_dir, FIGURES_MARKER, "--update-images", own=IMAGES_DIR)
    executed = run_notebooks(params, data_root, out_dir, **options)
    from skinseg.sweeps import load_params

    values = load_params(params)
    chosen = chosen_data_root(values, data_root)
    intro = ("**Data: the embedded synthetic ISIC-like dataset.** Scores on it are not comparable with the "
             "ISIC 2018 leaderboard." if is_synthetic(chosen) else f"Data: `{chosen}`. {ISIC_CREDIT}")
    intro += f" Parameters: `{Path(params).name}`."
    html = build_html(executed, out_dir / "report.html", intro=intro)
    result = {"html": str(html), "notebooks": [str(p) for p in executed], "pdf": None}
    if pdf:
        path = print_pdf(html, out_dir / "report.pdf")
        result["pdf"] = str(path) if path else None
    if images_dir is not None:
        result["figures"] = [str(p) for p in export_figures(executed, images_dir)]
    result["seconds"] = time.perf_counter() - start
    return result

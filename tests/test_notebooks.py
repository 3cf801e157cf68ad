"""Notebooks and params: one parameters cell each, stored clean, params YAMLs that papermill can use."""
from pathlib import Path
import ast
import re
import warnings

import nbformat
import papermill as pm
import pytest
import yaml

from skinseg import notebook
from skinseg.config import Config
from skinseg.notebook import QUICK_TRAIN, is_synthetic, resolve_checkpoint, resolve_data, setup
from skinseg.paths import NOTEBOOKS_DIR, PARAMS_DIR, PROJ_ROOT
from skinseg.errors import DataError
from skinseg.report import NOTEBOOKS, ReportError, build_html, chosen_data_root, combine, execute
from skinseg.runs import RunFolder, best_checkpoint

NOTEBOOK_FILES = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
PARAMS_FILES = sorted(p for p in PARAMS_DIR.rglob("*.yaml") if not p.name.startswith("_"))


def test_the_six_numbered_notebooks_exist():
    assert [p.stem for p in NOTEBOOK_FILES] == list(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store notebooks without outputs"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_train_notebook_parameters_are_exactly_the_config_keys():
    params = pm.inspect_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"))
    assert set(params) == set(Config.keys())


def test_train_notebook_parameters_cell_is_generated_from_the_config():
    """Not a hand-kept copy: the cell is what `make docs` writes from Config, params/demo.yaml and QUICK_TRAIN."""
    from skinseg.notebook import train_parameters_source

    nb = nbformat.read(NOTEBOOKS_DIR / "03_train.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cell.source == train_parameters_source(), "03_train's parameters cell is stale: run `make docs`"
    assert "lr = 0.003  # params/demo.yaml" in cell.source and "epochs = 2  # QUICK_TRAIN" in cell.source


def _as_lists(values):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def test_train_notebook_defaults_are_config_then_demo_yaml_then_quick_train():
    demo = yaml.safe_load((PARAMS_DIR / "demo.yaml").read_text())
    expected = {**Config().to_dict(), **demo, **QUICK_TRAIN}
    params = pm.inspect_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"))
    defaults = {key: ast.literal_eval(p["default"]) for key, p in params.items()}
    assert _as_lists(defaults) == _as_lists(expected)
    assert defaults["data_root"] is None  # None: the synthetic set


def test_train_notebook_markdown_states_the_quick_override():
    intro = nbformat.read(NOTEBOOKS_DIR / "03_train.ipynb", as_version=4).cells[0].source
    assert "params/demo.yaml" in intro and "QUICK_TRAIN" in intro
    for key, value in QUICK_TRAIN.items():
        assert f"`{key} = {value!r}`" in intro


def _setup_cell(nb):
    (k,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    return next(c for c in nb.cells[k + 1:] if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_setup_cell_calls_skinseg_notebook_setup(path):
    from IPython.core.inputtransformer2 import TransformerManager

    source = _setup_cell(nbformat.read(path, as_version=4)).source
    tree = ast.parse(TransformerManager().transform_cell(source))  # magics become plain calls
    imported = any(isinstance(node, ast.ImportFrom) and node.module == "skinseg.notebook"
                   and any(a.name == "setup" and a.asname is None for a in node.names) for node in tree.body)
    called = any(isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                 and isinstance(node.value.func, ast.Name) and node.value.func.id == "setup" for node in tree.body)
    assert imported and called, "the cell after the parameters cell should import and call skinseg.notebook.setup()"


# what a notebook must leave to skinseg.notebook: the display setup, and what a None data root or checkpoint means
DECIDED_IN_THE_PACKAGE = {
    "%matplotlib": "setup()",
    "display.precision": "setup()",
    "filterwarnings": "setup()",
    "ensure_synthetic": "resolve_data()",
    "latest_run": "resolve_checkpoint()",
    "best.pt": "resolve_checkpoint()",
}
SYNTHETIC_RULE = re.compile(r"data_root\s+is\s+(not\s+)?None|if\s+(not\s+)?data_root\b|data_root\s+else\b")


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebook_leaves_setup_data_and_checkpoint_rules_to_the_package(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    found = {text: helper for text, helper in DECIDED_IN_THE_PACKAGE.items() if text in code}
    assert not found, f"use skinseg.notebook instead of: {found}"
    assert not SYNTHETIC_RULE.search(code), "resolve_data(data_root) decides what no data root means"


def test_no_data_root_means_the_synthetic_set():
    assert is_synthetic(None) and is_synthetic("")
    assert not is_synthetic("data/isic") and not is_synthetic(PROJ_ROOT / "data")


def test_resolve_data_generates_the_synthetic_set_only_without_a_data_root(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(notebook, "ensure_synthetic", lambda: calls.append(1) or tmp_path)
    assert resolve_data(None) == (tmp_path, True)
    assert resolve_data("") == (tmp_path, True)
    assert resolve_data("data/isic") == (PROJ_ROOT / "data" / "isic", False)
    assert resolve_data(tmp_path / "real") == (tmp_path / "real", False)
    assert len(calls) == 2


def test_report_and_notebooks_share_the_data_root_rule():
    assert is_synthetic(chosen_data_root({}, None))
    assert is_synthetic(chosen_data_root({"data_root": None}, ""))
    assert chosen_data_root({"data_root": "params/root"}, None) == "params/root"
    assert chosen_data_root({"data_root": "params/root"}, "given") == "given"


def test_resolve_checkpoint_is_the_given_one_or_the_newest_runs_best(tmp_path):
    with pytest.raises(DataError, match="no run folders"):
        resolve_checkpoint(None, tmp_path)
    for name in ("20260101-000000_unet_old", "20260102-000000_unet_new"):
        run = RunFolder.create(tmp_path / name, "epochs: 1\n")
        run.best.write_bytes(b"x")
    assert resolve_checkpoint(None, tmp_path) == best_checkpoint(tmp_path / "20260102-000000_unet_new")
    assert resolve_checkpoint("", tmp_path) == best_checkpoint(tmp_path / "20260102-000000_unet_new")
    assert resolve_checkpoint("runs/a/last.pt", tmp_path) == PROJ_ROOT / "runs" / "a" / "last.pt"
    assert resolve_checkpoint(tmp_path / "x.pt") == tmp_path / "x.pt"


def test_setup_sets_pandas_precision_hides_torch_warnings_and_inlines_figures(monkeypatch):
    import pandas as pd

    magics = []

    class Shell:
        def run_line_magic(self, name, line):
            magics.append((name, line))

    with pd.option_context("display.precision", 6), warnings.catch_warnings():
        monkeypatch.setattr(notebook, "get_ipython", lambda: None)
        setup()  # plain Python: no shell, no magic
        assert pd.get_option("display.precision") == 4
        assert any(action == "ignore" and category is UserWarning and module and module.match("torch")
                   for action, _, category, module, _ in warnings.filters)
        monkeypatch.setattr(notebook, "get_ipython", Shell)
        setup()
    assert magics == [("matplotlib", "inline")]


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(PARAMS_DIR)))
def test_params_yaml_keys_are_notebook_parameters_and_config_keys(path):
    # every params YAML targets 03_train (directly, or through a sweep in 04_sweeps)
    data = yaml.safe_load(path.read_text()) or {}
    accepted = pm.inspect_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"))
    unknown = [k for k in data if k not in accepted]
    assert not unknown, f"{path.name}: keys papermill would only warn about: {unknown}"
    if path.parent.parent.name == "sweeps":  # an overlay: valid merged with the base its sweep records
        from skinseg.sweeps import sweep_record

        base, overrides = sweep_record(path.parent.name)
        data = {**yaml.safe_load(base.read_text()), **overrides, **data}
    Config.from_dict(data, source=str(path))


def test_every_sweep_records_its_base_and_sweep_runs_on_it(monkeypatch):
    import skinseg.sweeps as sweeps

    for folder in sorted((PARAMS_DIR / "sweeps").iterdir()):
        base, overrides = sweeps.sweep_record(folder.name)
        assert (folder / "_sweep.yaml").exists() and base.is_file(), folder.name
    assert sweeps.sweep_record("isic_cpu_pretrained") == (
        PARAMS_DIR / "isic_cpu.yaml", {"results_file": "results/isic_cpu_pretrained.csv", "ema": None,
                                       "checkpoint_rule": "best"})
    assert sweeps.sweep_record("isic_cpu") == (
        PARAMS_DIR / "isic_cpu_128.yaml", {"results_file": "results/isic_cpu.csv", "epochs": 6})
    seen = {}
    monkeypatch.setattr(sweeps, "find_complete_run", lambda out, params: seen.setdefault(params["run_name"], params))
    monkeypatch.setattr(sweeps, "comparison", lambda runs: runs)
    monkeypatch.setattr(sweeps, "claim_folder", lambda folder, *a, **k: Path(folder))
    written, filled = [], []
    monkeypatch.setattr(sweeps, "write_table", lambda table, path: written.append(path))
    monkeypatch.setattr(sweeps, "fill_results", lambda path, runs, progress: filled.append(sweeps.resolve(path)))
    sweeps.run_sweep("isic_cpu", out_dir=Path("/nonexistent"), progress=False)  # every run found done: no training
    # as recorded: every run's row goes to the results/ file its record names, the table to the sweep's folder
    assert written == [Path("/nonexistent") / sweeps.COMPARISON_FILE]
    assert filled == [PROJ_ROOT / "results" / "isic_cpu.csv"]
    assert len(seen) == 7 and all(p["results_file"] == "results/isic_cpu.csv" and p["epochs"] == 6
                                  for p in seen.values())
    written.clear(), filled.clear(), seen.clear()
    sweeps.run_sweep("isic_cpu", out_dir=Path("/nonexistent"), overrides={"lr": 0.01}, progress=False)
    assert filled == [Path("/nonexistent") / sweeps.OWN_RESULTS_FILE]  # not what the files pin: not in results/
    assert len(seen) == 7 and all(p["results_file"] == str(Path("/nonexistent") / sweeps.OWN_RESULTS_FILE)
                                  for p in seen.values())
    assert written == [Path("/nonexistent") / sweeps.COMPARISON_FILE]  # not what the files pin: not in results/
    seen.clear()
    sweeps.run_sweep("isic_cpu", out_dir=Path("/nonexistent"), progress=False)
    cpu128 = yaml.safe_load((PARAMS_DIR / "isic_cpu_128.yaml").read_text())
    assert len(seen) == 7 and seen["a_baseline"]["image_size"] == cpu128["image_size"]
    assert seen["f_crop128_at256"]["image_size"] == 256  # a sweep file's own value
    assert {k: p["epochs"] for k, p in seen.items()}["a_baseline"] == 6  # the record's, under the files' own


def test_sweeps_shipped():
    for name, n in (("architectures", 4), ("schedulers", 6), ("losses", 5)):
        assert len(list((PARAMS_DIR / "sweeps" / name).glob("[!_]*.yaml"))) >= n
    models = {yaml.safe_load(p.read_text())["model"] for p in (PARAMS_DIR / "sweeps" / "architectures").glob("[!_]*.yaml")}
    assert models == {"unet", "unet-residual", "unet-attention", "unet-timm-attention"}
    schedulers = {yaml.safe_load(p.read_text())["scheduler"] for p in (PARAMS_DIR / "sweeps" / "schedulers").glob("[!_]*.yaml")}
    assert schedulers == {"reduce_lr", "cosine", "cosine_restart", "step", "exp", "onecycle"}


def _tiny_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
    nb.cells = cells
    nbformat.write(nb, path)


@pytest.mark.slow
def test_failing_cell_names_notebook_cell_and_partial_copy(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    _tiny_notebook(src / "broken.ipynb", [nbformat.v4.new_markdown_cell("# Broken"), params,
                                          nbformat.v4.new_code_cell("y = x + 1"),
                                          nbformat.v4.new_code_cell("raise ValueError('bad data')")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ReportError) as err:
        execute("broken", {"x": 5, "unrelated": 1}, out, source_dir=src)
    msg = str(err.value)
    assert "notebook broken failed in cell" in msg and "ValueError: bad data" in msg
    assert str(out / "broken.ipynb") in msg and (out / "broken.ipynb").exists()


@pytest.mark.slow
def test_combined_html_hides_code_and_links_every_heading(tmp_path):
    paths = []
    for k in (1, 2):
        p = tmp_path / f"nb{k}.ipynb"
        cell = nbformat.v4.new_code_cell("print('secret code')")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"output {k}\n")]
        _tiny_notebook(p, [nbformat.v4.new_markdown_cell(f"# Part {k}\n\n## Section {k}.a"), cell])
        paths.append(p)
    merged = combine(paths, "Title")
    toc = merged.cells[0].source
    assert "- [Part 1](#Part-1)" in toc and "    - [Section 2.a](#Section-2.a)" in toc
    html = build_html(paths, tmp_path / "r.html").read_text()
    assert "output 1" in html and "output 2" in html and "print(&#39;secret code&#39;)" not in html
    assert "secret code" not in html
    for anchor in re.findall(r"\(#([^)]+)\)", toc):
        assert f'id="{anchor}"' in html, anchor


def test_export_figures_takes_the_png_under_each_readme_heading(tmp_path, monkeypatch):
    import base64

    from skinseg import report

    png = base64.b64encode(b"\x89PNG fake").decode()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"})]
    other = nbformat.v4.new_code_cell("other()")
    other.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(b"no").decode()})]
    path = tmp_path / "01_eda.ipynb"
    _tiny_notebook(path, [nbformat.v4.new_markdown_cell("## Pixel fraction"), other,
                          nbformat.v4.new_markdown_cell("## Attribute prevalence\n\ntext"), cell])
    written = report.export_figures([path], tmp_path / "images")
    assert [p.name for p in written] == ["prevalence.png"]
    assert (tmp_path / "images" / "prevalence.png").read_bytes() == b"\x89PNG fake"


def test_sweep_recognises_a_run_made_before_a_config_key_existed(tmp_path):
    from skinseg.config import Config
    from skinseg.runs import find_complete_run

    params = Config(epochs=1, run_name="a", output_dir=str(tmp_path)).to_dict()
    run = tmp_path / "20260101-000000_a"
    run.mkdir()
    old = {k: v for k, v in params.items() if k != "crop_size"}  # a config.yaml written before crop_size existed
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    from skinseg.checkpoint import save_checkpoint
    from skinseg.runs import RunFolder

    folder = RunFolder(run)
    folder.best.write_bytes(b"x")
    save_checkpoint({"epoch": 1}, folder.last)  # no end marker either: the final epoch in last.pt makes it done
    folder.metrics_file.write_text("kind,epoch\nepoch,1\n")
    assert find_complete_run(tmp_path, params) == run
    assert find_complete_run(tmp_path, {**params, "crop_size": 64}) is None  # a new value of the new key is a new run


def test_sweeps_notebook_without_a_sweep_trains_nothing_and_shows_the_results_tables(tmp_path):
    # the real report's --no-sweep: a one-epoch sweep on the real data says nothing, the study is in results/
    from skinseg.results import study_tables

    out = execute("04_sweeps", {"sweep": None, "sweep_out": str(tmp_path / "sweep")}, tmp_path)
    assert not (tmp_path / "sweep").exists()
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/html", ""))
                     for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code" for o in c.outputs)
    assert "No sweep was trained here" in text
    tables = study_tables()
    assert tables and all(f"`results/{name}.csv` ({len(t)} runs)" in text for name, t in tables.items())
    assert "unet-residual" in text and "dev last-3" in text  # the architecture comparison's rows and its statistic
    assert "Which of the study's sweeps have written their rows" in text and "isic_cpu_ema" in text

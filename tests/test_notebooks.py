"""Notebooks and params: one parameters cell each, stored clean, params YAMLs that papermill can use."""
import json
import re

import nbformat
import papermill as pm
import pytest
import yaml

from skinseg.config import Config
from skinseg.paths import NOTEBOOKS_DIR, PARAMS_DIR
from skinseg.report import NOTEBOOKS, ReportError, build_html, combine, execute

NOTEBOOK_FILES = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
PARAMS_FILES = sorted(PARAMS_DIR.rglob("*.yaml"))


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


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(PARAMS_DIR)))
def test_params_yaml_keys_are_notebook_parameters_and_config_keys(path):
    # every params YAML targets 03_train (directly, or through a sweep in 04_sweeps)
    data = yaml.safe_load(path.read_text()) or {}
    accepted = pm.inspect_notebook(str(NOTEBOOKS_DIR / "03_train.ipynb"))
    unknown = [k for k in data if k not in accepted]
    assert not unknown, f"{path.name}: keys papermill would only warn about: {unknown}"
    Config.from_dict(data, source=str(path))


def test_sweeps_shipped():
    for name, n in (("architectures", 4), ("schedulers", 6), ("losses", 5)):
        assert len(list((PARAMS_DIR / "sweeps" / name).glob("*.yaml"))) >= n
    models = {yaml.safe_load(p.read_text())["model"] for p in (PARAMS_DIR / "sweeps" / "architectures").glob("*.yaml")}
    assert models == {"unet", "unet-residual", "unet-attention", "unet-convnext-attention"}
    schedulers = {yaml.safe_load(p.read_text())["scheduler"] for p in (PARAMS_DIR / "sweeps" / "schedulers").glob("*.yaml")}
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
    from skinseg.sweeps import find_done

    params = Config(epochs=1, run_name="a", output_dir=str(tmp_path)).to_dict()
    run = tmp_path / "20260101-000000_a"
    run.mkdir()
    old = {k: v for k, v in params.items() if k != "crop_size"}  # a config.yaml written before crop_size existed
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    (run / "best.pt").write_bytes(b"x")
    (run / "metrics.csv").write_text("kind,epoch\nepoch,1\n")
    assert find_done(tmp_path, params) == run
    assert find_done(tmp_path, {**params, "crop_size": 64}) is None  # a new value of the new key is a new run

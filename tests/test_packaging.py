"""The Jupyter side is an extra: with it hidden, `import skinseg` and the train, evaluate, predict, score and
`sweep --runner cli` verbs work (a GPU node without Jupyter)."""
import os
import subprocess
import sys
import textwrap

import pytest

HIDDEN = ("IPython", "ipywidgets", "ipykernel", "papermill", "nbformat", "nbconvert", "nbclient", "jupyter_client",
          "jupyterlab", "matplotlib", "seaborn")

BLOCKER = f'''
import sys
HIDDEN = {HIDDEN!r}
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
        return None
sys.meta_path.insert(0, _Hide())
'''

DRIVER = textwrap.dedent('''
    import sys
    from pathlib import Path

    import yaml

    from skinseg import sweeps
    from skinseg.cli import main
    from skinseg.data.isic import SPLIT_FOLDERS

    root, tmp = Path(sys.argv[1]), Path(sys.argv[2])
    assert main(["synth", str(root), "--n-train", "4", "--n-val", "2", "--n-test", "2", "--width-range", "64,80"]) == 0
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(dict(data_root=str(root), image_size=32, batch_size=2, epochs=1, base_channels=8,
                                       output_dir=str(tmp / "runs"), channels_last=False)))
    assert main(["train", "--config", str(cfg)]) == 0
    ckpt = next((tmp / "runs").iterdir()) / "best.pt"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", str(root), "--split", "val",
                 "--json", str(tmp / "val.json")]) == 0
    images = root / "test" / SPLIT_FOLDERS["test"][0]
    assert main(["predict", "--checkpoint", str(ckpt), "--images", str(images), "--out", str(tmp / "sub")]) == 0
    assert main(["score", "--submission", str(tmp / "sub"), "--data", str(root), "--split", "test"]) == 0
    (tmp / "params" / "sweeps" / "mini").mkdir(parents=True)
    (tmp / "params" / "sweeps" / "mini" / "a_lr.yaml").write_text("lr: 0.002\\n")
    sweeps.PARAMS_DIR = tmp / "params"
    assert main(["sweep", "mini", "--base", str(cfg), "--runner", "cli", "--out", str(tmp / "sweep")]) == 0
    hidden = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
    assert not hidden, hidden
    print("all verbs ran without the Jupyter side")
''')


@pytest.mark.slow
def test_the_verbs_work_with_the_jupyter_side_hidden(tmp_path):
    (tmp_path / "hide").mkdir()
    (tmp_path / "hide" / "sitecustomize.py").write_text(BLOCKER)
    driver = tmp_path / "driver.py"
    driver.write_text(f"HIDDEN = {HIDDEN!r}\n" + DRIVER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "hide"), "SKINSEG_CACHE_DIR": str(tmp_path / "cache"),
           "SKINSEG_PROGRESS": "0"}
    out = subprocess.run([sys.executable, str(driver), str(tmp_path / "data"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "all verbs ran without the Jupyter side" in out.stdout
    # the hiding works: the same interpreter cannot import a hidden package
    probe = subprocess.run([sys.executable, "-c", "import papermill"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by the test" in probe.stderr

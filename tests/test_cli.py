"""The command line: every verb meets bad input with one line naming the file or key and what to
do, exit 2; Ctrl-C with one line, exit 130; never a traceback."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import one_line_error, tiny_config
from skinseg.cli import main
from skinseg.data.isic import SPLIT_FOLDERS
from skinseg.runs import RunFolder


PROJ = Path(__file__).resolve().parents[1]


@pytest.fixture
def world(small_root, tmp_path, cache_root):
    """What the bad inputs are built from: data, a trained checkpoint, params files (good, duplicated, bad)."""
    from skinseg.train import train

    run = Path(train(tiny_config(small_root, tmp_path, epochs=1), progress=False)["run_dir"])
    good = tmp_path / "good.yaml"
    good.write_text(f"data_root: {small_root}\nimage_size: 32\nbatch_size: 2\nepochs: 1\nbase_channels: 8\n"
                    f"output_dir: {tmp_path / 'runs'}\n")
    dup = tmp_path / "dup.yaml"
    dup.write_text("epochs: 1\nlr: 0.01\nepochs: 5\n")
    not_a_ckpt = tmp_path / "notes.pt"
    not_a_ckpt.write_text("not a checkpoint")
    return {"root": str(small_root), "best": str(run / "best.pt"), "good": str(good), "dup": str(dup),
            "junk": str(not_a_ckpt), "tmp": tmp_path,
            "images": str(small_root / "val" / "ISIC2018_Task1-2_Validation_Input")}


BAD_INPUTS = {
    # verb: [(argv with {placeholders}, words the line must hold)]
    "synth": [("synth {tmp}/s --seed -1", "--seed"), ("synth {tmp}/s --width-range 10", "--width-range"),
              ("synth {tmp}/s --n-train x", "invalid int"), ("synth {good}", "is a file")],
    "download": [("download {tmp}/d --splits nope", "nope"), ("download {tmp}/d --timeout -1", "--timeout")],
    "stats": [("stats {tmp}/nowhere", "nowhere"), ("stats {root} --resize-mode crop", "invalid choice")],
    "cache": [("cache {tmp}/nowhere", "nowhere"), ("cache {root} --image-size 0", "image")],
    "train": [("train --config {tmp}/missing.yaml", "not found"), ("train --config {dup}", "given twice"),
              ("train --config {good} --set eta_min=-1", "eta_min"),
              ("train --config {good} --set weight_decay=-1", "weight_decay"),
              ("train --config {good} --set warmup_epochs=-1", "warmup_epochs"),
              ("train --config {good} --set attribute_weights=[1,1,1,1,-5]", "attribute_weights"),
              ("train --config {good} --set aug_rotate_p=-0.5", "aug_rotate_p"),
              ("train --config {good} --set hue=5", "hue"), ("train --config {good} --set aug_flip_p=2", "aug_flip_p"),
              ("train --config {good} --set seed=-1", "seed"),
              ("train --config {good} --set run_name=../../escaped", "run_name"),
              ("train --config {good} --set run_name=a/b", "run_name"),
              ("train --config {good} --set run_name=" + "x" * 300, "run_name"),
              ("train --config {good} --set device=gpu0", "device"),
              ("train --config {good} --set epochs=1 --set epochs=2", "given twice"),
              ("train --config {good} --set load={junk}", "notes.pt"),
              # a key or value --set brings is --set's fault, not the (valid) file's
              ("train --config {good} --set out_dir=x", "--set: unknown key 'out_dir' (did you mean 'output_dir'?)"),
              ("train --config {good} --set epochs=abc", "--set: epochs='abc'")],
    "evaluate": [("evaluate --checkpoint {best} --data {root} --device gpu0", "--device"),
                 ("evaluate --checkpoint {junk} --data {root}", "notes.pt"),
                 ("evaluate --checkpoint {best} --data {root} --split dev", "dev_fraction"),
                 ("evaluate --checkpoint {best} --data {tmp}/nowhere", "nowhere"),
                 ("evaluate --checkpoint {tmp} --data {root}", "not a run folder")],
    "ensemble": [("ensemble --checkpoint {best} {best} --data {root} --out {best}", "member"),
                 ("ensemble --checkpoint {best} --data {root} --out {tmp}/e.pt", "two"),
                 ("ensemble --checkpoint {best} {junk} --data {root} --out {tmp}/e.pt", "notes.pt")],
    "predict": [("predict --checkpoint {best} --images {tmp}/nowhere --out {tmp}/sub", "nowhere"),
                ("predict --checkpoint {best} --images {images} --out {good}", "not a folder"),
                ("predict --checkpoint {best} --images {images} --out {tmp}/sub --device gpu0", "--device")],
    "score": [("score --submission {tmp}/nowhere --data {root}", "nowhere"),
              ("score --submission {tmp} --data {root}", "lacks"),
              ("score --submission {tmp} --data {root} --split dev", "invalid choice")],
    "sweep": [("sweep nope", "no sweep"), ("sweep architectures --jobs 0", "--jobs"),
              ("sweep architectures --base {tmp}/missing.yaml", "not found"),
              ("sweep architectures --base {dup}", "given twice"),
              ("sweep architectures --set out_dir=x", "--set: unknown key 'out_dir'"),
              ("sweep architectures --set epochs=abc", "--set: epochs='abc'"),
              ("sweep architectures --set output_dir={tmp}", "--out")],
    "report": [("report --params {tmp}/missing.yaml", "no such file"), ("report --out {good}", "is a file"),
               ("report --sweep-set epochs", "key=value"),
               ("report --no-sweep --sweep isic_gpu", "--no-sweep")],
}


@pytest.mark.parametrize("verb", sorted(BAD_INPUTS))
def test_every_verb_meets_bad_input_with_one_line_and_exit_2(verb, world, capsys):
    for template, words in BAD_INPUTS[verb]:
        argv = template.format(**world).split()
        line = one_line_error(capsys, argv)
        assert line.startswith(f"skinseg {verb}"), line
        assert words in line, (template, line)


def test_a_run_folder_stands_for_the_checkpoint_its_rule_names(small_root, tmp_path, cache_root, capsys):
    """``--checkpoint RUN`` evaluates (and predicts with) the checkpoint the run's ``checkpoint_rule`` names, as
    the README's commands use it: last.pt for the CPU recipe, best.pt by default."""
    import json

    from skinseg.train import train

    for rule in ("last", "best"):
        run = RunFolder(train(tiny_config(small_root, tmp_path, epochs=2, checkpoint_rule=rule, run_name=rule,
                                          lr=0.05), progress=False)["run_dir"])
        by_folder, by_file = tmp_path / f"{rule}_folder.json", tmp_path / f"{rule}_file.json"
        assert main(["evaluate", "--checkpoint", str(run.path), "--data", str(small_root), "--json",
                     str(by_folder)]) == 0
        assert f"checkpoint_rule {rule!r} -> {rule}.pt" in capsys.readouterr().err
        assert main(["evaluate", "--checkpoint", str(run.path / f"{rule}.pt"), "--data", str(small_root),
                     "--json", str(by_file)]) == 0
        folder, file = (json.loads(p.read_text()) for p in (by_folder, by_file))
        assert folder.pop("checkpoint") == file.pop("checkpoint") == str(run.path / f"{rule}.pt")
        assert folder == file
        sub = tmp_path / f"{rule}_sub"
        assert main(["predict", "--checkpoint", str(run.path), "--images",
                     str(small_root / "val" / SPLIT_FOLDERS["val"][0]), "--out", str(sub)]) == 0
        assert len(list(sub.glob("*.png"))) == 5 * len(list((small_root / "val" / SPLIT_FOLDERS["val"][0]).glob("*.jpg")))


def test_every_verb_is_in_the_batch():
    from skinseg.cli import build_parser

    verbs = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert sorted(verbs) == sorted(BAD_INPUTS)


@pytest.mark.slow
def test_a_failing_sweep_member_is_one_line_naming_it(small_root, tmp_path, cache_root, capsys, monkeypatch):
    import skinseg.sweeps as sweeps

    params = tmp_path / "params"
    (params / "sweeps" / "bad").mkdir(parents=True)
    (params / "sweeps" / "bad" / "a_diverges.yaml").write_text("lr: 1.0e+6\nwarmup_epochs: 0\n")
    (params / "sweeps" / "bad" / "b_fine.yaml").write_text("lr: 3.0e-3\n")
    base = tmp_path / "base.yaml"
    base.write_text(f"data_root: {small_root}\nimage_size: 32\nbatch_size: 2\nepochs: 1\nbase_channels: 8\n"
                    "optimizer: sgd\nmomentum: 0.0\namp: 'off'\n")
    monkeypatch.setattr(sweeps, "PARAMS_DIR", params)
    err = one_line_error(capsys, ["sweep", "bad", "--base", str(base), "--runner", "cli", "--jobs", "2",
                                  "--out", str(tmp_path / "out")])
    assert "1 of 2 sweep runs failed: a_diverges:" in err and "a_diverges.log" in err
    assert "skinseg train: error:" in err  # the member's own one-line error, quoted


def test_a_failing_report_notebook_exits_2(tmp_path, capsys, monkeypatch):
    import skinseg.report as report
    from skinseg.errors import ReportError

    def fails(*a, **k):
        raise ReportError("notebook 03_train failed in cell 4: ValueError: bad; partly executed notebook: x.ipynb")

    monkeypatch.setattr(report, "run_notebooks", fails)
    line = one_line_error(capsys, ["report", "--no-pdf", "--out", str(tmp_path / "r")])
    assert "03_train failed in cell 4" in line


def test_ctrl_c_during_report_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import skinseg.report as report
    from skinseg.errors import ReportError

    def interrupted_kernel(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches the command...
        time.sleep(1)

    def dead_kernel(*a, **k):
        try:
            interrupted_kernel()
        except KeyboardInterrupt:  # ...and surfaces as the kernel's death (papermill's DeadKernelError)
            raise ReportError("the kernel running notebook 03_train died") from None

    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN under a background job of a shell
    for fake in (interrupted_kernel, dead_kernel):
        monkeypatch.setattr(report, "run_notebooks", fake)
        capsys.readouterr()
        assert main(["report", "--no-pdf", "--out", str(tmp_path / "r")]) == 130
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert err.startswith("skinseg report: interrupted;") and "run the same command again" in err
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def _train_then_ctrl_c(argv: list[str], runs: Path, after_epochs: int) -> tuple[int, str]:
    """``skinseg train`` in a child process, sent SIGINT once metrics.csv logs ``after_epochs`` epochs."""
    child = subprocess.Popen([sys.executable, "-m", "skinseg", "train", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(PROJ)})
    deadline = time.time() + 180
    while time.time() < deadline and child.poll() is None:
        logs = list(runs.glob("*/metrics.csv"))
        if logs and logs[0].read_text().count("\nepoch,") >= after_epochs:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    return child.returncode, err


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_exit_130_and_the_run_resumes(small_root, tmp_path, cache_root):
    from skinseg.runs import RunFolder

    params = tmp_path / "long.yaml"
    params.write_text(f"data_root: {small_root}\nimage_size: 32\nbatch_size: 2\nepochs: 500\nbase_channels: 8\n"
                      f"output_dir: {tmp_path / 'runs'}\nlog_every: 1\n")
    code, err = _train_then_ctrl_c(["--config", str(params)], tmp_path / "runs", after_epochs=1)
    assert code == 130, err[-2000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("skinseg ")]
    assert "Traceback" not in err and len(lines) == 1 and err.rstrip().endswith(lines[0])
    run = RunFolder(next((tmp_path / "runs").iterdir()))
    assert lines[0].startswith("skinseg train: interrupted at epoch") and f"load={run.last}" in lines[0]
    done = run.metrics()[1]["epoch"].tolist()
    # the rerun the line names goes on where the checkpoint left off, logging every epoch once
    code, err = _train_then_ctrl_c(["--config", str(params), "--set", f"load={run.last}"], tmp_path / "runs",
                                   after_epochs=len(done) + 2)
    assert code == 130, err[-2000:]
    epochs = run.metrics()[1]["epoch"].tolist()
    assert len(epochs) > len(done) and epochs == list(range(1, len(epochs) + 1))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("overrides, words", [(["device=cuda"], "no CUDA GPU"),
                                             (["amp=fp16", "device=cpu"], "fp16 needs a CUDA GPU")])
def test_no_gpu_is_a_one_line_error(small_root, tmp_path, cache_root, capsys, overrides, words):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\noutput_dir: {tmp_path / 'runs'}\nimage_size: 32\nepochs: 1\n")
    err = one_line_error(capsys, ["train", "--config", str(cfg)] + [a for o in overrides for a in ("--set", o)])
    assert words in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_read_only_folders_are_one_line_errors(small_root, tmp_path, tiny_run, tmpfs, capsys, monkeypatch):
    ro = tmpfs("ro", size="64k", read_only=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {small_root}\nimage_size: 32\nepochs: 1\n")
    err = one_line_error(capsys, ["train", "--config", str(cfg), "--set", f"output_dir={ro}"])
    assert "output_dir" in err and "not writable" in err
    best = str(RunFolder(tiny_run).best)
    images = str(small_root / "val" / SPLIT_FOLDERS["val"][0])
    err = one_line_error(capsys, ["predict", "--checkpoint", best, "--images", images, "--out", str(ro / "sub")])
    assert "not writable" in err
    import skinseg.predict.evaluate as ev

    called = []
    monkeypatch.setattr(ev, "evaluate_checkpoint", lambda *a, **k: called.append(1))
    err = one_line_error(capsys, ["evaluate", "--checkpoint", best, "--data", str(small_root),
                                   "--json", str(ro / "s.json")])
    assert "--json" in err and not called  # refused before the evaluation
    monkeypatch.setenv("SKINSEG_CACHE_DIR", str(ro / "cache"))
    err = one_line_error(capsys, ["cache", str(small_root), "--image-size", "32"])
    assert "cache folder" in err and "SKINSEG_CACHE_DIR" in err


def test_report_params_are_resolved_from_the_working_directory(tmp_path, capsys, monkeypatch):
    import skinseg.report as report

    err = one_line_error(capsys, ["report", "--params", "no/such.yaml"])
    assert "no/such.yaml" in err and "no such file" in err
    seen = {}
    monkeypatch.setattr(report, "build_report", lambda params, data, **k: seen.setdefault("params", params) and {
        "html": "x", "pdf": None, "seconds": 0.0})
    (tmp_path / "mine.yaml").write_text("epochs: 1\n")
    monkeypatch.chdir(tmp_path)
    main(["report", "--params", "mine.yaml", "--no-pdf"])
    assert Path(seen["params"]) == tmp_path / "mine.yaml"


def test_report_options_reach_build_report(tmp_path, monkeypatch):
    import skinseg.report as report
    from skinseg.paths import IMAGES_DIR, REPORTS_DIR

    calls = []
    monkeypatch.setattr(report, "build_report", lambda params, data, **k: calls.append(k) or {
        "html": "x", "pdf": None, "seconds": 0.0})
    monkeypatch.chdir(tmp_path)
    main(["report", "--no-pdf", "--out", "real", "--sweep", "isic_gpu", "--sweep-set", "epochs=1",
          "--sweep-set", "base_channels=16", "--update-images", "pics"])
    main(["report", "--no-pdf", "--update-images"])
    main(["report", "--no-pdf"])
    main(["report", "--no-pdf", "--no-sweep"])
    first, second, third, fourth = calls
    assert first["out_dir"] == tmp_path / "real" and first["images_dir"] == tmp_path / "pics"
    assert first["sweep"] == "isic_gpu" and first["sweep_overrides"] == {"epochs": 1, "base_channels": 16}
    assert second["images_dir"] == IMAGES_DIR and "sweep" not in second and "sweep_overrides" not in second
    assert third["images_dir"] is None and third["out_dir"] == REPORTS_DIR
    assert fourth["sweep"] is None and "sweep_overrides" not in fourth  # the real report's: no sweep trained

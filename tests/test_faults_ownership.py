"""The fault suite, ownership: a command never deletes or replaces a file or folder it did not create.

Each writer marks what it makes (``.skinseg-submission``, ``.skinseg-synthetic``, ``.skinseg-report``,
``.skinseg-sweep``; an ensemble file is a checkpoint of kind ``ensemble``) and refuses anything else, before any
work, with one line and exit 2.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from conftest import one_line_error, tiny_config, write_split
from skinseg.cli import main
from skinseg.data.isic import SPLIT_FOLDERS, mask_name
from skinseg.errors import DataError


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- synth ------------------------------------------------------------------------------------------
def test_synth_into_a_downloaded_dataset_is_refused_and_leaves_every_file(tmp_path, capsys):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 30)] * 5)  # the layout `skinseg download` writes
    (root / "train" / "my_notes.txt").write_text("mine")
    before = _tree(root)
    err = one_line_error(capsys, ["synth", str(root), "--n-train", "3", "--n-val", "0", "--n-test", "0"])
    assert "split folder" in err and str(root / "train") in err and "did not write" in err
    assert _tree(root) == before
    # a split the user's folder does not hold is no excuse either: nothing is written at all
    err = one_line_error(capsys, ["synth", str(root), "--n-train", "2", "--n-val", "2", "--n-test", "0"])
    assert _tree(root) == before and not (root / "val").exists()


def test_synth_replaces_only_what_it_wrote(tmp_path, capsys):
    root = tmp_path / "syn"
    args = ["synth", str(root), "--n-val", "0", "--n-test", "0", "--width-range", "64,80"]
    assert main([*args, "--n-train", "3"]) == 0
    images = root / "train" / SPLIT_FOLDERS["train"][0]
    assert len(list(images.glob("*.jpg"))) == 3
    assert main([*args, "--n-train", "2"]) == 0  # its own split: replaced whole
    assert len(list(images.glob("*.jpg"))) == 2
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]


def test_synth_onto_a_file_and_out_of_range_options_are_one_line_errors(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert "is a file" in one_line_error(capsys, ["synth", str(target)])
    assert target.read_text() == "keep me"
    assert "--seed" in one_line_error(capsys, ["synth", str(tmp_path / "s"), "--seed", "-1"])
    assert "--width-range" in one_line_error(capsys, ["synth", str(tmp_path / "s"), "--width-range", "10"])
    assert "--width-range" in one_line_error(capsys, ["synth", str(tmp_path / "s"), "--width-range", "10,5"])
    assert "--n-train" in one_line_error(capsys, ["synth", str(tmp_path / "s"), "--n-train", "-3"])
    assert not (tmp_path / "s").exists()


def test_the_embedded_dataset_never_deletes_a_folder_it_did_not_make(tmp_path):
    from skinseg.data.synth import ensure_synthetic

    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "thesis.tex").write_text("mine")
    with pytest.raises(DataError, match="no synth.json"):
        ensure_synthetic(root, n_train=2, n_val=1, n_test=0, width_range=[64, 64])
    assert (root / "thesis.tex").read_text() == "mine"


# ---- ensemble --out ---------------------------------------------------------------------------------
@pytest.fixture
def members(tmp_path, cache_root):
    from skinseg.train import train

    root = tmp_path / "isic"
    write_split(root, "train", [(48, 40)] * 6 + [(40, 48)] * 4, seed=1)
    write_split(root, "val", [(48, 40), (56, 42)], seed=2, first_id=100)
    common = dict(epochs=1, dev_fraction=0.3, dev_seed=0, val_split="dev")  # one dev split: tuned on dev
    runs = [train(tiny_config(root, tmp_path, run_name=n, seed=s, **common), progress=False)["run_dir"]
            for n, s in (("a", 1), ("b", 2))]
    return root, [Path(r) / "best.pt" for r in runs]


def test_ensemble_never_overwrites_a_member_a_checkpoint_or_a_mask(members, tmp_path, capsys, monkeypatch):
    import skinseg.predict.ensemble as ev

    root, (a, b) = members
    mask = root / "val" / SPLIT_FOLDERS["val"][1] / mask_name("ISIC_0000100", "streaks")
    other_best = tmp_path / "other_best.pt"
    other_best.write_bytes(a.read_bytes())  # another run's best.pt
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    worked = []
    monkeypatch.setattr(ev, "load_members", lambda *x: worked.append(1))  # the work must not even start
    cases = {a: "one of the member checkpoints", other_best: "not an ensemble file", mask: "ground-truth folder",
             notes: "not an ensemble file", tmp_path: "is a folder"}
    for out, words in cases.items():
        before = _tree(out) if out.is_dir() else out.read_bytes()
        err = one_line_error(capsys, ["ensemble", "--checkpoint", str(a), str(b), "--data", str(root),
                                      "--out", str(out)])
        assert words in err, err
        assert (_tree(out) if out.is_dir() else out.read_bytes()) == before
    assert not worked
    monkeypatch.undo()
    # its own file is replaced by a new ensemble
    out = tmp_path / "ens.pt"
    for _ in range(2):
        assert main(["ensemble", "--checkpoint", str(a), str(b), "--data", str(root), "--out", str(out)]) == 0


def test_ensemble_onto_a_read_only_folder_fails_before_the_work(members, tmpfs, capsys, monkeypatch):
    import skinseg.predict.ensemble as ev

    root, (a, b) = members
    ro = tmpfs("ro", size="64k", read_only=True)
    worked = []
    monkeypatch.setattr(ev, "load_members", lambda *x: worked.append(1))
    err = one_line_error(capsys, ["ensemble", "--checkpoint", str(a), str(b), "--data", str(root),
                                  "--out", str(ro / "ens.pt")])
    assert "not writable" in err and not worked


# ---- report, sweep, --json, download --------------------------------------------------------------
def test_report_and_sweep_refuse_a_folder_of_someone_elses(tmp_path, capsys, monkeypatch):
    import skinseg.report as report

    ran = []
    monkeypatch.setattr(report, "run_notebooks", lambda *a, **k: ran.append(1))
    mine = tmp_path / "papers"
    mine.mkdir()
    (mine / "report.html").write_text("my own report")
    err = one_line_error(capsys, ["report", "--out", str(mine), "--no-pdf"])
    assert "--out" in err and "did not write" in err and not ran
    err = one_line_error(capsys, ["report", "--update-images", str(mine), "--no-pdf"])
    assert "--update-images" in err and not ran
    err = one_line_error(capsys, ["sweep", "architectures", "--out", str(mine), "--set", "epochs=1"])
    assert "sweep's --out" in err
    assert _tree(mine) == {"report.html": hashlib.sha1(b"my own report").hexdigest()}


def test_json_outputs_never_replace_a_file_that_is_not_json(small_root, tmp_path, capsys):
    mask = small_root / "val" / SPLIT_FOLDERS["val"][1] / mask_name("ISIC_0000100", "streaks")
    picture = tmp_path / "figure.png"
    picture.write_bytes(mask.read_bytes())
    for target, words in ((mask, "ground-truth folder"), (picture, "not a JSON file")):
        before = target.read_bytes()
        err = one_line_error(capsys, ["stats", str(small_root), "--json", str(target)])
        assert words in err and target.read_bytes() == before
    earlier = tmp_path / "stats.json"
    earlier.write_text(json.dumps({"old": 1}))
    assert main(["stats", str(small_root), "--image-size", "32", "--json", str(earlier)]) == 0
    assert "train" in json.loads(earlier.read_text())


def test_download_leaves_a_non_zip_it_did_not_download(tmp_path):
    from skinseg.data.download import DownloadError, extract_zip

    zip_path = tmp_path / ".downloads" / "ISIC2018_Task2_Validation_GroundTruth.zip"
    zip_path.parent.mkdir()
    zip_path.write_bytes(b"the user's own file")
    with pytest.raises(DownloadError, match="not downloaded by this run"):
        extract_zip(zip_path, tmp_path / "val", progress=False, fetched=False)
    assert zip_path.read_bytes() == b"the user's own file"
    with pytest.raises(DownloadError, match="deleted it"):  # one this run fetched is its own
        extract_zip(zip_path, tmp_path / "val", progress=False, fetched=True)
    assert not zip_path.exists()
    assert not os.listdir(tmp_path / ".downloads")

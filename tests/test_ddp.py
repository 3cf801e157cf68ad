"""torchrun with 2 CPU processes on gloo: identical weights on both ranks, one run folder, reduced metrics."""
import csv
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from conftest import write_split

RUNNER = textwrap.dedent('''
    import os, sys, torch
    from skinseg.train import loop

    real_fit = loop.Trainer.fit

    def fit(self):
        out = real_fit(self)
        torch.save(self.model.state_dict(), os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
        return out

    loop.Trainer.fit = fit
    from skinseg.cli import main
    sys.exit(main(sys.argv[2:]))
''')


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    root = tmp_path / "isic"
    write_split(root, "train", [(40, 32)] * 8, seed=1)
    write_split(root, "val", [(40, 32), (48, 36), (40, 30)], seed=2, first_id=100)  # odd count: no padding
    cfg = {"data_root": str(root), "image_size": 32, "batch_size": 2, "epochs": 2, "base_channels": 8,
           "output_dir": str(tmp_path / "runs"), "device": "cpu", "tune_thresholds": False, "aug_rotate_p": 0.5,
           "log_every": 1}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = {**os.environ, "SKINSEG_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    # build the cache once so the two ranks do not race to build it
    from skinseg.data.cache import build_cache
    from skinseg.data.isic import find_splits

    os.environ["SKINSEG_CACHE_DIR"] = env["SKINSEG_CACHE_DIR"]
    try:
        for split in find_splits(root).values():
            build_cache(split, 32, progress=False)
    finally:
        os.environ.pop("SKINSEG_CACHE_DIR")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(tmp_path / "runner.py"), str(tmp_path), "train", "--config", str(tmp_path / "cfg.yaml")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1  # only rank 0 writes
    with open(tmp_path / "runs" / runs[0] / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(steps) == 4 and len(epochs) == 2  # 8 images / 2 ranks / batch 2 = 2 steps per epoch
    # the logged validation score is the one of all 3 images, reduced across the ranks
    from skinseg.predict.evaluate import evaluate_checkpoint

    os.environ["SKINSEG_CACHE_DIR"] = env["SKINSEG_CACHE_DIR"]
    try:
        single = evaluate_checkpoint(tmp_path / "runs" / runs[0] / "last.pt", root, "val", tuned=False,
                                     device="cpu")
    finally:
        os.environ.pop("SKINSEG_CACHE_DIR")
    assert float(epochs[-1]["val_jaccard"]) == pytest.approx(single.scores.overall, abs=1e-9)

"""`compile: true` (torch.compile, inductor) trains and resumes exactly on the CPU."""
import os
import shutil

import pandas as pd
import pytest
import torch

from conftest import assert_same_weights, crash_and_resume, tiny_config
from skinseg.checkpoint import load_checkpoint
from skinseg.train import train


def _cfg(root, tmp_path, **kw):
    """conftest's tiny config, compiled, on the CPU in fp32."""
    return tiny_config(root, tmp_path, **{**dict(channels_last=False, compile=True, device="cpu",
                                                 amp="off"), **kw})


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="inductor needs a C compiler (cc)")
def test_compiled_training_resumes_bit_identical(small_root, tmp_path, cache_root, monkeypatch):
    torch._dynamo.reset()
    straight = train(_cfg(small_root, tmp_path, run_name="straight"), progress=False)
    assert straight["epochs_run"] == 2
    tuned = pd.read_csv(os.path.join(straight["run_dir"], "metrics.csv")).query("kind == 'epoch'")["val_tuned_jaccard"]
    assert len(tuned) == 2 and straight["best_score"] == pytest.approx(tuned.max())  # the compiled model validated
    resumed = crash_and_resume(lambda **kw: _cfg(small_root, tmp_path, **kw), tmp_path / "runs", monkeypatch)
    assert resumed["epochs_run"] == 2
    weights = load_checkpoint(os.path.join(straight["run_dir"], "last.pt"))["model"]
    assert not any(k.startswith("_orig_mod") for k in weights)  # checkpoints hold the plain model's names
    assert_same_weights(straight["run_dir"], resumed["run_dir"])

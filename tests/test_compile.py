"""`compile: true` (torch.compile, inductor) trains and resumes exactly on the CPU."""
import os

import pytest
import torch

from skinseg.checkpoint import load_checkpoint
from skinseg.config import Config
from skinseg.train import train


def _cfg(root, tmp_path, **kw):
    return Config(**{**dict(data_root=str(root), image_size=32, batch_size=2, epochs=2, base_channels=8,
                            model="unet", output_dir=str(tmp_path / "runs"), optimizer="adam", lr=3e-3,
                            channels_last=False, compile=True, device="cpu", amp="off"), **kw})


@pytest.mark.slow
def test_compiled_training_resumes_bit_identical(small_root, tmp_path, cache_root, monkeypatch):
    from skinseg.train.loop import Trainer

    torch._dynamo.reset()
    straight = train(_cfg(small_root, tmp_path, run_name="straight"), progress=False)
    assert straight["epochs_run"] == 2 and straight["best_score"] >= 0
    real_epoch = Trainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(small_root, tmp_path, run_name="split"), progress=False)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    run_dir = next(p for p in (tmp_path / "runs").iterdir() if p.name.endswith("split"))
    resumed = train(_cfg(small_root, tmp_path, run_name="split", load=str(run_dir / "last.pt")), progress=False)
    assert resumed["epochs_run"] == 2
    w1 = load_checkpoint(os.path.join(straight["run_dir"], "last.pt"))["model"]
    w2 = load_checkpoint(os.path.join(resumed["run_dir"], "last.pt"))["model"]
    assert not any(k.startswith("_orig_mod") for k in w1)  # checkpoints hold the plain model's names
    for k in w1:
        assert torch.equal(w1[k], w2[k]), k

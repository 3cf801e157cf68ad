"""Runtime choices shared by training and inference: device, AMP (and its autocast context), seeding, and
torchrun/DDP setup. Inference imports this, never ``skinseg.train``."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from skinseg.config import Config
from skinseg.errors import EnvironmentProblem


@dataclass
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None
    use_scaler: bool
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("device: cuda was asked for but no CUDA GPU is visible to torch "
                                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                                 "use device: auto or cpu")
    if name == "mps" and not _mps_available():
        raise EnvironmentProblem("device: mps was asked for but this machine has no Apple GPU; use device: auto or cpu")
    return torch.device(name)


def pick_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed). ``auto``: bf16 where the GPU supports it,
    fp16 with a scaler on older GPUs, off on CPU."""
    if mode == "off":
        return None, False
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if mode == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise EnvironmentProblem(f"amp: fp16 needs a CUDA GPU (it uses a GradScaler) but the device is {device.type}; "
                                 "use amp: bf16, off or auto on this device")
    return torch.float16, True


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def has_depthwise_convolutions(model: torch.nn.Module) -> bool:
    """EfficientNet and ConvNeXt encoders: depthwise convolutions, which bf16 autocast slows down on CPUs."""
    return any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in model.modules())


def amp_for_model(amp_dtype: torch.dtype | None, device: torch.device,
                  model: torch.nn.Module) -> tuple[torch.dtype | None, str | None]:
    """The autocast dtype to use for ``model`` (and why it differs from ``amp_dtype``, else None).

    On a CPU bf16 is kept only where it can be faster: a CPU with native bf16 and a model without depthwise
    convolutions. ``benchmarks/train_step.py`` measured bf16 10-21x slower than fp32 on a CPU without native bf16
    (all three models tried), and the lite0 U-Net about 9x slower even with AVX-512 BF16 (measured outside the
    team), so elsewhere the model runs in fp32.
    """
    if device.type != "cpu" or amp_dtype != torch.bfloat16:
        return amp_dtype, None
    if not cpu_has_native_bf16():
        return None, "amp: bf16 -> fp32 (this CPU has no native bf16: AVX512-BF16 or AMX; bf16 would be slower)"
    if has_depthwise_convolutions(model):
        return None, "amp: bf16 -> fp32 (depthwise convolutions run several times slower in bf16 on a CPU)"
    return amp_dtype, None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_runtime(cfg: Config) -> Runtime:
    """Device, AMP and, under torchrun (WORLD_SIZE > 1), the process group: nccl on CUDA, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend=backend)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
    amp_dtype, use_scaler = pick_amp(cfg.amp, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    return Runtime(device, amp_dtype, use_scaler, rank, world, local_rank)


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """torch.autocast for ``dtype`` on ``device``, or a no-op when AMP is off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)

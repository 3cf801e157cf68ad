"""Progress bars: tqdm where someone watches them, nothing where a build records the output.

A bar in an executed notebook is a wall of carriage-return frames in the report. The report and sweep builds run
their notebooks with ``SKINSEG_PROGRESS=0`` in the environment (:func:`quiet`), which every bar of the package
obeys; the per-epoch and status lines (``tqdm.write``) stay.
"""
from __future__ import annotations

import contextlib
import os

from tqdm.auto import tqdm

ENV = "SKINSEG_PROGRESS"


def enabled(requested: bool = True) -> bool:
    """Whether a bar the caller asked for is shown: not when ``SKINSEG_PROGRESS=0``."""
    return bool(requested) and os.environ.get(ENV, "1").strip() != "0"


def bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)``, disabled unless :func:`enabled` (``show``)."""
    return tqdm(iterable, disable=not enabled(show), **kwargs)


@contextlib.contextmanager
def quiet():
    """No bars in this process and the kernels and processes it starts, for the duration."""
    before = os.environ.get(ENV)
    os.environ[ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before

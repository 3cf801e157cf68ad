"""One home per concept: each list of choices is defined once and the code that dispatches on it covers exactly it;
inference never imports training; the run folder's file names live in one module; models initialise themselves."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skinseg import choices

PROJ = Path(__file__).resolve().parents[1]


def test_models_losses_tta_optimizers_inits_resize_modes_are_the_choices():
    from skinseg.data import cache
    from skinseg.predict.decisions import TTA_FLIPS
    from skinseg.losses import LOSS_FUNCTIONS
    from skinseg.models import INIT_SCHEMES, MODELS
    from skinseg.train.optim import _TIMM_OPT

    assert tuple(MODELS) == choices.MODELS
    assert tuple(LOSS_FUNCTIONS) == choices.LOSSES
    assert tuple(TTA_FLIPS) == choices.TTA_MODES
    assert tuple(_TIMM_OPT) == choices.OPTIMIZERS
    assert INIT_SCHEMES is choices.INITS and cache.RESIZE_MODES is choices.RESIZE_MODES


@pytest.mark.parametrize("scheduler", choices.SCHEDULERS)
def test_every_scheduler_choice_builds(scheduler):
    from skinseg.config import Config
    from skinseg.train.optim import Schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = Schedule(Config(scheduler=scheduler, epochs=2), opt, 3)
    schedule.after_batch()
    schedule.after_epoch(0.5)
    assert opt.param_groups[0]["lr"] > 0


def test_the_command_line_offers_the_same_choices():
    from skinseg.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for command in ("evaluate", "predict", "ensemble"):
        tta = next(a for a in sub.choices[command]._actions if a.dest == "tta")
        assert tuple(tta.choices) == choices.TTA_MODES
    mode = next(a for a in sub.choices["cache"]._actions if a.dest == "resize_mode")
    assert tuple(mode.choices) == choices.RESIZE_MODES


def test_inference_and_the_command_line_do_not_import_training():
    code = ("import sys, skinseg.cli, skinseg.predict.evaluate, skinseg.predict.submission, skinseg.predict.collect, "
            "skinseg.predict.ensemble, skinseg.widgets, skinseg.checkpoint, skinseg.scoring, skinseg.notebook; print(sorted(m for m in sys.modules if m.startswith('skinseg.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJ,
                         env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_run_folder_file_names_appear_in_one_module():
    from skinseg import runs

    names = [runs.CONFIG_FILE, runs.METRICS_FILE, runs.BEST_CHECKPOINT, runs.LAST_CHECKPOINT, runs.END_MARKER]
    sources = [*(PROJ / "skinseg").rglob("*.py"), *(PROJ / "notebooks").glob("*.ipynb"),
               *(p for p in (PROJ / "benchmarks").glob("*") if p.is_file())]
    where = {}
    for path in sources:
        text = path.read_text()
        for name in names:
            if re.search(rf"[\"']{re.escape(name)}[\"']", text):
                where.setdefault(name, set()).add(path.relative_to(PROJ).as_posix())
    assert where == {name: {"skinseg/runs.py"} for name in names}


@pytest.mark.parametrize("name", choices.MODELS)
def test_a_model_class_and_create_model_start_the_same(name):
    from skinseg.models import MODELS, create_model

    options = {"encoder": "convnext_atto"} if name == "unet-timm-attention" else {"base_channels": 8}
    direct = MODELS[name](3, 5, **options)
    built = create_model(name, **options)
    prior = math.log(0.05 / 0.95)
    torch.testing.assert_close(direct.segmentation_head.bias, torch.full((5,), prior))
    torch.testing.assert_close(built.segmentation_head.bias, torch.full((5,), prior))
    untouched = MODELS[name](3, 5, init="none", **options)
    assert not torch.allclose(untouched.segmentation_head.bias, torch.full((5,), prior))


def test_every_error_class_lives_in_errors_and_is_a_skinseg_error():
    """No module but skinseg/errors.py defines an exception class (the download retry signal, private, aside), and
    every class there is a SkinsegError, but Ctrl-C's Interrupted and the warning class."""
    import ast
    import inspect

    from skinseg import errors

    outside = []
    for path in (PROJ / "skinseg").rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and any(
                    re.search(r"Error|Exception|Problem|Mismatch|NotFound|Interrupt", ast.unparse(b))
                    for b in node.bases):
                outside.append(f"{path.relative_to(PROJ)}:{node.name}")
    assert not outside, f"error classes outside skinseg/errors.py: {outside}"
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 15
    for cls in classes:
        if cls not in (errors.Interrupted, errors.SkinsegWarning):
            assert issubclass(cls, errors.SkinsegError), cls
    # the old import paths still work
    from skinseg.data.download import DownloadError
    from skinseg.models import PretrainedWeightsError, UnknownModelError

    assert DownloadError is errors.DownloadError and UnknownModelError is errors.UnknownModelError
    assert PretrainedWeightsError is errors.PretrainedWeightsError


def _sources(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(PROJ)): p.read_text() for p in (PROJ / "skinseg").rglob("*.py")
            if str(p.relative_to(PROJ)) not in exclude}


def test_one_home_each_for_suggestions_temp_names_rank_sums_ema_and_synthetic_defaults():
    """'did you mean' is skinseg.errors.did_you_mean; temporary names are skinseg.files.temp_sibling; sums over DDP
    ranks go through skinseg.metrics.sum_over_ranks (BatchNorm buffers averaged in place aside); the EMA is timm's
    ModelEmaV3; the synthetic generator's defaults are skinseg.paths.SYNTH_DEFAULTS."""
    checks = {"difflib": ("skinseg/errors.py",), "mkdtemp": (), ".tmp-": ("skinseg/files.py",),
              "distributed.all_reduce(": ("skinseg/metrics.py", "skinseg/train/loop.py"), "AveragedModel": (),
              "n_train\": 160": ("skinseg/paths.py",)}
    for needle, homes in checks.items():
        found = sorted(name for name, text in _sources().items() if needle in text)
        assert set(found) <= set(homes), f"{needle!r} outside its home {homes}: {found}"
    loop = (PROJ / "skinseg" / "train" / "loop.py").read_text()
    assert loop.count("distributed.all_reduce(") == 1 and "torch.distributed.all_reduce(buf)" in loop  # BatchNorm
    from skinseg.cli import build_parser
    from skinseg.data.synth import write_synthetic
    from skinseg.paths import SYNTH_DEFAULTS

    args = build_parser().parse_args(["synth", "out"])
    assert (args.n_train, args.n_val, args.n_test, args.seed) == tuple(
        SYNTH_DEFAULTS[k] for k in ("n_train", "n_val", "n_test", "seed"))
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(write_synthetic).parameters.items()}
    assert all(defaults[k] == SYNTH_DEFAULTS[k] for k in ("n_train", "n_val", "n_test", "seed"))


def test_the_config_is_a_pydantic_model_with_a_description_for_every_key():
    import pydantic

    from skinseg.config import Config, field_choices, field_range

    assert issubclass(Config, pydantic.BaseModel) and Config.model_config["extra"] == "forbid"
    assert all(info.description for info in Config.model_fields.values())
    assert field_choices("optimizer") == choices.OPTIMIZERS and field_choices("tta") == choices.TTA_MODES
    assert field_range("aug_flip_p") == (0.0, 1.0, False, False) and field_range("lr") == (0.0, None, True, False)
    assert field_range("pos_weight") == (0.0, None, True, False)  # of every element


def test_tests_share_helpers_through_conftest_only():
    """No test file imports another (helpers live in tests/conftest.py), and the tiny config is defined once."""
    for path in (PROJ / "tests").glob("test_*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) test_", text, re.M), f"{path.name} imports a test file"
        tiny = "image_size=32, batch_size=2, " + "epochs=2, base_channels=8"  # conftest.tiny_config's
        assert tiny not in text, f"{path.name} spells out the tiny config: use conftest.tiny_config"


def test_prediction_has_one_package_and_each_of_its_concepts_one_definition():
    """The prediction loop, evaluation, the decision rule, submissions, the ensemble (model and file) and the figures'
    prediction sets are defined in skinseg/predict/ only, each once; the mask reader in skinseg/data/masks.py; the
    official formula in skinseg/scoring.py; the former modules are gone."""
    import ast

    homes = {"predict_batches": "skinseg/predict/loop.py", "evaluate_model": "skinseg/predict/loop.py",
             "DecisionRule": "skinseg/predict/decisions.py", "decide": "skinseg/predict/decisions.py",
             "load_for_inference": "skinseg/predict/load.py", "evaluate_checkpoint": "skinseg/predict/evaluate.py",
             "write_submission": "skinseg/predict/submission.py", "predict_folder": "skinseg/predict/submission.py",
             "ModelEnsemble": "skinseg/predict/ensemble.py", "ensemble_from_state": "skinseg/predict/ensemble.py",
             "ensemble_state": "skinseg/predict/ensemble.py", "build_ensemble": "skinseg/predict/ensemble.py",
             "PredictionSet": "skinseg/predict/collect.py", "read_mask": "skinseg/data/masks.py",
             "MaskReader": "skinseg/data/masks.py", "scores_from_counts": "skinseg/scoring.py",
             "normalized_counts": "skinseg/scoring.py", "Scores": "skinseg/scoring.py",
             "score_submission": "skinseg/scoring.py"}
    found: dict[str, list[str]] = {}
    for name, text in _sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in homes:
                found.setdefault(node.name, []).append(name)
    assert found == {name: [home] for name, home in homes.items()}
    for gone in ("inference", "evaluation", "predictions", "ensemble"):
        assert not (PROJ / "skinseg" / f"{gone}.py").exists()


def test_thresholds_and_gates_are_read_from_a_checkpoint_in_one_place():
    """Only DecisionRule (skinseg/predict/decisions.py) turns a checkpoint's stored thresholds and gates into
    decisions; elsewhere they are written (training, the ensemble) or checked (checkpoint.check_for_inference)."""
    reads = re.compile(r"state\[\"(thresholds|gates|thresholds_per_attribute)\"\]|state\.get\(\"thresholds")
    found = sorted(name for name, text in _sources().items() if reads.search(text))
    assert found == ["skinseg/predict/decisions.py"]


def test_the_model_class_says_whether_it_has_a_pretrained_encoder():
    """The class flag, not a model name, decides: exactly the models that take a timm ``encoder`` have one, and
    the config asks the class."""
    from skinseg.config import Config
    from skinseg.models import MODELS, model_from_config
    from skinseg.models.registry import model_options

    assert {name for name, cls in MODELS.items() if cls.pretrained_encoder} == {
        name for name in MODELS if "encoder" in model_options(name)} == {"unet-timm-attention"}
    assert Config(model="unet-timm-attention", pretrained=True).uses_pretrained_encoder
    assert not Config(model="unet-timm-attention").uses_pretrained_encoder
    assert not Config(model="unet-attention", pretrained=True).uses_pretrained_encoder
    assert 'self.model == "' not in _sources()["skinseg/config.py"]  # no model decided by its name
    # the former name still builds the same model, from a config or a checkpoint's stored config
    cfg = Config.from_dict({"model": "unet-convnext-attention", "encoder": "convnext_atto"})
    assert cfg.model == "unet-timm-attention"
    assert type(model_from_config(cfg)) is MODELS["unet-timm-attention"]


def test_scoring_a_submission_loads_neither_torch_nor_pandas(tmp_path):
    """`skinseg score` imports what it uses (numpy, OpenCV, PIL): run as a command on a small split, it scores
    and leaves torch, pandas, scipy and pydantic unloaded."""
    import shutil

    from conftest import write_split
    from skinseg.data.isic import SPLIT_FOLDERS

    write_split(tmp_path / "isic", "val", [(40, 30), (24, 24), (33, 20)], seed=1)
    sub = tmp_path / "sub"
    shutil.copytree(tmp_path / "isic" / "val" / SPLIT_FOLDERS["val"][1], sub)  # the truth as a submission
    code = ("import sys; from skinseg.cli import main; rc = main(['score', '--submission', sys.argv[1], '--data', "
            "sys.argv[2], '--split', 'val']); print(rc, sorted(m for m in ('torch', 'pandas', 'scipy', 'pydantic', 'timm') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(sub), str(tmp_path / "isic")], capture_output=True,
                         text=True, cwd=PROJ, env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "0 []"
    assert "overall (micro-averaged Jaccard, the leaderboard score): 1.0000" in lines
    assert lines[0].split() == ["jaccard", "dice"] and lines[1].startswith("pigment_network")

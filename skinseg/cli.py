"""The ``skinseg`` command: one subcommand per verb, each a thin call into the package.

Paths typed here are the user's: each is resolved from the working directory before the package sees it
(paths inside params YAMLs hang off the project root, as the config documents). A user error is one line on
stderr and exit 2; Ctrl-C is one line and exit 130; a traceback means a bug.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from pathlib import Path

from skinseg.choices import DEVICES, OPERATING_POINTS, RESIZE_MODES, SPLIT_NAMES, TTA_MODES
from skinseg.paths import SYNTH_DEFAULTS

# config keys that hold paths: given with --set, they are the user's too (from the working directory)
PATH_KEYS = ("data_root", "load", "pretrained_path", "output_dir")
# what Ctrl-C leaves, per command, when the command itself said nothing more precise
INTERRUPTED = {
    "train": "nothing is damaged; run it again (a run folder with a last.pt resumes with --set load=RUN/last.pt)",
    "report": "nothing is damaged; run the same command again: finished training runs are reused",
    "sweep": "nothing is damaged; run the same command again: finished runs are skipped",
    "download": "nothing is damaged; run the same command again: it resumes the download",
}


def user_path(path: str | None) -> Path | None:
    """A path typed on the command line, resolved from the working directory."""
    return Path(path).expanduser().resolve() if path else None


CHECKPOINT_HELP = "a best.pt / last.pt, an ensemble file, or a run folder (the checkpoint its checkpoint_rule names)"


def checkpoint_arg(path: str) -> Path:
    """A ``--checkpoint`` typed on the command line: a checkpoint file, or a run folder, which stands for the
    checkpoint its ``checkpoint_rule`` names (best.pt or last.pt; said on stderr)."""
    import yaml

    from skinseg.errors import CheckpointError
    from skinseg.runs import RunFolder

    given = user_path(path)
    if not given.is_dir():
        return given
    run = RunFolder(given)
    if not run.config_file.is_file():
        raise CheckpointError(f"--checkpoint {path}: a folder but not a run folder (no {run.config_file.name}); "
                              "pass a run folder, or its best.pt / last.pt")
    try:
        chosen = run.chosen
    except (yaml.YAMLError, AttributeError, OSError):
        raise CheckpointError(f"--checkpoint {path}: its {run.config_file.name} is unreadable; pass one of its "
                              "checkpoints (best.pt / last.pt)") from None
    print(f"{path}: checkpoint_rule {chosen.stem!r} -> {chosen.name}", file=sys.stderr)  # the rule names the file
    return chosen


def _user_overrides(items: list[str] | None) -> dict:
    """``--set`` values, with the relative paths among them resolved from the working directory."""
    from skinseg.config import parse_overrides

    overrides = parse_overrides(items)
    for key in PATH_KEYS:
        if isinstance(overrides.get(key), str) and overrides[key]:
            overrides[key] = str(user_path(overrides[key]))
    return overrides


def _cmd_synth(args: argparse.Namespace) -> int:
    from skinseg.data.synth import write_synthetic
    from skinseg.errors import ConfigError

    try:
        lo, hi = (int(v) for v in args.width_range.split(","))
    except ValueError:
        raise ConfigError(f"--width-range {args.width_range!r}: two whole numbers low,high, e.g. 300,900") from None
    counts = write_synthetic(user_path(args.out), n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                             seed=args.seed, width_range=(lo, hi))
    print(json.dumps({"out": str(user_path(args.out)), **counts}))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from skinseg.data.download import BASE_URL, download_isic

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    result = download_isic(user_path(args.root), splits, base_url=args.base_url or BASE_URL,
                           progress=not args.no_progress, timeout=args.timeout)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from skinseg.data.stats import dataset_stats, stats_table

    json_path = _json_target(args.json)
    stats = dataset_stats(user_path(args.root), image_size=args.image_size, resize_mode=args.resize_mode)
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 250):
        print(stats_table(stats).T.to_string())
    print(json.dumps(stats, indent=2))
    if json_path:
        _write_json(json_path, stats)
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from skinseg.data.cache import build_cache
    from skinseg.data.isic import find_splits

    for name, split in find_splits(user_path(args.root)).items():
        cache = build_cache(split, args.image_size, args.resize_mode)
        print(f"{name}: {len(cache)} images -> {cache.path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from skinseg.config import Config
    from skinseg.train import train

    cfg = Config.from_yaml(user_path(args.config), _user_overrides(args.set))
    summary = train(cfg)
    summary.pop("history")
    print(json.dumps(summary, indent=2))
    return 0


def _json_target(path: str | None) -> Path | None:
    """Check that a --json file can be written before the work that fills it."""
    from skinseg.files import check_json_target

    return check_json_target(path, "--json") if path else None


def _write_json(path: str | Path, data) -> None:
    from skinseg.files import write_atomic

    write_atomic(Path(path), json.dumps(data, indent=2))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from skinseg.predict.evaluate import evaluate_checkpoint, evaluation_json, operating_points_table

    json_path = _json_target(args.json)
    checkpoint = checkpoint_arg(args.checkpoint)
    result = evaluate_checkpoint(checkpoint, user_path(args.data), args.split, tta=args.tta, tuned=not args.untuned,
                                 device=args.device)
    if args.untuned:
        print(result.scores.table())
        print(f"overall (micro-averaged Jaccard, the leaderboard score) at threshold 0.5: {result.scores.overall:.4f}")
    else:
        print(operating_points_table(result, checkpoint).to_string(float_format=lambda v: f"{v:.4f}"))
        print(f"overall (micro-averaged Jaccard, the leaderboard score): {result.scores.overall:.4f}")
    auc = result.presence_auc()
    print("presence AUC (image level): " + ", ".join(f"{a} {v:.3f}" for a, v in auc.items()))
    if json_path:
        _write_json(json_path, evaluation_json(result, checkpoint, args.split) if not args.untuned else
                    {**result.scores.to_official_json(), "split": args.split, "presence_auc": auc})
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from skinseg.predict.ensemble import build_ensemble

    summary = build_ensemble([checkpoint_arg(p) for p in args.checkpoint], user_path(args.data), user_path(args.out),
                             tune_split=args.tune_split, tta=args.tta, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from skinseg.predict.submission import predict_folder

    n = predict_folder(checkpoint_arg(args.checkpoint), user_path(args.images), user_path(args.out), tta=args.tta,
                       device=args.device, operating_point=args.operating_point)
    print(f"wrote {n} mask files to {args.out}")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from skinseg.scoring import score_submission  # torch-free: the command loads numpy, OpenCV and PIL only

    json_path = _json_target(args.json)
    scores = score_submission(user_path(args.submission), user_path(args.data), args.split)
    print(scores.table())
    print(f"overall (micro-averaged Jaccard, the leaderboard score): {scores.overall:.4f}")
    if json_path:
        _write_json(json_path, scores.to_official_json())
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from skinseg.errors import ConfigError
    from skinseg.sweeps import run_sweep

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: runs at once, 1 or more")
    table = run_sweep(args.name, base=user_path(args.base), overrides=_user_overrides(args.set),
                      out_dir=user_path(args.out), runner=args.runner, jobs=args.jobs)
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from skinseg.config import parse_overrides
    from skinseg.errors import ConfigError
    from skinseg.paths import IMAGES_DIR, PARAMS_DIR, REPORTS_DIR
    from skinseg.report import build_report

    params = PARAMS_DIR / "demo.yaml"
    if args.params:  # relative to the working directory, as `train --config`
        params = Path(args.params).expanduser().resolve()
        if not params.is_file():
            raise ConfigError(f"--params {args.params}: no such file ({params}); e.g. --params params/isic.yaml")
    data = str(Path(args.data).expanduser().resolve()) if args.data else None
    if args.no_sweep and (args.sweep or args.sweep_set):
        raise ConfigError("--no-sweep: given with --sweep/--sweep-set; keep one (--no-sweep trains no sweep)")
    options = {"sweep": None} if args.no_sweep else {"sweep": args.sweep} if args.sweep else {}
    if args.sweep_set:
        options["sweep_overrides"] = parse_overrides(args.sweep_set)
    images = None if args.update_images is None else Path(args.update_images or IMAGES_DIR).expanduser().resolve()
    out = Path(args.out).expanduser().resolve() if args.out else REPORTS_DIR
    result = build_report(params, data, out_dir=out, pdf=not args.no_pdf, images_dir=images, **options)
    print(f"report: {result['html']}" + (f"\npdf: {result['pdf']}" if result["pdf"] else ""))
    print(f"built in {result['seconds']:.0f} s")
    return 0


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 8 or value % 8:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in px: a multiple of 8, such as 256")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (what is wrong and where --help is), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="skinseg", description="ISIC 2018 Task 2 lesion-attribute segmentation with U-Net variants."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("synth", help="write the synthetic ISIC-like dataset in the official layout")
    p.add_argument("out", help="output folder")
    p.add_argument("--n-train", type=int, default=SYNTH_DEFAULTS["n_train"])
    p.add_argument("--n-val", type=int, default=SYNTH_DEFAULTS["n_val"])
    p.add_argument("--n-test", type=int, default=SYNTH_DEFAULTS["n_test"])
    p.add_argument("--seed", type=int, default=SYNTH_DEFAULTS["seed"])
    p.add_argument("--width-range", default=",".join(map(str, SYNTH_DEFAULTS["width_range"])),
                   help="min,max image width in px (4:3 images)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("download", help="download and extract the official ISIC 2018 Task 2 zips (resumable)")
    p.add_argument("root", help="data root; zips go to ROOT/.downloads, folders to ROOT/<split>/")
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits (default: train,val,test)")
    p.add_argument("--base-url", default=None,
                   help="folder URL of the zips (default: https://isic-challenge-data.s3.amazonaws.com/2018/)")
    p.add_argument("--timeout", type=_positive, default=60.0,
                   help="seconds to wait for the server per connect or read")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or status lines")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("stats", help="per-split image count, attribute prevalence, pixel fraction, RGB mean/std")
    p.add_argument("root", help="data root holding the official ISIC 2018 folders")
    p.add_argument("--image-size", type=_image_size, default=256)
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default="stretch")
    p.add_argument("--json", help="also write the statistics to this JSON file")
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser("cache", help="build the preprocessing cache of every split below ROOT")
    p.add_argument("root")
    p.add_argument("--image-size", type=_image_size, default=256)
    p.add_argument("--resize-mode", choices=RESIZE_MODES, default="stretch")
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser("train", help="train one config; writes a run folder with checkpoints and metrics.csv")
    p.add_argument("--config", required=True, help="params YAML, e.g. params/demo.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="official ISIC 2018 Task 2 score of a checkpoint on a split")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--split", default="val", choices=SPLIT_NAMES)
    p.add_argument("--tta", default=None, choices=TTA_MODES, help="default: the checkpoint's")
    p.add_argument("--untuned", action="store_true", help="threshold 0.5 instead of the tuned thresholds")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", help="write the scores here: the official scorer's shape at the micro operating "
                                  "point, then both operating points and the presence AUC")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("ensemble", help="average the probabilities of several checkpoints; tune thresholds again")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="two or more best.pt / last.pt files or run folders (each its checkpoint_rule's)")
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--tune-split", default="dev", choices=("dev", "val"),
                   help="split to tune the ensemble's thresholds on (dev: the members' common hold-out of train)")
    p.add_argument("--tta", default="none", choices=TTA_MODES)
    p.add_argument("--out", required=True, help="ensemble file to write (takes the place of a checkpoint)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("predict", help="write a challenge submission (one PNG per image and attribute)")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--images", required=True, help="folder of ISIC_<id>.jpg images")
    p.add_argument("--out", required=True, help="output folder for ISIC_<id>_attribute_<name>.png")
    p.add_argument("--tta", default=None, choices=TTA_MODES)
    p.add_argument("--operating-point", default="micro", choices=OPERATING_POINTS,
                   help="thresholds tuned for the overall score (micro, the leaderboard's; default) or each "
                        "attribute for its own Jaccard (per_attribute)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("score", help="official score of a submission folder against a split's ground truth")
    p.add_argument("--submission", required=True, help="folder of ISIC_<id>_attribute_<name>.png")
    p.add_argument("--data", required=True, help="data root")
    p.add_argument("--split", default="val", choices=[s for s in SPLIT_NAMES if s != "dev"])
    p.add_argument("--json", help="write the official-scorer-shaped JSON here")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("sweep", help="train every config of params/sweeps/NAME not trained yet; print the comparison")
    p.add_argument("name", help="a folder of params/sweeps/")
    p.add_argument("--base", default=None,
                   help="params YAML the sweep's files modify (default: the base its _sweep.yaml records)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of every config")
    p.add_argument("--out", default=None, help="output folder (default: reports/sweeps/NAME)")
    p.add_argument("--runner", default="papermill", choices=("papermill", "cli"),
                   help="papermill: executed 03_train notebooks, one at a time; cli: skinseg train processes")
    p.add_argument("--jobs", type=int, default=1, help="runs at once with --runner cli")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("report", help="run notebooks 01-06 with papermill and build reports/report.html (+ PDF)")
    p.add_argument("--params", default=None, help="params YAML (default: params/demo.yaml)")
    p.add_argument("--data", default=None, help="data root (default: the params' data_root, else synthetic)")
    p.add_argument("--no-pdf", action="store_true", help="skip the PDF")
    p.add_argument("--out", default=None, help="output folder (default: reports/); e.g. reports/isic for real data")
    p.add_argument("--sweep", default=None, help="sweep of 04_sweeps (default: architectures)")
    p.add_argument("--sweep-set", action="append", metavar="KEY=VALUE",
                   help="override a key of every sweep config (default: epochs=2)")
    p.add_argument("--no-sweep", action="store_true",
                   help="04_sweeps trains no sweep and shows only the study's tables in results/ (the real report)")
    p.add_argument("--update-images", nargs="?", const="", default=None, metavar="DIR",
                   help="also refresh the README figures, in images/ or DIR (e.g. images/isic)")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. A user error (:class:`skinseg.errors.SkinsegError`) is printed as one line, exit 2;
    Ctrl-C as one line, exit 130 (also when it surfaced as another error, e.g. a notebook's dead kernel)."""
    from skinseg.errors import SkinsegError, SkinsegWarning

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line): a return code, as every other outcome
        return e.code if isinstance(e.code, int) else 2
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        signal.default_int_handler(signum, frame)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkinsegWarning):
            print(f"skinseg {args.command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    def say_interrupted(e: BaseException | None) -> int:
        said = str(e) if isinstance(e, KeyboardInterrupt) and str(e) else INTERRUPTED.get(
            args.command, "nothing is damaged: files are written whole or not at all; run it again")
        said = said if said.startswith("interrupted") else f"interrupted; {said}"
        print(f"\nskinseg {args.command}: {said}", file=sys.stderr)
        return 130

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    shown, warnings.showwarning = warnings.showwarning, show_warning
    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        return say_interrupted(e)
    except SkinsegError as e:
        if interrupted:
            return say_interrupted(None)
        print(f"skinseg {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception:
        if interrupted:
            return say_interrupted(None)
        raise
    finally:
        warnings.showwarning = shown
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    raise SystemExit(main())

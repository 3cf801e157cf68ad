"""Seconds of `skinseg score` on a 1000-image submission: the whole command (a fresh ``python -m skinseg score``,
imports included; the goal is 1.5 s on 2 cores), its imports alone, and the work (skinseg.scoring.score_submission).

Writes, seeded, a split of 1000 images with 5 ground-truth masks each (256 px, 0/255 PNGs, attributes present with
the real train split's prevalence, one to three ellipses each) and a submission of the same masks shifted by a few
pixels, some dropped, some false positives; then times score_submission: median of --repeats after one warm-up.
``--dense`` makes every mask non-empty (the worst case: no empty mask shares a file content with another).
``--against CHECKOUT`` also times another checkout's command on the same files, in the same minute (the
machine's speed varies by the hour). ``--official`` also times the previous per-image scorer (read_mask +
OfficialScore.update per image) on the same files and checks that both give the same scores. With
SKINSEG_ISIC_ROOT set, both also score a fixed pseudo-submission (the real train ground truth shifted by 3 and
-2 px) against the real train split.

    .venv/bin/python benchmarks/score_speed.py [--images 1000] [--official] [--dense] [--against CHECKOUT]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from skinseg.data.isic import ATTRIBUTES, SPLIT_FOLDERS, get_split, mask_name  # noqa: E402
from skinseg.data.masks import read_mask  # noqa: E402
from skinseg.data.synth import DEFAULT_PREVALENCE  # noqa: E402
from skinseg.metrics import OfficialScore  # noqa: E402
from skinseg.scoring import Scores, score_submission  # noqa: E402


def score_per_image(pred_dir: Path, root: Path, split: str) -> Scores:
    """The previous scorer: every mask read by read_mask, one OfficialScore.update per image."""
    truth = get_split(root, split)
    acc = OfficialScore()
    for image_id in truth.ids:
        with Image.open(truth.mask_path(image_id, ATTRIBUTES[0])) as im:
            hw = im.size[1], im.size[0]
        t = [read_mask(truth.mask_path(image_id, a), hw)[0] for a in ATTRIBUTES]
        p = [read_mask(pred_dir / mask_name(image_id, a), hw, what="submission mask")[0] for a in ATTRIBUTES]
        acc.update(torch.from_numpy(np.stack(p)), torch.from_numpy(np.stack(t)))
    return acc.compute()


def _ellipses(rng: np.random.Generator, size: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        centre = tuple(int(v) for v in rng.integers(size // 8, size - size // 8, 2))
        axes = tuple(int(v) for v in rng.integers(4, size // 4, 2))
        cv2.ellipse(m, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    return m


def _save(mask: np.ndarray, path: Path) -> None:
    Image.fromarray(mask, mode="L").save(path)  # as `skinseg predict` writes submissions


def write_case(root: Path, sub: Path, n: int, size: int, seed: int, dense: bool) -> None:
    """A val split of ``n`` images below ``root`` and a submission for it in ``sub``."""
    rng = np.random.default_rng(seed)
    image_dir, mask_dir = (root / "val" / folder for folder in SPLIT_FOLDERS["val"])
    for d in (image_dir, mask_dir, sub):
        d.mkdir(parents=True)
    jpg = cv2.imencode(".jpg", np.full((size, size, 3), 128, np.uint8))[1].tobytes()  # scoring never reads it
    for i in range(n):
        image_id = f"ISIC_{i:07d}"
        (image_dir / f"{image_id}.jpg").write_bytes(jpg)
        for a in ATTRIBUTES:
            present = dense or rng.random() < DEFAULT_PREVALENCE[a]
            truth = _ellipses(rng, size) if present else np.zeros((size, size), np.uint8)
            if present and (dense or rng.random() > 0.15):
                pred = np.roll(truth, tuple(int(v) for v in rng.integers(-8, 9, 2)), axis=(0, 1))
            elif rng.random() < 0.1:
                pred = _ellipses(rng, size)
            else:
                pred = np.zeros((size, size), np.uint8)
            _save(truth, mask_dir / mask_name(image_id, a))
            _save(pred, sub / mask_name(image_id, a))


def write_shifted_truth(root: Path, split: str, sub: Path) -> None:
    """A fixed pseudo-submission: every ground-truth mask of the split shifted by 3 px down and 2 px left."""
    truth = get_split(root, split)
    sub.mkdir()
    for image_id in truth.ids:
        for a in ATTRIBUTES:
            path = truth.mask_path(image_id, a)
            with Image.open(path) as im:
                hw = im.size[1], im.size[0]
            mask = np.roll(read_mask(path, hw)[0], (3, -2), axis=(0, 1))
            _save(mask.astype(np.uint8) * 255, sub / mask_name(image_id, a))


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, Scores]:
    """Median seconds of ``repeats`` calls (after one untimed call when ``warmup``) and the last result."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scores = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), scores


def command_seconds(args: list[str], repeats: int, tree: Path | None = None) -> float:
    """Median wall seconds of ``python <args>`` run as a fresh process (after one untimed run); ``tree``: run the
    skinseg of that checkout instead of this one."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    times = []
    for k in range(repeats + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], check=True, env=env, stdout=subprocess.DEVNULL, cwd=tree)
        if k:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def assert_same(a: Scores, b: Scores) -> float:
    """Largest difference between two scores' numbers; fails above 1e-9."""
    ja, jb = a.to_official_json(), b.to_official_json()
    diff = max(abs(ja[k][m] - jb[k][m]) for k in ja if k != "overall" for m in ("jaccard", "dice"))
    assert diff <= 1e-9, f"the two scorers differ by {diff}"
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense", action="store_true", help="every mask non-empty")
    parser.add_argument("--official", action="store_true", help="also time the previous per-image scorer")
    parser.add_argument("--against", type=Path, metavar="CHECKOUT",
                        help="also time the command of another skinseg checkout (e.g. `git worktree add` of an older "
                             "commit) on the same files, before and after this tree's, for a same-minute ratio")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, sub = Path(tmp) / "isic", Path(tmp) / "submission"
        write_case(root, sub, args.images, args.size, args.seed, args.dense)
        kind = "every mask non-empty" if args.dense else "real prevalence"
        print(f"{args.images} images x {len(ATTRIBUTES)} masks, {args.size} px ({kind}, seed {args.seed}), "
              f"{os.cpu_count()} CPUs, files in the page cache")
        command = ["-m", "skinseg", "score", "--submission", str(sub), "--data", str(root), "--split", "val"]
        other = [command_seconds(command, args.repeats, args.against.resolve())] if args.against else []
        command_s = command_seconds(command, args.repeats)
        if args.against:
            other.append(command_seconds(command, args.repeats, args.against.resolve()))
            print(f"`skinseg score` of {args.against}: {other[0]:.3f} s before this tree's, {other[1]:.3f} s after "
                  f"(medians of {args.repeats}); this tree's is {statistics.mean(other) / command_s:.1f}x faster")
        import_s = command_seconds(["-c", "import skinseg.cli, skinseg.scoring"], args.repeats)
        print(f"`skinseg score` as a command: {command_s:.3f} s (median of {args.repeats}; goal 1.5 s), of which "
              f"starting Python and importing: {import_s:.3f} s")
        fast_s, fast = timed(lambda: score_submission(sub, root, "val"), args.repeats)
        print(f"score_submission: {fast_s:.3f} s (median of {args.repeats}), {args.images / fast_s:.0f} images/s, "
              f"overall {fast.overall:.6f}")
        if args.official:
            old_s, old = timed(lambda: score_per_image(sub, root, "val"), args.repeats, warmup=False)
            diff = assert_same(fast, old)
            print(f"per-image reference: {old_s:.3f} s (median of {args.repeats}), {args.images / old_s:.0f} images/s, "
                  f"overall {old.overall:.6f}; {old_s / fast_s:.1f}x slower; largest difference {diff:.1e}")
        real = os.environ.get("SKINSEG_ISIC_ROOT")
        if real:
            n = len(get_split(real, "train"))
            write_shifted_truth(Path(real), "train", Path(tmp) / "shifted")
            fast_s, fast = timed(lambda: score_submission(Path(tmp) / "shifted", real, "train"), 1)
            old_s, old = timed(lambda: score_per_image(Path(tmp) / "shifted", Path(real), "train"), 1, warmup=False)
            diff = assert_same(fast, old)
            print(f"real train split ({n} images), ground truth shifted by (3, -2) px: overall {fast.overall:.9f} "
                  f"(score_submission, {fast_s:.3f} s) vs {old.overall:.9f} (per-image reference, {old_s:.3f} s); "
                  f"largest difference {diff:.1e}")
        else:
            print("SKINSEG_ISIC_ROOT not set: skipping the real-data check")


if __name__ == "__main__":
    main()

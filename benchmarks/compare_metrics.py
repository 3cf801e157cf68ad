"""Whether two runs' metrics.csv rows agree bit for bit over their first epochs, timing columns aside: the check
that a refactor left training unchanged (same config, same seed, same thread count, on a CPU).

    .venv/bin/python benchmarks/compare_metrics.py RUN_A/metrics.csv RUN_B/metrics.csv [--epochs 2]

Two runs of the CPU recipe stopped after two epochs, one from the old commit's tree and one from the new, give
the rows to compare (start them one at a time: two trainings at once on 2 cores take many times as long).
"""
import argparse
import sys

import pandas as pd

TIMING = {"time", "epoch_seconds", "images_per_s", "val_seconds", "checkpoint_seconds"}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    a, b = (pd.read_csv(f) for f in (args.a, args.b))
    a, b = (t[t["epoch"] <= args.epochs].reset_index(drop=True) for t in (a, b))
    cols = [c for c in a.columns if c not in TIMING and c in b.columns]
    print(f"rows {len(a)} / {len(b)}, {len(cols)} columns compared; in one file only: "
          f"{sorted(set(a.columns) ^ set(b.columns)) or 'none'}")
    same = len(a) == len(b) and a[cols].equals(b[cols])
    for c in cols if not same and len(a) == len(b) else []:
        if not a[c].equals(b[c]):
            print(f"  {c} differs, first rows: {a[c].tolist()[:3]} / {b[c].tolist()[:3]}")
    print(b[b["kind"] == "epoch"][["epoch", "train_loss", "val_loss", "val_jaccard", "val_tuned_jaccard"]]
          .to_string(index=False))
    print("bit-identical" if same else "NOT bit-identical")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

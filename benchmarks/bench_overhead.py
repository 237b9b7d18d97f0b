"""Benchmark (issue 3a): cost of an SD-SNN training epoch against a dense epoch of the same network.

Same network, data, batch size and seed; SD-SNN develops every K optimizer steps (default 100,
about twice an epoch of 12,000 samples, like configs/mnist.yaml's 400 steps on the full set) with
spine_window 1, so that the timed epochs (all but the first of each run) run with the constraint,
regeneration and pruning active. Runs alternate (dense, SD-SNN, dense, SD-SNN, ...) so that
machine noise hits both. Figures: the ratio of median training-epoch times, and the ratio of the
fastest epochs (the least disturbed ones on a shared machine); validation and energy counting
are excluded.

    .venv/bin/python benchmarks/bench_overhead.py [--repeats 3] [--epochs 3] [--train-limit 12000]

Target: ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result  # noqa: E402

from sdsnn.config import ExperimentConfig  # noqa: E402
from sdsnn.train import train  # noqa: E402


def config(mode: str, args) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": f"overhead-{mode}",
            "seed": 0,
            "data": {"dataset": "mnist", "time_steps": args.time_steps, "batch_size": args.batch_size,
                     "train_limit": args.train_limit},
            "model": {"name": "convnet", "depth": 2, "width": 16, "width_growth": 2.0, "pool_every": 1,
                      "fc_width": 128},
            # spine_window 1: constraint from step 2, pruning + regeneration from step 3, i.e. all
            # rules are active in the timed epochs.
            "plasticity": {"mode": mode, "develop_every": args.develop_every, "spine_window": 1},
            "train": {"epochs": args.epochs, "threads": args.threads},
            "energy": {"batches": 1},
        }
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    ap.add_argument("--train-limit", type=int, default=12000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--time-steps", type=int, default=4)
    ap.add_argument("--develop-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    times = {"dense": [], "sdsnn": []}
    prune = []
    for r in range(args.repeats):
        for mode in ("dense", "sdsnn"):
            res = train(config(mode, args), progress=False)
            # skip the first epoch (allocator and thread-pool warm-up)
            times[mode].extend(h["epoch_time_s"] for h in res.history[1:])
            if mode == "sdsnn":
                prune.append(res.metrics["syn_prune_rate"])
            print(f"repeat {r} {mode}: " + ", ".join(f"{h['epoch_time_s']:.2f}s" for h in res.history), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = {k: min(v) for k, v in times.items()}
    ratio = med["sdsnn"] / med["dense"]
    ratio_fastest = fastest["sdsnn"] / fastest["dense"]
    path = write_result(
        "overhead",
        {
            "what": "median training-epoch time, SD-SNN vs dense, MNIST convnet, same batch size",
            "args": vars(args),
            "epoch_times_s": times,
            "median_s": med,
            "fastest_s": fastest,
            "ratio": ratio,
            "ratio_fastest": ratio_fastest,
            "target": 1.10,
            "pass": ratio <= 1.10,
            "sdsnn_syn_prune_rate_end": prune,
        },
    )
    print(f"SD-SNN / dense epoch time = {ratio:.3f} (medians), {ratio_fastest:.3f} (fastest epochs); "
          f"target <= 1.10; written to {path}")


if __name__ == "__main__":
    main()

"""Benchmark (issue 3d): one training run on a GPU within a time budget, resumed across calls.

The GPU machine lent to this project runs one command for at most 10 minutes and keeps its files
only while it stays warm, so a long run (CIFAR-10 on the reference network, MNIST toward the
paper's 99.51 % at 49.83 % pruning) is cut into calls: each call resumes from the run's last
checkpoint (exact resume, :func:`sdsnn.train.train`), trains whole epochs while the next one still
fits in ``--minutes``, and writes ``results/benchmarks/<name>.json`` with seconds per epoch, the
validation accuracy and pruning per epoch, and the device.  The test set is evaluated once, when
the run has done all its epochs (``train.epochs``, or ``--epochs``; the cosine schedule spans
them).  The same command continues the run; ``--fresh`` starts it again.

Needs only ``sdsnn`` and its core dependencies (torch, spikingjelly, pydantic, pyyaml, numpy,
tqdm, safetensors): no Ray, Optuna or MLflow, so it runs on the lent GPU machine from a plain
checkout plus carried wheels.  On CPU it runs too (``--set train.device=cpu``).

    python benchmarks/bench_train_budget.py --config configs/cifar10.yaml --epochs 30 --minutes 9
    python benchmarks/bench_train_budget.py --config configs/mnist.yaml --name gpu-mnist --minutes 9
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))
from sdsnn.cli_support import load_train_config  # noqa: E402
from sdsnn.train import train  # noqa: E402


class _OutOfTime(Exception):
    """Raised after an epoch's checkpoint when the next epoch would not fit in the budget."""


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="experiment YAML (configs/cifar10.yaml, configs/mnist.yaml)")
    ap.add_argument("--name", default=None, help="result name (default gpu-<config stem>)")
    ap.add_argument("--epochs", type=int, default=None, help="override train.epochs (the schedule's length)")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-time budget of this call")
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="override any config field by dotted path (YAML value)")
    ap.add_argument("--out", default=None, help="run folder (default results/<name>)")
    ap.add_argument("--fresh", action="store_true", help="delete the run folder first")
    ap.add_argument("--result-dir", default=None, help="where <name>.json goes (default results/benchmarks)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()

    cfg = load_train_config(a.config, epochs=a.epochs, sets=a.set)  # the CLI's own overrides
    name = a.name or f"gpu-{Path(a.config).stem}"
    run_dir = Path(a.out) if a.out else ROOT / "results" / name
    if a.fresh and run_dir.exists():
        shutil.rmtree(run_dir)

    budget = a.minutes * 60.0
    mark = [time.perf_counter()]

    def on_epoch(metrics: dict, _path) -> None:
        # the whole epoch as the wall clock saw it (training, validation, energy counting, the
        # checkpoint), not epoch_time_s (training alone): the next one must fit in what is left
        now = time.perf_counter()
        epoch_wall, mark[0] = now - mark[0], now
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        report(a, cfg, name, run_dir, [json.loads(x) for x in lines if x.strip()], "in progress", None, False)
        if now - t_start + epoch_wall * 1.1 > budget and metrics["epoch"] < cfg.train.epochs:
            raise _OutOfTime()

    finished = True
    try:
        res = train(cfg, run_dir, resume=True, on_epoch=on_epoch, evaluate_test=True, progress=True)
        status, history, test = res.status, res.history, res.test
    except _OutOfTime:  # the epoch's checkpoint and metrics.jsonl are written before on_epoch
        finished = False
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        status, history, test = "paused", [json.loads(x) for x in lines if x.strip()], None
    summary, path = report(a, cfg, name, run_dir, history, status, test, finished)
    for k, v in summary.items():
        print(f"{k:>18}: {v}")
    print(f"written to {path}")
    return summary


def report(a, cfg, name: str, run_dir: Path, history: list, status: str, test, finished: bool):
    """Write ``<name>.json`` for the epochs done so far (after every epoch too, so that a call cut
    off by the machine's time limit still leaves its figures)."""
    import torch

    times = [h["epoch_time_s"] for h in history]
    last = history[-1] if history else {}
    summary = {
        "status": status if finished or status == "in progress" else "paused (out of time; run the same command to continue)",
        "epochs_done": len(history),
        "epochs_planned": cfg.train.epochs,
        "device": torch.cuda.get_device_name(0) if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu",
        "median_epoch_s": statistics.median(times) if times else None,
        "best_val_acc": max((h.get("val_acc", 0.0) for h in history), default=None),
        "last_val_acc": last.get("val_acc"),
        "syn_prune_rate": last.get("syn_prune_rate"),
        "neuron_prune_rate": last.get("neuron_prune_rate"),
        "energy_pj": last.get("energy_pj"),
        "dense_energy_pj": last.get("dense_energy_pj"),
        "test_acc": test["test_acc"] if test else None,
    }
    payload = {"config": cfg.to_dict(), "run_dir": str(run_dir), "summary": summary,
               "per_epoch": [{k: h.get(k) for k in ("epoch", "epoch_time_s", "train_loss", "val_acc",
                                                   "syn_prune_rate", "neuron_prune_rate")} for h in history]}
    return summary, write_result(name, payload, Path(a.result_dir) if a.result_dir else None)


if __name__ == "__main__":
    from sdsnn.errors import UserError

    try:
        main()
    except UserError as e:  # bad config, missing dataset: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

"""Benchmark (issue 3c): MNIST on this CPU in at most 20 epochs, SD-SNN against dense.

Trains configs/mnist.yaml with SD-SNN and its dense baseline (same backbone, data, seed and
budget). Model selection uses only the validation split; the test set is evaluated once, at the
end of each run. Targets: SD-SNN test accuracy >= 99.2 %, synaptic pruning >= 50 %, energy per
sample below the dense baseline's.

    .venv/bin/python benchmarks/bench_mnist.py [--config configs/mnist.yaml] [--parallel]

``--parallel`` trains the two runs at once, one thread each (same wall time on 2 cores, less
exposure to noise from other work on the machine).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

from sdsnn.config import load_config  # noqa: E402
from sdsnn.train import train  # noqa: E402


def _run(cfg_dict: dict, out: str, threads: int) -> dict:
    from sdsnn.config import ExperimentConfig

    cfg = ExperimentConfig.model_validate(cfg_dict)
    cfg.train.threads = threads
    t0 = time.perf_counter()
    res = train(cfg, out, resume=True, evaluate_test=True, progress=True)
    return {"status": res.status, "final": res.metrics, "test": res.test, "wall_s": time.perf_counter() - t0,
            "history": res.history}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "mnist.yaml"))
    ap.add_argument("--out", default=str(ROOT / "results" / "bench-mnist"))
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    over = {"train.epochs": args.epochs} if args.epochs else None
    cfg = load_config(args.config, over)
    runs = {"sdsnn": cfg, "dense": cfg.dense_baseline()}
    jobs = {k: (c.to_dict(), str(Path(args.out) / k)) for k, c in runs.items()}
    if args.parallel:
        with mp.get_context("spawn").Pool(2) as pool:
            futs = {k: pool.apply_async(_run, (d, o, 1)) for k, (d, o) in jobs.items()}
            out = {k: f.get() for k, f in futs.items()}
    else:
        out = {k: _run(d, o, 2) for k, (d, o) in jobs.items()}
    s, d = out["sdsnn"], out["dense"]
    summary = {
        "sdsnn_test_acc": s["test"]["test_acc"] if s["test"] else None,
        "dense_test_acc": d["test"]["test_acc"] if d["test"] else None,
        "sdsnn_val_acc": s["final"].get("val_acc"),
        "dense_val_acc": d["final"].get("val_acc"),
        "syn_prune_rate": s["final"].get("syn_prune_rate"),
        "neuron_prune_rate": s["final"].get("neuron_prune_rate"),
        "sdsnn_energy_pj": s["final"].get("energy_pj"),
        "dense_energy_pj": d["final"].get("energy_pj"),
        "sdsnn_params": s["final"].get("params"),
        "dense_params": d["final"].get("params"),
        "epochs": cfg.train.epochs,
        "sdsnn_wall_s": s["wall_s"],
        "dense_wall_s": d["wall_s"],
    }
    ok = (
        summary["sdsnn_test_acc"] is not None
        and summary["sdsnn_test_acc"] >= 0.992
        and summary["syn_prune_rate"] >= 0.50
        and summary["sdsnn_energy_pj"] < summary["dense_energy_pj"]
    )
    path = write_result("mnist", {"config": cfg.to_dict(), "summary": summary, "pass": ok,
                                  "targets": {"test_acc": 0.992, "syn_prune_rate": 0.5, "energy": "< dense"},
                                  "runs": out})
    for k, v in summary.items():
        print(f"{k:>20}: {v}")
    print(f"targets met: {ok}; written to {path}")


if __name__ == "__main__":
    main()

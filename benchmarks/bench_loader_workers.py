"""Does ``data.num_workers`` hide the batch preparation behind the training step?

On a GPU the training step leaves the CPU idle while the device works; batch preparation (the
gather, uint8 -> float, CIFAR-10's random crop and flip, Poisson spikes) then either runs in
between steps (``num_workers: 0``) or in background threads during them. This benchmark
iterates one epoch of a real training loader with a consumer that stands for a device-bound
step: it sleeps ``--step-ms`` per batch (a thread waiting on a GPU does the same) and touches
the batch. The epoch's wall time is compared with the ideal ``batches * step``; the overhead
is the data work that was not hidden. All worker counts run in one process, interleaved, on
the same loader and epochs; the batches are checked identical across worker counts.

    .venv/bin/python benchmarks/bench_loader_workers.py                     # CIFAR-10, augment
    .venv/bin/python benchmarks/bench_loader_workers.py --set data.encoding=poisson --name loader_workers_poisson

Writes results/benchmarks/loader_workers.json (``--name`` to change).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_result  # noqa: E402


def epoch_time(loader, epoch: int, step_s: float) -> tuple[float, float]:
    """(wall seconds, checksum) of one epoch with a consumer sleeping ``step_s`` per batch."""
    loader.set_epoch(epoch)
    check = 0.0
    t0 = time.perf_counter()
    for x, y in loader:
        time.sleep(step_s)
        check += float(x[0, 0].sum()) + float(y.sum())
    return time.perf_counter() - t0, check


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "cifar10.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--step-ms", type=float, default=10.0, help="stand-in for one device-bound training step")
    ap.add_argument("--workers", default="0,1,2", help="worker counts to compare (comma-separated)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per worker count (median reported)")
    ap.add_argument("--train-limit", type=int, default=10000, help="training samples used (data.train_limit)")
    ap.add_argument("--name", default="loader_workers", help="result file results/benchmarks/<name>.json")
    a = ap.parse_args(argv)

    import torch

    from sdsnn.cli_support import load_train_config
    from sdsnn.data import build_loaders
    from sdsnn.errors import UserError

    torch.set_num_threads(1)  # the training process's own threads are busy driving the device
    try:
        cfg = load_train_config(a.config, sets=[*a.overrides, f"data.train_limit={a.train_limit}"])
        bundle = build_loaders(cfg.data, cfg.seed, progress=False)
    except UserError as exc:
        print(f"bench_loader_workers: {exc}", file=sys.stderr)
        return 2
    loader = bundle.train
    workers = [int(w) for w in a.workers.split(",") if w.strip()]
    step_s = a.step_ms / 1000.0
    times: dict[int, list[float]] = {w: [] for w in workers}
    checks: dict[int, list[float]] = {w: [] for w in workers}
    for epoch in range(a.epochs):
        for w in workers:
            loader.num_workers = w
            t, c = epoch_time(loader, epoch, step_s)
            times[w].append(t)
            checks[w].append(c)
    # no step at all: how long the data work itself takes per batch
    loader.num_workers = 0
    prep, _ = epoch_time(loader, 0, 0.0)

    n = len(loader)
    ideal = n * step_s
    rows = []
    for w in workers:
        med = statistics.median(times[w])
        rows.append({"num_workers": w, "epoch_s": med, "epoch_times_s": times[w],
                     "overhead_over_steps": med / ideal - 1.0, "same_batches_as_0": checks[w] == checks[workers[0]]})
        print(f"num_workers={w}: epoch {med:.2f} s for {n} batches x {a.step_ms:g} ms steps "
              f"(ideal {ideal:.2f} s, overhead {100 * (med / ideal - 1):.1f} %)")
    print(f"data work alone: {1000 * prep / n:.2f} ms per batch of {cfg.data.batch_size} "
          f"({cfg.data.dataset}, augment {cfg.data.augment}, encoding {cfg.data.encoding}, T {cfg.data.time_steps})")
    path = write_result(a.name, {
        "benchmark": "loader_workers",
        "command": "benchmarks/bench_loader_workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "dataset": cfg.data.dataset, "augment": cfg.data.augment, "encoding": cfg.data.encoding,
        "time_steps": cfg.data.time_steps, "batch_size": cfg.data.batch_size, "batches": n,
        "step_ms": a.step_ms, "ideal_epoch_s": ideal, "prep_ms_per_batch": 1000 * prep / n, "rows": rows,
    })
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

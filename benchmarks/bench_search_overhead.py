"""Fixed per-trial overhead of Ray Tune + Optuna + MLflow tracking + trials table.

A trainable that does nothing (reports once) runs in studies of N1 and N2 trials, one at a time;
the overhead per trial is the slope (T(N2) - T(N1)) / (N2 - N1), so the one-off costs (MLflow
store creation, Tuner setup) drop out. Ray is started once, outside the timings.

    .venv/bin/python benchmarks/bench_search_overhead.py   # -> results/benchmarks/search_overhead.json
"""

from __future__ import annotations

import tempfile
import time

from _search_common import start_ray, write

import ray.cloudpickle
import search_fakes

from sdsnn_search.runner import run_study
from sdsnn_search.space import parse_space


def main(n1: int = 2, n2: int = 12) -> None:
    start_ray()
    ray.cloudpickle.register_pickle_by_value(search_fakes)
    times = {}
    with tempfile.TemporaryDirectory() as d:
        for n in (n1, n2):
            spec = parse_space({"dataset": "digits", "params": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
                                "search": {"num_samples": n, "max_concurrent": 1, "sampler": "random", "baseline": False}})
            t = time.perf_counter()
            out = run_study(spec, results_dir=d, name=f"n{n}", trainable=search_fakes.noop_trial, progress=False)
            times[n] = time.perf_counter() - t
            assert out.counts["completed"] == n
    per = (times[n2] - times[n1]) / (n2 - n1)
    write("search_overhead", {"trials": [n1, n2], "study_seconds": {str(k): round(v, 2) for k, v in times.items()},
                              "overhead_s_per_trial": round(per, 3),
                              "fixed_study_setup_s": round(times[n1] - n1 * per, 2),
                              "note": "max_concurrent 1, noop trainable, MLflow SQLite tracking + trials table on"})


if __name__ == "__main__":
    main()

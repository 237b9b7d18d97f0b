"""Throughput of the real digits search: 2 concurrent trials against 1, on this machine.

Same space (search_spaces/digits.yaml), same N trials and epochs, random sampler with the same
seed (so both runs train the same configs); trials per minute for max_concurrent 1 and 2.

    .venv/bin/python benchmarks/bench_search_throughput.py   # -> results/benchmarks/search_throughput.json
"""

from __future__ import annotations

import tempfile
import time

from _search_common import ROOT, start_ray, write

from sdsnn_search.runner import run_study
from sdsnn_search.space import load_space


def main(n: int = 6, epochs: int = 3) -> None:
    start_ray()
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for conc in (1, 2):
            spec = load_space(ROOT / "search_spaces" / "digits.yaml",
                              {"search.num_samples": n, "search.max_concurrent": conc, "search.epochs": epochs,
                               "search.sampler": "random", "search.baseline": False})
            t = time.perf_counter()
            out = run_study(spec, results_dir=d, name=f"c{conc}", progress=False)
            wall = time.perf_counter() - t
            res[conc] = {"wall_s": round(wall, 1), "trials_per_min": round(60 * n / wall, 2),
                         "completed": out.counts["completed"],
                         "mean_trial_s": round(float(out.table["duration_s"].mean()), 2)}
    write("search_throughput", {"trials": n, "epochs": epochs, "by_max_concurrent": res,
                                "speedup_2_vs_1": round(res[1]["wall_s"] / res[2]["wall_s"], 2),
                                "note": "2 CPU cores shared with other sessions; 1 CPU per trial"})


if __name__ == "__main__":
    main()

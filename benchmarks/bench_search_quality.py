"""Search quality on digits: hypervolume after N trials, NSGA-II and TPE against random search.

Each sampler runs 3 seeds with the same budget (N trials, same epochs) on search_spaces/digits.yaml;
the hypervolume of the completed trials' (val_acc max, energy_pj min) front is computed with
sdsnn_search.pareto.hypervolume (moocore) against the space's reference point.

    .venv/bin/python benchmarks/bench_search_quality.py [N] [EPOCHS]   # -> results/benchmarks/search_quality.json
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

from _search_common import ROOT, start_ray, write

from sdsnn_search.pareto import hypervolume
from sdsnn_search.runner import run_study
from sdsnn_search.space import load_space


def study_hypervolume(df, spec) -> float:
    """Hypervolume of the completed (non-baseline) trials against the space's reference point."""
    ok = df[(df["status"] == "completed") & ~df["is_baseline"].astype(bool)]
    if not len(ok):
        return 0.0
    values = ok[[o.metric for o in spec.objectives]].astype(float).to_numpy()
    return hypervolume(values, [o.mode == "max" for o in spec.objectives], spec.reference_point)


def main(n: int = 12, epochs: int = 3) -> None:
    start_ray()
    results: dict[str, list[float]] = {}
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as d:
        for sampler in ("random", "nsga2", "tpe"):
            for seed in (0, 1, 2):
                spec = load_space(ROOT / "search_spaces" / "digits.yaml",
                                  {"search.num_samples": n, "search.epochs": epochs, "search.sampler": sampler,
                                   "search.seed": seed, "search.baseline": False})
                t = time.perf_counter()
                out = run_study(spec, results_dir=d, name=f"{sampler}-{seed}", progress=False)
                walls.setdefault(sampler, []).append(time.perf_counter() - t)
                hv = study_hypervolume(out.table, spec)
                results.setdefault(sampler, []).append(hv)
                print(f"{sampler} seed {seed}: hypervolume {hv:.1f} ({out.counts['completed']} completed)", flush=True)
    summary = {s: {"hypervolume": [round(v, 1) for v in hv], "mean": round(statistics.mean(hv), 1),
                   "stdev": round(statistics.stdev(hv), 1), "mean_wall_s": round(statistics.mean(walls[s]), 1)}
               for s, hv in results.items()}
    rnd = summary["random"]["mean"]
    for s in summary:
        summary[s]["vs_random"] = round(summary[s]["mean"] / rnd, 3) if rnd else None
    write("search_quality", {"space": "search_spaces/digits.yaml", "trials_per_study": n, "epochs": epochs,
                             "seeds": [0, 1, 2], "objectives": "val_acc max, energy_pj min",
                             "reference_point": load_space(ROOT / "search_spaces" / "digits.yaml").reference_point,
                             "by_sampler": summary})


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

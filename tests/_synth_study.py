"""A synthetic study folder that follows the contract in docs/internals.md (for pareto/report tests).

The numbers are random draws, not results: they stand in for what ``sdsnn-search run`` writes so
that the analysis can be checked against brute force without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

LAYERS = ["fc1", "fc2", "out"]


def make_trials(n: int = 20, seed: int = 0, dataset: str = "digits") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        syn = rng.uniform(0, 0.9)
        rows.append({
            "trial_id": f"t{i:03d}",
            "status": "completed",
            "is_baseline": False,
            "dataset": dataset,
            "duration_s": float(rng.uniform(5, 10)),
            "epochs": 3,
            "run_dir": f"/nonexistent/trials/t{i:03d}",
            "mlflow_run_id": "",
            "config/plasticity.spine_window": int(rng.integers(1, 6)),
            "config/plasticity.shrink_factor": float(rng.uniform(0.5, 0.9)),
            "val_acc": float(np.round(rng.uniform(0.6, 0.97), 3)),
            "val_loss": float(rng.uniform(0.1, 1.0)),
            "energy_pj": float(np.round(rng.uniform(1e5, 1e6), -3)),
            "dense_energy_pj": 1.2e6,
            "energy_ratio": 0.0,
            "syn_prune_rate": syn,
            "neuron_prune_rate": float(rng.uniform(0, 0.5)),
            "params": int(rng.integers(2000, 9000)),
            "dense_params": 10000,
            **{f"syn_prune/{l}": float(rng.uniform(0, 0.9)) for l in LAYERS},
            **{f"neuron_prune/{l}": (0.0 if l == "out" else float(rng.uniform(0, 0.5))) for l in LAYERS},
        })
    df = pd.DataFrame(rows)
    df["energy_ratio"] = df["energy_pj"] / df["dense_energy_pj"]
    base = dict(rows[0])
    base.update({"trial_id": "baseline", "is_baseline": True, "val_acc": 0.95, "energy_pj": 1.2e6,
                 "energy_ratio": 1.0, "syn_prune_rate": 0.0, "neuron_prune_rate": 0.0, "params": 10000,
                 **{f"syn_prune/{l}": 0.0 for l in LAYERS}, **{f"neuron_prune/{l}": 0.0 for l in LAYERS}})
    df = pd.concat([pd.DataFrame([base]), df], ignore_index=True)
    df.loc[3, "status"] = "failed"
    df.loc[3, ["val_acc", "energy_pj"]] = np.nan
    df.loc[5, "status"] = "nan"
    return df


def write_study(root: Path, name: str, trials: pd.DataFrame, *, dataset: str = "digits",
                constraints=None, created: str = "2025-01-01T00:00:00", parent_run_id=None,
                tracking_uri=None) -> Path:
    d = Path(root) / name
    (d / "trials").mkdir(parents=True, exist_ok=True)
    meta = {
        "name": name, "dataset": dataset, "space_file": "search_spaces/digits.yaml",
        "objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "energy_pj", "mode": "min"}],
        "constraints": constraints if constraints is not None else [{"metric": "val_acc", "op": ">=", "value": 0.7}],
        "reference_point": [0.0, 2.0e6],
        "tracking_uri": tracking_uri, "parent_run_id": parent_run_id,
        "experiment_name": name, "baseline_trial_id": "baseline", "created": created, "seed": 0,
    }
    (d / "study.json").write_text(json.dumps(meta, indent=2))
    trials.to_csv(d / "trials.csv", index=False)
    return d

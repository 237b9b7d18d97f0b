"""Shared helpers of the search benchmarks (one Ray session, JSON output)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

for k, v in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(k, v)

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "results" / "benchmarks"
sys.path.insert(0, str(ROOT / "tests"))


def start_ray(num_cpus: int = 2) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")


def write(name: str, data: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    data = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()}, **data}
    p = OUT / f"{name}.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, p)
    print(json.dumps(data, indent=2))
    return p

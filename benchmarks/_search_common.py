"""Shared helpers of the search benchmarks (one Ray session, JSON output)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

for k, v in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(k, v)

from _common import ROOT, write_result  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

sys.path.insert(0, str(ROOT / "tests"))


def start_ray(num_cpus: int = 2) -> None:
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")


def write(name: str, data: dict) -> Path:
    """Write results/benchmarks/<name>.json (atomically, with the machine) and print it."""
    path = write_result(name, data)
    print(path.read_text())
    return path

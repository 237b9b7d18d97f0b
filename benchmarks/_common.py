"""Helpers shared by the benchmark scripts: where results go, how they are written."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "benchmarks"

# Benchmarks run on the real datasets: default the data root to ../shared/datasets (beside the
# project) plus the project's cache (where CI builds CIFAR-10), unless the caller chose one.
_shared = ROOT.parent / "shared" / "datasets"
if _shared.is_dir():
    os.environ.setdefault("SDSNN_DATA_ROOT", os.pathsep.join([str(_shared), str(ROOT / "cache" / "data")]))


def _commit() -> str | None:
    """The checkout's commit, or None where git is missing (a bare GPU machine)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or None
    except OSError:
        return None


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    """Write results/benchmarks/<name>.json (or ``out_dir``/<name>.json) atomically, with the
    machine description."""
    out = OUT if out_dir is None else out_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    os.replace(tmp, path)
    return path

"""``study.json``: the description of a study folder (written by the runner, read by every command
that takes a study folder). No Ray, Optuna or MLflow import here: ``pareto`` and ``ui`` read it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from sdsnn.errors import UserError

__all__ = ["STUDY_FILE", "read_study", "write_study", "local_tracking_uri"]

STUDY_FILE = "study.json"


def local_tracking_uri(uri: Optional[str], study_dir: Path) -> Optional[str]:
    """The study's own sqlite store where it is now: a study folder that was moved or copied
    (e.g. from a cluster to a laptop) still names the old absolute path in study.json."""
    if not uri or not uri.startswith("sqlite:///"):
        return uri
    here = Path(study_dir).resolve() / "mlflow.db"
    if not Path(uri[len("sqlite:///"):]).exists() and here.is_file():
        return f"sqlite:///{here}"
    return uri


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """The parsed ``study.json`` of ``study_dir``, its MLflow URI pointed at the folder's own store
    when the folder has moved. One-line :class:`UserError` when it is missing or broken."""
    p = Path(study_dir) / STUDY_FILE
    if not p.is_file():
        raise UserError(f"{study_dir}: not a study folder (no {STUDY_FILE}); give a folder made by "
                        f"'sdsnn-search run' (results/<study>/)")
    try:
        info = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{p} is not valid JSON ({getattr(e, 'msg', e)}{where}); restore it or re-run the study") from None
    if not isinstance(info, dict):
        raise UserError(f"{p} is not a study description (a JSON object); restore it or re-run the study")
    info["tracking_uri"] = local_tracking_uri(info.get("tracking_uri"), Path(study_dir))
    return info


def write_study(study_dir: Path, info: dict[str, Any]) -> None:
    """Write ``study.json`` atomically (a reader never sees half a file)."""
    path = Path(study_dir) / STUDY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, path)

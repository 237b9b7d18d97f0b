"""``study.json``: the description of a study folder (written by the runner, read by every command
that takes a study folder). No Ray, Optuna or MLflow import here: ``pareto`` and ``ui`` read it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from sdsnn.errors import UserError

__all__ = ["STUDY_FILE", "read_study", "write_study", "local_tracking_uri", "load_study_plugins"]

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


def load_study_plugins(study_dir: Path, info: dict[str, Any]) -> None:
    """Add the plugins a study was started with (``--plugin`` or ``SDSNN_PLUGINS``, as recorded in
    its study.json) to this process's: ``resume`` and ``export`` need no ``--plugin`` again.

    A recorded file that is gone may be named again at its new place with ``--plugin NEWPATH``: a
    given file of the same name replaces it, or, when exactly one recorded file is gone and exactly
    one given file is not recorded, that one does (a moved and renamed plugin)."""
    from sdsnn.plugins import add_plugins, plugin_entries

    recorded = info.get("plugins")
    if not recorded or not isinstance(recorded, str):
        return
    entries = recorded.split(",")
    given = [e for e in plugin_entries() if e.endswith(".py") and e not in entries]
    gone = [e for e in entries if e.endswith(".py") and not Path(e).is_file()]
    gone = [e for e in gone if Path(e).name not in {Path(g).name for g in given}]  # replaced by name
    unmatched = [g for g in given if Path(g).name not in {Path(e).name for e in entries}]
    if len(gone) == 1 and len(unmatched) == 1:
        gone = []
    if gone:
        raise UserError(f"{study_dir}: the study was started with the plugin file {gone[0]}, which is gone; put it "
                        f"back there, or name its new place with --plugin NEWPATH before the command "
                        f"(sdsnn-search --plugin NEWPATH ...)")
    add_plugins([e for e in entries if not (e.endswith(".py") and not Path(e).is_file())])

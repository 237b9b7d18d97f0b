"""``study.json``: the description of a study folder (written by the runner, read by every command
that takes a study folder). No Ray, Optuna or MLflow import here: ``pareto`` and ``ui`` read it too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlparse

from sdsnn.errors import UserError

__all__ = ["STUDY_FILE", "read_study", "write_study", "default_tracking_uri", "local_tracking_uri", "log_study_artifact",
           "load_study_plugins", "store_unreachable"]

STUDY_FILE = "study.json"


def default_tracking_uri(study_dir: Path) -> str:
    """The study's own MLflow store (``--tracking-uri`` not given): ``<study>/mlflow.db``."""
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def local_tracking_uri(uri: Optional[str], study_dir: Path) -> Optional[str]:
    """The study's own sqlite store where it is now: a study folder that was moved or copied
    (e.g. from a cluster to a laptop) still names the old absolute path in study.json. A folder
    holds an ``mlflow.db`` only when the study was made with its own store, so that one is used
    whenever it is there (a copy must not log into the original's store)."""
    if not uri or not uri.startswith("sqlite:///"):
        return uri
    if (Path(study_dir) / "mlflow.db").is_file():
        return default_tracking_uri(study_dir)
    return uri


def store_unreachable(uri: Optional[str], timeout_s: float = 3.0) -> Optional[str]:
    """Why the MLflow store at ``uri`` cannot be used right now, or None when it looks usable.

    Checked before any MLflow call that reads an existing study's store: MLflow retries an
    unreachable server for about four minutes, and it creates an empty sqlite file where the
    study's ``mlflow.db`` is missing. A server is checked by opening a TCP connection."""
    if not uri:
        return "study.json names no MLflow tracking URI"
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout_s).close()
        except OSError as e:
            return f"MLflow server {parsed.hostname}:{port} unreachable ({e.strerror or type(e).__name__})"
        return None
    if uri.startswith("sqlite:///"):
        db = Path(unquote(uri[len("sqlite:///"):]))
        if not db.is_file():
            return f"MLflow store {db} does not exist"
    return None


def _relocated_artifacts(run_artifact_uri: str, study_dir: Path, uri: str) -> Optional[Path]:
    """Where a run's artifacts belong under this folder's ``mlartifacts/``, when the study is on
    its own store and that store names them under another folder (the study was moved or copied);
    None when MLflow's own path is right."""
    if uri != default_tracking_uri(study_dir):
        return None
    parsed = urlparse(run_artifact_uri)
    if parsed.scheme not in ("", "file"):
        return None
    path = Path(unquote(parsed.path))
    here = Path(study_dir).resolve() / "mlartifacts"
    if path == here or here in path.parents or "mlartifacts" not in path.parts:
        return None
    rest = path.parts[len(path.parts) - path.parts[::-1].index("mlartifacts"):]
    return here.joinpath(*rest)


def log_study_artifact(client: Any, run_id: str, src: Path, artifact_path: str, study_dir: Path, uri: str) -> str:
    """Log ``src`` (a file or a folder's files) under ``artifact_path`` (``""``: the top) of MLflow
    run ``run_id`` and return the artifacts' URI (a registered version's source).

    A study on its own store whose folder was moved or copied: the store still holds the old
    folder's absolute artifact paths, and MLflow would write there (recreating the old folder, or
    into the original of a copy). The files go to the same place under this folder's
    ``mlartifacts/`` instead; MLflow's run page then does not list them."""
    run_uri = client.get_run(run_id).info.artifact_uri.rstrip("/")
    target = _relocated_artifacts(run_uri, Path(study_dir), uri)
    if target is None:
        if src.is_dir():
            client.log_artifacts(run_id, str(src), artifact_path=artifact_path or None)
        else:
            client.log_artifact(run_id, str(src), artifact_path=artifact_path or None)
        return f"{run_uri}/{artifact_path}".rstrip("/")
    dest = target / artifact_path
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / src.name)
    return dest.as_uri()


def read_study(study_dir: str | Path) -> dict[str, Any]:
    """The parsed ``study.json`` of ``study_dir``, its MLflow URI pointed at the folder's own store
    when the folder has moved. One-line :class:`UserError` when it is missing or broken."""
    p = Path(study_dir) / STUDY_FILE
    if not Path(study_dir).exists():
        raise UserError(f"{study_dir}: no such folder; give a study folder made by 'sdsnn-search run' (results/<study>/)")
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

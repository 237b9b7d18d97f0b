"""MLflow tracking from the driver.

One parent run per study (space file, resolved spec, seed, code version) and one child run per
trial (params, per-epoch metrics, final objectives, status), all written by the Ray driver through
a Tune :class:`~ray.tune.Callback`, so parallel trials never fight over the SQLite store.

The default store is ``sqlite:///<study>/mlflow.db`` with artifacts in ``<study>/mlartifacts``.
Child runs carry the tag ``trial_id``; the callback looks a child up by that tag before creating
one, so resuming a study never duplicates runs.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from ray.tune import Callback  # noqa: E402
from sdsnn.config import flatten_dict  # noqa: E402

from .stop import ended_status  # noqa: E402
from .studyfile import default_tracking_uri, log_study_artifact  # noqa: E402  (the first re-exported)
from .trainable import NON_METRIC_KEYS  # noqa: E402

__all__ = [
    "default_tracking_uri",
    "start_study_run",
    "end_study_run",
    "MlflowTracker",
    "code_version",
    "serve_ui",
    "stop_ui",
    "reopen_study_run",
    "TRIAL_TAG",
]

log = logging.getLogger(__name__)

TRIAL_TAG = "trial_id"
_PARENT_TAG = "mlflow.parentRunId"


def code_version() -> str:
    """The git commit of the code (with ``+dirty`` when modified), or the package version."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if sha:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "sdsnn-search " + version("sdsnn-search")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 6000 else s[:5997] + "..."


def start_study_run(
    *,
    tracking_uri: str,
    experiment_name: str,
    study_dir: Path,
    study_name: str,
    spec_dict: dict[str, Any],
    space_file: Optional[str],
    seed: int,
    artifact_location: Optional[str] = None,
) -> tuple[str, str]:
    """Create the study's experiment (if needed) and parent run; return (experiment_id, run_id)."""
    from mlflow.entities import Param, RunTag

    c = _client(tracking_uri)
    exp = c.get_experiment_by_name(experiment_name)
    if exp is None:
        exp_id = c.create_experiment(experiment_name, artifact_location=artifact_location)
    else:
        exp_id = exp.experiment_id
    tags = {
        "sdsnn.study": study_name,
        "sdsnn.role": "study",
        "sdsnn.study_dir": str(Path(study_dir).resolve()),
        "sdsnn.space_file": str(space_file or ""),
        "sdsnn.code_version": code_version(),
        "sdsnn.dataset": spec_dict.get("dataset", ""),
    }
    run = c.create_run(exp_id, tags=tags, run_name=study_name)
    rid = run.info.run_id
    flat = flatten_dict({k: spec_dict[k] for k in ("dataset", "search", "scheduler", "resources")})
    flat["seed"] = seed
    flat["objectives"] = ", ".join(f"{o['metric']}:{o['mode']}" for o in spec_dict["objectives"])
    flat["constraints"] = ", ".join(f"{c_['metric']}{c_['op']}{c_['value']}" for c_ in spec_dict["constraints"])
    flat["params"] = ", ".join(spec_dict["params"].keys())
    flat["code_version"] = tags["sdsnn.code_version"]
    c.log_batch(rid, params=[Param(k, _param_value(v)) for k, v in flat.items()],
                tags=[RunTag("mlflow.note.content", f"sdsnn-search study {study_name} on {spec_dict.get('dataset')}")])
    for name in ("spec.yaml", "study.json"):
        p = Path(study_dir) / name
        if p.exists():
            c.log_artifact(rid, str(p))
    if space_file and Path(space_file).is_file():
        c.log_artifact(rid, str(space_file), artifact_path="space")
    return exp_id, rid


def end_study_run(tracking_uri: str, run_id: str, status: str, summary: Optional[dict[str, float]] = None,
                  artifacts: tuple[Path, ...] = (), *, study_dir: Path) -> None:
    """Close the parent run (FINISHED, FAILED or KILLED), logging summary metrics and the study
    folder's files (into its own artifact folder where the study was moved or copied:
    :func:`studyfile.log_study_artifact`)."""
    from mlflow.entities import Metric

    c = _client(tracking_uri)
    if summary:
        ts = _now_ms()
        c.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in summary.items()
                                     if isinstance(v, (int, float)) and math.isfinite(float(v))])
    for p in artifacts:
        if Path(p).exists():
            log_study_artifact(c, run_id, Path(p), "", study_dir, tracking_uri)
    c.set_terminated(run_id, status=status)


def reopen_study_run(tracking_uri: str, run_id: str) -> None:
    """Mark a parent run as running again (``resume``)."""
    _client(tracking_uri).update_run(run_id, status="RUNNING")


class MlflowTracker(Callback):
    """Tune callback: one MLflow child run per trial under the study's parent run.

    Idempotent: a child is found by its ``trial_id`` tag before one is created, so a resumed
    study reuses the runs of its trials.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str,
                 baseline_key: str = "is_baseline", total_epochs: int = 0) -> None:
        self.tracking_uri = tracking_uri
        self.total_epochs = int(total_epochs)  # a trial ending short of it after Ctrl-C: interrupted
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.baseline_key = baseline_key
        self._client_obj = None
        self._runs: dict[str, str] = {}

    # the client holds a DB engine: keep it out of pickles (Tuner state, restore)
    def __getstate__(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["_client_obj"] = None
        d["_runs"] = {}
        return d

    @property
    def client(self):
        if self._client_obj is None:
            self._client_obj = _client(self.tracking_uri)
        return self._client_obj

    # ------------------------------------------------------------ lookup
    def run_id_for(self, trial_id: str) -> Optional[str]:
        return self._runs.get(trial_id)

    def _find(self, trial_id: str) -> Optional[str]:
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.{TRIAL_TAG} = '{trial_id}' and tags.`{_PARENT_TAG}` = '{self.parent_run_id}'",
            max_results=5,
        )
        return found[0].info.run_id if found else None

    def child_run(self, trial) -> str:
        """The child run of a trial: cached, else found by tag, else created."""
        from mlflow.entities import Param

        tid = trial.trial_id
        rid = self._runs.get(tid) or self._find(tid)
        if rid is None:
            baseline = bool(trial.config.get(self.baseline_key, False))
            tags = {_PARENT_TAG: self.parent_run_id, TRIAL_TAG: tid, "sdsnn.role": "trial",
                    "is_baseline": str(baseline).lower(), "status": "running"}
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"{'baseline' if baseline else 'trial'}-{tid}")
            rid = run.info.run_id
            params = [Param(k, _param_value(v)) for k, v in trial.config.items() if not k.startswith("__")]
            if params:
                self.client.log_batch(rid, params=params)
        else:
            info = self.client.get_run(rid).info
            if info.status != "RUNNING":
                self.client.update_run(rid, status="RUNNING")
        self._runs[tid] = rid
        return rid

    # ------------------------------------------------------------ Tune hooks
    def setup(self, **info) -> None:
        self._runs = {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.child_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric, RunTag

        rid = self._runs.get(trial.trial_id) or self.child_run(trial)
        step = int(result.get("epoch") or result.get("training_iteration") or 0)
        ts = _now_ms()
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if k not in NON_METRIC_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
                   and math.isfinite(float(v))]
        tags = [RunTag(k, str(result[k])) for k in ("hostname", "node_id", "pid", "run_dir") if k in result]
        self.client.log_batch(rid, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        rid = self._runs.get(trial.trial_id) or self.child_run(trial)
        status = ended_status(trial.last_result, self.total_epochs)
        self.client.set_tag(rid, "status", status)
        if status == "completed" and "error" in self.client.get_run(rid).data.tags:
            self.client.delete_tag(rid, "error")  # a failed trial that a retry completed
        self.client.set_terminated(rid, status={"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        rid = self._runs.get(trial.trial_id) or self.child_run(trial)
        nan = (trial.last_result or {}).get("trial_status") == "nan"
        self.client.set_tag(rid, "status", "nan" if nan else "failed")
        reason = "loss became NaN or infinite" if nan else error_line(trial)
        self.client.set_tag(rid, "error", reason)
        self.client.set_terminated(rid, status="FAILED")


def error_line(trial) -> str:
    """The last line of a failed trial's error (its exception), for logs and tags."""
    try:
        path = trial.error_file
        if path and Path(path).exists():
            lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
            return lines[-1][:500] if lines else "error"
    except Exception:  # pragma: no cover - best effort
        pass
    return "error"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """An http(s) tracking server that does not answer fails at once, before the study folder is
    made (MLflow's client would retry for minutes). Other stores (sqlite, file) are not probed."""
    import urllib.error
    import urllib.request

    from sdsnn.errors import UserError

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # it answers (a proxy or an older server without /health): let MLflow talk to it
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"--tracking-uri {uri}: no MLflow server answers ({reason}); start one "
                        f"('mlflow server --port N') or leave --tracking-uri out to use the study's own store") from None


def serve_ui(study_dir: str | Path, *, port: int = 5000, echo=print, wait: bool = True):
    """Start ``mlflow ui`` bound to 127.0.0.1 for the study's store; print its address.

    With ``wait=False`` the server process is returned (the caller stops it).
    """
    import socket
    import sys

    from sdsnn.errors import UserError

    from .studyfile import read_study

    info = read_study(study_dir)  # one-line errors for a missing or broken study.json
    uri = info.get("tracking_uri") or default_tracking_uri(Path(study_dir))
    if not uri.startswith("sqlite:"):
        echo(f"this study logs to the tracking server {uri}; open it there")
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise UserError(f"--port {port}: already in use on 127.0.0.1; pick another with --port") from None
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    art = Path(study_dir).resolve() / "mlartifacts"
    if art.exists():
        cmd += ["--default-artifact-root", art.as_uri()]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    # its own process group: mlflow ui forks a web worker and task consumers, stop_ui ends them all
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    echo(f"MLflow UI for {Path(study_dir).name}: http://127.0.0.1:{port}  (Ctrl-C to stop)")
    if not wait:
        return proc

    def _on_term(signum, frame):  # SIGTERM (kill, a service manager): the same stop as Ctrl-C
        raise KeyboardInterrupt

    import signal

    try:
        old = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not the main thread
        old = None
    try:
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_ui(proc)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return None


def stop_ui(proc: "subprocess.Popen", timeout_s: float = 10.0) -> None:
    """Stop a server started by :func:`serve_ui` and every process it forked."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            continue
        # the group leader is gone; give its children a moment, then make sure
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)

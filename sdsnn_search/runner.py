"""The search runner: a validated space -> a study folder ``results/<study>/``.

Ray Tune's :class:`~ray.tune.Tuner` runs the trials; Optuna proposes them through
:class:`StudySearch` (Ray's ``OptunaSearch`` in multi-objective mode, an Optuna RDB storage in the
study folder, constraints recorded with ``Trial.set_constraint``, and one dense baseline trial
issued first). MLflow records the study from the driver (:mod:`sdsnn_search.tracking`); the trials
table (``trials.csv`` + ``trials.parquet``) is rewritten atomically as trials end.

Resume: Ray's experiment state lives in ``<study>/ray``; :func:`resume_study` restores it with
``Tuner.restore`` (same trainable, searcher state restored), so finished trials are kept and
interrupted ones continue from their last epoch checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

for _k, _v in (
    ("RAY_USAGE_STATS_ENABLED", "0"),
    ("RAY_AUTH_MODE", "disabled"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("TUNE_PRINT_ALL_TRIAL_ERRORS", "0"),
    ("TUNE_GLOBAL_CHECKPOINT_S", "1"),  # snapshot experiment state often: resume loses ~nothing
    ("RAY_AIR_NEW_OUTPUT", "0"),
    ("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1"),
    ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
):
    os.environ.setdefault(_k, _v)

import pandas as pd  # noqa: E402

from sdsnn.errors import ConfigError, UserError  # noqa: E402
from sdsnn.plugins import ENV as PLUGINS_ENV, load_plugins, plugins_env_value  # noqa: E402

from .space import KNOWN_METRICS, SearchSpec, load_space, parse_space  # noqa: E402
from .stop import STOP, cut_short, ended_status  # noqa: E402
from .studyfile import STUDY_FILE, load_study_plugins, read_study, write_study  # noqa: E402
from .trainable import BASELINE_KEY, NON_METRIC_KEYS, TrialDiverged, run_trial  # noqa: E402

__all__ = ["run_study", "resume_study", "StudyOutcome", "check_resources", "read_study", "STUDY_FILE"]

SPEC_FILE = "spec.yaml"
RAY_DIR = "ray"



# ------------------------------------------------------------------ Optuna side
class Constraints:
    """The space's constraints as Optuna constraint values (<= 0 feasible) from final metrics.

    :class:`StudySearch` records them with ``Trial.set_constraint`` before telling Optuna the
    result (optuna 5 deprecates ``constraints_func``); every sampler reads ``trial.constraints``.
    """

    def __init__(self, constraints: list[dict[str, Any]]) -> None:
        self.constraints = [dict(c) for c in constraints]

    def values(self, metrics: dict[str, Any]) -> dict[str, float]:
        out = {}
        for c in self.constraints:
            key = f"{c['metric']}{c['op']}{c['value']:g}"
            v = metrics.get(c["metric"])
            if not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                out[key] = 1.0
            elif c["op"] == ">=":
                out[key] = float(c["value"]) - float(v)
            else:
                out[key] = float(v) - float(c["value"])
        return out


def _attr_metrics(spec: SearchSpec) -> tuple[str, ...]:
    """The final metrics each Optuna trial records as user attributes."""
    return tuple(dict.fromkeys([*KNOWN_METRICS, *(c.metric for c in spec.constraints)]))


def _constraints(spec: SearchSpec) -> Optional[Constraints]:
    return Constraints([c.model_dump() for c in spec.constraints]) if spec.constraints else None


def _finite(result: dict[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The entries of ``result`` named in ``keys`` that are finite numbers, as floats."""
    return {k: float(result[k]) for k in keys
            if isinstance(result.get(k), (int, float)) and math.isfinite(float(result[k]))}


def make_sampler(spec: SearchSpec):
    """The Optuna sampler named by ``search.sampler`` (seeded, with constraints)."""
    import optuna

    s = spec.search
    n = s.num_samples
    if s.sampler == "nsga2":
        pop = s.population_size or max(4, min(50, n // 3))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=s.seed)
    if s.sampler == "tpe":
        start = s.n_startup_trials or max(3, min(10, n // 3))
        return optuna.samplers.TPESampler(n_startup_trials=start, seed=s.seed,
                                          multivariate=True)
    if s.sampler == "gp":
        start = s.n_startup_trials or max(3, min(10, n // 3))
        return optuna.samplers.GPSampler(n_startup_trials=start, seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def optuna_space(spec: SearchSpec) -> dict[str, Any]:
    """Optuna distributions keyed by dotted config path."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for path, p in spec.params.items():
        if p.type == "uniform":
            out[path] = FloatDistribution(p.low, p.high, step=p.step)
        elif p.type == "loguniform":
            out[path] = FloatDistribution(p.low, p.high, log=True)
        elif p.type == "int":
            out[path] = IntDistribution(int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[path] = CategoricalDistribution(list(p.choices))
    return out


def _optuna_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch that issues the dense baseline first and records final metrics as user attrs."""

        def __init__(self, *args, baseline: bool = True, attr_metrics: tuple[str, ...] = (),
                     constraints: Optional[Constraints] = None, total_epochs: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self._total_epochs = int(total_epochs)
            self._constraints = constraints
            self._baseline_pending = baseline
            self._baseline_trial_id: Optional[str] = None
            self._attr_metrics = tuple(attr_metrics)

        def suggest(self, trial_id: str):
            if self._baseline_pending:
                self._baseline_pending = False
                self._baseline_trial_id = trial_id
                return {BASELINE_KEY: True}
            cfg = super().suggest(trial_id)
            if cfg is None:
                return None
            try:
                self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
            except Exception:  # pragma: no cover - storage hiccup must not stop the study
                pass
            cfg = dict(cfg)
            cfg[BASELINE_KEY] = False
            return cfg

        def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
            if trial_id == self._baseline_trial_id or trial_id not in self._ot_trials:
                return
            if cut_short(result, getattr(self, "_total_epochs", 0)):
                return  # stopped by Ctrl-C: Optuna hears of it when the resumed trial finishes
            if result:
                ot_trial = self._ot_trials[trial_id]
                for k, v in _finite(result, self._attr_metrics).items():
                    try:
                        ot_trial.set_user_attr(k, v)
                    except Exception:  # already finished (re-sent after a resume)
                        break
                if self._constraints is not None:
                    for key, v in self._constraints.values(result).items():
                        try:
                            ot_trial.set_constraint(key, v)
                        except Exception:  # already finished (re-sent after a resume)
                            break
                bad = len(_finite(result, self.metric)) < len(self.metric)
                if bad or result.get("trial_status") == "nan":
                    result, error = None, True
            super().on_trial_complete(trial_id, result=result, error=error)

    return StudySearch


# ------------------------------------------------------------------ trials table
def _atomic_df(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".csv":
        df.to_csv(tmp, index=False)
    else:
        pq = df.copy()
        for c in pq.columns:
            if pq[c].dtype == object:
                kinds = {type(v) for v in pq[c].dropna()}
                if len(kinds) > 1:
                    pq[c] = pq[c].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
        pq.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _get_path(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _trial_status(trial, total_epochs: int = 0) -> str:
    st = str(trial.status)
    last = trial.last_result or {}
    if st == "TERMINATED":
        return ended_status(last, total_epochs)  # "interrupted" by Ctrl-C / SIGTERM: resume continues it
    if st == "ERROR":
        return "nan" if last.get("trial_status") == "nan" else "failed"
    if st == "RUNNING":
        return "running"
    return "pending"


def _table_callback_class():
    from ray.tune import Callback

    class TrialsTable(Callback):
        """Keeps ``trials.csv`` / ``trials.parquet`` up to date from the driver."""

        def __init__(self, study_dir: str, spec_dict: dict[str, Any], base_config: dict[str, Any], tracker=None,
                     total_epochs: int = 0):
            self.study_dir = study_dir
            self.total_epochs = int(total_epochs)
            self.spec_dict = spec_dict
            from sdsnn.config import ExperimentConfig

            self.base_config = ExperimentConfig.model_validate(base_config).to_dict()
            self.tracker = tracker
            self.rows: dict[str, dict[str, Any]] = {}

        def __getstate__(self):
            d = self.__dict__.copy()
            d["rows"] = {}
            return d

        def setup(self, **info) -> None:
            self.rows = {}
            p = Path(self.study_dir) / "trials.parquet"
            if p.exists():
                for r in pd.read_parquet(p).to_dict("records"):
                    self.rows[str(r["trial_id"])] = r

        def row(self, trial) -> dict[str, Any]:
            last = dict(trial.last_result or {})
            baseline = bool(trial.config.get(BASELINE_KEY, False))
            tid = trial.trial_id
            old = self.rows.get(tid, {})
            r: dict[str, Any] = {
                "trial_id": tid,
                "status": _trial_status(trial, self.total_epochs),
                "is_baseline": baseline,
                "dataset": self.spec_dict["dataset"],
                "duration_s": float(last.get("time_total_s", old.get("duration_s", float("nan"))) or 0.0),
                "epochs": int(last.get("epoch", 0) or 0),
                "run_dir": last.get("run_dir") or str(Path(self.study_dir).resolve() / "trials" / tid),
                "checkpoint_path": trial.checkpoint.path if trial.checkpoint is not None else None,
                "mlflow_run_id": (self.tracker.run_id_for(tid) if self.tracker else None) or old.get("mlflow_run_id"),
                "node_id": last.get("node_id"),
                "hostname": last.get("hostname"),
                "pid": last.get("pid"),
                "ended_at": old.get("ended_at"),  # set once, when the driver sees the trial end
            }
            for path in self.spec_dict["params"]:
                v = _get_path(self.base_config, path) if baseline else trial.config.get(path)
                r[f"config/{path}"] = v
            for k, v in last.items():
                if k in NON_METRIC_KEYS or k in r or k.startswith("config/"):
                    continue
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    r[k] = float(v)
            return r

        def update(self, trial) -> None:
            self.rows[trial.trial_id] = self.row(trial)

        def write(self) -> pd.DataFrame:
            df = trials_frame(list(self.rows.values()), self.spec_dict)
            d = Path(self.study_dir)
            _atomic_df(df, d / "trials.csv")
            _atomic_df(df, d / "trials.parquet")
            return df

        def on_trial_start(self, iteration, trials, trial, **info):
            self.update(trial)
            self.rows[trial.trial_id]["status"] = "running"
            self.write()

        # Tune calls these before it sets the trial's final status: take it from the event
        def on_trial_complete(self, iteration, trials, trial, **info):
            self.update(trial)
            self.rows[trial.trial_id]["status"] = ended_status(trial.last_result, self.total_epochs)
            self.rows[trial.trial_id]["ended_at"] = time.time()
            self.write()

        def on_trial_error(self, iteration, trials, trial, **info):
            self.update(trial)
            nan = (trial.last_result or {}).get("trial_status") == "nan"
            self.rows[trial.trial_id]["status"] = "nan" if nan else "failed"
            self.rows[trial.trial_id]["ended_at"] = time.time()
            self.write()

        def on_experiment_end(self, trials, **info):
            for t in trials:
                self.update(t)
            self.write()

    return TrialsTable


def trials_frame(rows: list[dict[str, Any]], spec_dict: dict[str, Any]) -> pd.DataFrame:
    """Rows -> the trials table with the contract's leading columns first."""
    lead = ["trial_id", "status", "is_baseline", "dataset", "duration_s", "epochs", "run_dir",
            "checkpoint_path", "mlflow_run_id", "node_id", "hostname", "pid", "ended_at"]
    cfg_cols = [f"config/{p}" for p in spec_dict["params"]]
    objs = [o["metric"] for o in spec_dict["objectives"]]
    df = pd.DataFrame(rows)
    for c in lead + cfg_cols + objs:
        if c not in df.columns:
            df[c] = None
    rest = sorted(c for c in df.columns if c not in set(lead + cfg_cols + objs))
    df = df[lead + cfg_cols + objs + rest]
    if len(df):
        df["is_baseline"] = df["is_baseline"].astype(bool)
        df = df.sort_values(["is_baseline", "trial_id"], ascending=[False, True]).reset_index(drop=True)
    return df


# ------------------------------------------------------------------ resources / Ray
def _local_gpus() -> int:
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # pragma: no cover
        return 0


def check_resources(spec: SearchSpec, where: str, *, cluster: Optional[dict[str, float]] = None) -> None:
    """Reject per-trial resources no node can provide (before anything is created)."""
    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    if cluster is None:
        have_cpu = float(os.cpu_count() or 1)
        have_gpu = float(_local_gpus()) if gpu > 0 else 0.0
        what = "this machine"
    else:
        have_cpu, have_gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
        what = "the Ray cluster"
    if cpu > have_cpu:
        raise ConfigError(f"{where}: field 'resources.cpu': {cpu:g} CPUs per trial but {what} has {have_cpu:g} "
                          f"(lower resources.cpu, or join a bigger cluster with --address)")
    if gpu > have_gpu:
        raise ConfigError(f"{where}: field 'resources.gpu': {gpu:g} GPUs per trial but {what} has {have_gpu:g} "
                          f"(set resources.gpu: 0, or join a cluster with GPUs via --address)")


def _init_ray(address: Optional[str]) -> bool:
    """Start (or join) Ray. Returns True when this call started it (so we shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=True,
                                  logging_level="WARNING")
    if address:
        _probe_ray_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"--address {address}: cannot join the Ray cluster ({str(e).splitlines()[0]}); "
                            f"start it with 'ray start --head' or drop --address") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, **kwargs)
        _start_reaper()
    return True


def _probe_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` that nothing answers on fails in seconds (ray.init would retry for minutes)."""
    if address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT of a Ray head (e.g. 127.0.0.1:6379) or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise UserError(f"--address {address}: no Ray head answers there ({e.strerror or e}); start it with "
                        f"'ray start --head --port {port}' or drop --address") from None


_REAPER = r"""
import os, sys, time, signal
driver = int(sys.argv[1])
def tree(root):
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c != os.getpid()]
        out += kids
        todo += kids
    return out
last = []
while True:
    try:
        os.kill(driver, 0)
        with open(f"/proc/{driver}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                raise ProcessLookupError
    except (ProcessLookupError, FileNotFoundError):
        for p in last:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        break
    last = tree(driver)
    time.sleep(0.5)
"""


def _start_reaper() -> None:
    """Watch this driver; if it dies without cleaning up (SIGKILL), kill the Ray processes it started.

    Ray's raylet and workers share the driver's fate, but some of its agents linger for minutes.
    Linux only (reads /proc); elsewhere Ray's own cleanup applies.
    """
    import subprocess
    import sys

    if not Path("/proc/self/stat").exists():
        return
    try:
        subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid())], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:  # pragma: no cover
        pass


# ------------------------------------------------------------------ study
@dataclass
class StudyOutcome:
    """What a finished (or interrupted) study produced."""

    study_dir: Path
    name: str
    table: pd.DataFrame
    interrupted: bool = False
    tracking_uri: str = ""
    parent_run_id: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def _default_name(spec: SearchSpec) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{spec.name or spec.dataset}-{stamp}"


def run_study(
    space: str | Path | SearchSpec,
    *,
    results_dir: str | Path = "results",
    name: Optional[str] = None,
    num_samples: Optional[int] = None,
    max_concurrent: Optional[int] = None,
    epochs: Optional[int] = None,
    seed: Optional[int] = None,
    address: Optional[str] = None,
    tracking_uri: Optional[str] = None,
    data_root: Optional[str] = None,
    trainable: Optional[Callable] = None,
    progress: bool = True,
) -> StudyOutcome:
    """Run a new study from a space file (or an already validated spec).

    All validation happens before anything is written (study folder, MLflow). ``trainable``
    replaces :func:`sdsnn_search.trainable.run_trial` (tests and benchmarks); it receives the same
    keyword arguments (``base``, ``study_dir``, ``data_root``).
    """
    overrides = {"search.num_samples": num_samples, "search.max_concurrent": max_concurrent,
                 "search.epochs": epochs, "search.seed": seed}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(space, SearchSpec):
        where = "<spec>"
        from sdsnn.config import apply_overrides

        spec = parse_space(apply_overrides(space.to_dict(), overrides), where) if overrides else space
        space_file = None
    else:
        where = str(space)
        spec = load_space(space, overrides)
        space_file = str(Path(space).resolve())
    study_name = name or _default_name(spec)
    if not study_name or "/" in study_name or study_name.startswith("."):
        raise UserError(f"--name '{study_name}': use a plain folder name (letters, digits, '-', '_')")
    study_dir = Path(results_dir) / study_name
    if (study_dir / STUDY_FILE).exists():
        raise UserError(f"{study_dir}: a study with this name exists; continue it with "
                        f"'sdsnn-search resume {study_dir}' or pick another --name")
    if study_dir.exists() and any(study_dir.iterdir()):
        raise UserError(f"{study_dir}: folder exists and is not empty; pick another --name or --results-dir")
    if not address:
        import ray

        if not ray.is_initialized():
            check_resources(spec, where)
        # local trials read the data here: a missing dataset fails now, not once per trial
        # (on a cluster the workers' data roots count, so the driver does not check its own)
        from sdsnn.data import ensure_available

        ensure_available(spec.trial_config({}, baseline=True, data_root=data_root).data)
    if tracking_uri:
        from .tracking import check_tracking_uri

        check_tracking_uri(tracking_uri)
    started = _init_ray(address)
    try:
        if address or not started:
            import ray

            check_resources(spec, where, cluster=ray.cluster_resources())
        study_dir = study_dir.resolve()
        new_dirs = []  # the folders this call creates, deepest first (removed again if empty on failure)
        d = study_dir
        while not d.exists():
            new_dirs.append(d)
            d = d.parent
        study_dir.mkdir(parents=True, exist_ok=True)
        try:  # claim the name: of two runs started with it at once, only the first goes on
            os.close(os.open(study_dir / STUDY_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise UserError(f"{study_dir}: another run started a study with this name meanwhile; pick another "
                            f"--name") from None
        uri = tracking_uri or _default_uri(study_dir)
        info = {
            "name": study_name,
            "dataset": spec.dataset,
            "space_file": space_file,
            "objectives": [o.model_dump() for o in spec.objectives],
            "constraints": [c.model_dump() for c in spec.constraints],
            "reference_point": spec.reference_point,
            "tracking_uri": uri,
            "parent_run_id": None,
            "experiment_name": study_name,
            "baseline_trial_id": None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seed": spec.search.seed,
            "data_root": data_root,
            "trainable": _trainable_ref(trainable),
            "address": address,
            "num_samples": spec.search.num_samples,
            "plugins": plugins_env_value(),  # loaded again on resume
        }
        (study_dir / SPEC_FILE).write_text(spec.to_yaml())
        write_study(study_dir, info)
        from .tracking import start_study_run

        try:
            exp_id, parent = start_study_run(
                tracking_uri=uri, experiment_name=study_name, study_dir=study_dir, study_name=study_name,
                spec_dict=spec.to_dict(), space_file=space_file, seed=spec.search.seed,
                artifact_location=(study_dir / "mlartifacts").as_uri() if tracking_uri is None else None,
            )
        except Exception as e:
            # nothing half-written: remove exactly what this call wrote (the study's files, its own
            # MLflow store), then the folders it made, each only if empty
            ours = [study_dir / SPEC_FILE, study_dir / STUDY_FILE, study_dir / (STUDY_FILE + ".tmp")]
            if tracking_uri is None:
                ours += [*study_dir.glob("mlflow.db*"), study_dir / "mlartifacts"]
            for f in ours:
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() and not f.is_symlink() else f.unlink(missing_ok=True)
            for d in new_dirs:
                try:
                    d.rmdir()
                except OSError:
                    break
            if tracking_uri is None:
                raise
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UserError(f"--tracking-uri {tracking_uri}: MLflow could not start the study's run there ({why}); "
                            f"check the URI (http(s)://HOST:PORT, sqlite:///PATH or file:PATH) and the store, or leave "
                            f"--tracking-uri out to use the study's own store") from None
        info.update(parent_run_id=parent, experiment_id=exp_id)
        write_study(study_dir, info)
        return _execute(spec, study_dir, info, trainable=trainable, restore=False, progress=progress)
    finally:
        if started:
            _shutdown_ray()


def _default_uri(study_dir: Path) -> str:
    from .tracking import default_tracking_uri

    return default_tracking_uri(study_dir)


def _trainable_ref(fn: Optional[Callable]) -> Optional[str]:
    if fn is None:
        return None
    return f"{fn.__module__}:{fn.__qualname__}"


def _resolve_trainable(ref: Optional[str]) -> Optional[Callable]:
    if not ref:
        return None
    import importlib

    mod, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(mod)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def resume_study(
    study_dir: str | Path,
    *,
    address: Optional[str] = None,
    trainable: Optional[Callable] = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> StudyOutcome:
    """Continue an interrupted study: finished trials are kept, unfinished ones continue.

    ``retry_failed``: trials that failed (raised) run again too, from their last epoch
    checkpoint; a trial whose loss became NaN stays as it was (it would diverge again).
    """
    study_dir = Path(study_dir)
    info = read_study(study_dir)
    recorded_plugins = info.get("plugins")
    load_study_plugins(study_dir, info)
    info["plugins"] = plugins_env_value()
    spec = load_space(study_dir / SPEC_FILE)
    from ray.tune import Tuner

    if not Tuner.can_restore(str((study_dir / RAY_DIR).resolve())):
        raise UserError(f"{study_dir}: no Ray experiment state to resume (the study never started); "
                        f"delete the folder and run it again")
    df = _read_table(study_dir) if info.get("finished") is True and not retry_failed else None
    if df is not None and "status" in df.columns:  # nothing to run: no Ray, just the summary
        from .progress import ProgressView

        counts = _counts(df)
        if info["plugins"] != recorded_plugins:  # a plugin named at its new place (a moved study)
            write_study(study_dir, info)
        if progress:
            hint = (f"; {counts['failed']} failed: run them again with --retry-failed" if counts["failed"] else "")
            print(f"{study_dir}: the study has finished, nothing to resume{hint}")
        outcome = StudyOutcome(study_dir.resolve(), info["name"], df, False, info["tracking_uri"],
                               info.get("parent_run_id") or "", counts)
        ProgressView(spec, study_dir, enabled=progress).final(outcome)
        return outcome
    if trainable is None:
        trainable = _resolve_trainable(info.get("trainable"))
    if not (address or info.get("address")):
        import ray

        if not ray.is_initialized():
            check_resources(spec, str(study_dir / SPEC_FILE))
    started = _init_ray(address or info.get("address"))
    try:
        from .tracking import reopen_study_run

        study_dir = study_dir.resolve()
        if info.get("parent_run_id"):
            reopen_study_run(info["tracking_uri"], info["parent_run_id"])
        return _execute(spec, study_dir, info, trainable=trainable, restore=True, progress=progress,
                        retry_failed=retry_failed)
    finally:
        if started:
            _shutdown_ray()


def _shutdown_ray() -> None:
    import ray

    try:
        ray.shutdown()
    except Exception:  # pragma: no cover
        pass


class _Interrupted(Exception):
    pass


class _DropLines(logging.Filter):
    """Drops log records that contain one of ``fragments``."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(f in msg for f in self.fragments)


# Tune's lines that mislead here: its "Resume experiment with: Tuner.restore(...)" (ours says
# `sdsnn-search resume DIR`; a Tuner.restore by hand would lose the searcher setup), and "Failed to
# fetch metrics" for trials that never reported (our trials table is the record of the study).
_TUNE_NOISE = {"ray.tune.tune": ("Tuner.restore(", "Trials did not complete"),  # our summary names failures
               "ray.tune.analysis.experiment_analysis": ("Failed to fetch metrics",)}


def _quiet_tune() -> None:
    for name, fragments in _TUNE_NOISE.items():
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in log.filters):
            log.addFilter(_DropLines(*fragments))


def _optuna_storage(study_dir: Path):
    """The study's Optuna storage (SQLite in the study folder; waits up to 60 s for a lock)."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(study_dir) / 'optuna.db'}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _tell_missed_completions(study_dir: Path, study_name: str, spec: SearchSpec, df: pd.DataFrame) -> None:
    """Give Optuna, from the trials table, the completed search trials the searcher never told it.

    Run at the end of every run and resume; two cases, both with the constraints and user
    attributes the searcher would have recorded:

    - still RUNNING in Optuna: a trial that ends just as a Ctrl-C stops the study can be marked
      finished by Ray without its completion reaching the searcher (seen in 2 of 8 runs of the
      Ctrl-C test here): it is told now;
    - FAIL in Optuna: a failed trial that ``resume --retry-failed`` ran again (Ray's concurrency
      limiter and OptunaSearch drop a second completion of a trial, and Optuna cannot tell a
      finished trial twice): its result joins the study as a new trial with the same parameters
      and sampler bookkeeping (NSGA-II's generation), user attribute ``retry_of_number``.
    """
    done = df[(df["status"] == "completed") & ~df["is_baseline"].astype(bool)] if len(df) else df
    if not len(done):
        return
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=_optuna_storage(study_dir))
    except KeyError:  # no searched trial was ever asked
        return
    told: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        told.setdefault(t.user_attrs.get("ray_trial_id"), []).append(t)
    metrics, attr_keys, cons = spec.metric_names(), _attr_metrics(spec), _constraints(spec)
    State = optuna.trial.TrialState
    for _, row in done.iterrows():
        mine = told.get(str(row["trial_id"]), [])
        result = row.to_dict()
        values = _finite(result, metrics)
        if not mine or len(values) < len(metrics):
            continue
        attrs, constraints = _finite(result, attr_keys), (cons.values(result) if cons else {})
        if len(mine) == 1 and mine[0].state == State.RUNNING:
            trial = optuna.trial.Trial(study, mine[0]._trial_id)
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            for k, v in constraints.items():
                trial.set_constraint(k, v)
            study.tell(trial, [values[m] for m in metrics])
        elif all(t.state == State.FAIL for t in mine):
            failed = mine[0]
            kept = {k: v for k, v in failed.user_attrs.items() if k != "interrupted"}
            study.add_trial(optuna.trial.create_trial(
                params=failed.params, distributions=failed.distributions, values=[values[m] for m in metrics],
                user_attrs={**kept, **attrs, "retry_of_number": failed.number},
                system_attrs={k: v for k, v in failed.system_attrs.items() if not k.startswith("constraints")},
                constraints=constraints or None))


def _close_dangling_optuna_trials(study_dir: Path, study_name: str) -> None:
    """Mark Optuna trials left RUNNING by a killed driver (asked, never run) as FAIL."""
    import optuna

    try:
        storage = _optuna_storage(study_dir)
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception:  # no study yet (e.g. only the baseline ran)
        return
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def _wrap_trainable(fn: Callable, plugins: str, diverged: frozenset[str]) -> Callable:
    """What each trial runs: ``fn``, after loading the driver's plugins (``SDSNN_PLUGINS``, file
    paths absolute), so that every worker knows their backbones and datasets however Ray was
    started (by the command, by the caller's own ``ray.init()``, or a cluster joined with
    ``--address``); a trial in ``diverged`` (its loss became NaN before) ends so again at once
    instead of training again under ``--retry-failed``."""

    @functools.wraps(fn)
    def trial(config: dict[str, Any], **kwargs: Any) -> Any:
        # the driver's list replaces what the worker inherited (a relative path there would
        # resolve against the worker's own directory)
        if plugins:
            os.environ[PLUGINS_ENV] = plugins
        else:
            os.environ.pop(PLUGINS_ENV, None)
        load_plugins()
        if diverged:
            from ray import tune

            tid = tune.get_context().get_trial_id()
            if tid in diverged:
                raise TrialDiverged(f"trial {tid}: the loss became NaN before; not run again (it would diverge again)")
        return fn(config, **kwargs)

    return trial


def _read_table(study_dir: Path) -> Optional[pd.DataFrame]:
    """The study's trials table (parquet, else the CSV copy), or None when it has none."""
    try:
        return pd.read_parquet(study_dir / "trials.parquet")
    except Exception:  # no table yet, or an unreadable one: the CSV copy
        try:
            return pd.read_csv(study_dir / "trials.csv")
        except Exception:
            return None


def _counts(df: pd.DataFrame) -> dict[str, int]:
    return {s: int((df["status"] == s).sum()) for s in ("completed", "failed", "nan", "interrupted", "running", "pending")}


def _diverged_trials(study_dir: Path) -> frozenset[str]:
    """Ids of the study's trials whose loss became NaN, from its trials table."""
    df = _read_table(study_dir)
    if df is None or "status" not in df.columns:
        return frozenset()
    return frozenset(df.loc[df["status"] == "nan", "trial_id"].astype(str))


def _execute(spec: SearchSpec, study_dir: Path, info: dict[str, Any], *, trainable: Optional[Callable],
             restore: bool, progress: bool, retry_failed: bool = False) -> StudyOutcome:
    import optuna
    from ray import tune

    from .progress import ProgressView
    from .tracking import MlflowTracker, end_study_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    diverged = _diverged_trials(study_dir) if retry_failed else frozenset()
    fn = tune.with_parameters(_wrap_trainable(trainable or run_trial, plugins_env_value(), diverged),
                              base=spec.base_config(), study_dir=str(study_dir), data_root=info.get("data_root"))
    fn = tune.with_resources(fn, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    ray_path = str(study_dir / RAY_DIR)
    tracker = MlflowTracker(info["tracking_uri"], info["experiment_id"], info["parent_run_id"],
                            total_epochs=spec.epochs)
    table = _table_callback_class()(str(study_dir), spec.to_dict(), spec.base_config(), tracker,
                                    total_epochs=spec.epochs)
    view = ProgressView(spec, study_dir, enabled=progress)
    _quiet_tune()  # before Tuner.restore, which reads the trials' results (and warns of the unstarted)
    if restore:
        # callbacks come back from the pickled Tuner; fresh ones are passed through the run config
        tuner = tune.Tuner.restore(ray_path, trainable=fn, resume_unfinished=True, resume_errored=retry_failed)
        rc = tuner._local_tuner.get_run_config()
        rc.callbacks = [tracker, table, view]
    else:
        storage = _optuna_storage(study_dir)
        searcher = _optuna_search_class()(
            space=optuna_space(spec), metric=spec.metric_names(), mode=spec.modes(),
            sampler=make_sampler(spec), storage=storage, study_name=info["name"],
            baseline=spec.search.baseline, attr_metrics=_attr_metrics(spec), constraints=_constraints(spec),
            total_epochs=spec.epochs,
        )
        scheduler = None
        if spec.scheduler.type == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="training_iteration", metric=spec.scheduler.metric,
                                      mode=spec.scheduler.mode, max_t=spec.epochs,
                                      grace_period=spec.scheduler.grace_period,
                                      reduction_factor=spec.scheduler.reduction_factor)
        tuner = tune.Tuner(
            fn,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler,
                num_samples=spec.search.num_samples + (1 if spec.search.baseline else 0),
                max_concurrent_trials=spec.search.max_concurrent,
                time_budget_s=spec.search.time_budget_s,
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=RAY_DIR, storage_path=str(study_dir), callbacks=[tracker, table, view],
                failure_config=tune.FailureConfig(max_failures=spec.search.max_failures, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
    interrupted = False
    STOP.clear()
    graceful = hasattr(signal, "SIGUSR1")

    def _on_stop(signum, frame):
        # Ctrl-C or SIGTERM: record it, then ask Ray Tune for its own graceful stop (SIGUSR1
        # runs the handler Tune installs in fit(): stop the trials, save the experiment state).
        # A second signal stops at once.
        STOP.count += 1
        if STOP.count > 1 or not graceful:
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)

    saved: dict[int, Any] = {}
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Tune leaves SIGINT to _on_stop
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.getsignal(sig)
            signal.signal(sig, _on_stop)
    except ValueError:  # not the main thread: no handlers, Tune's defaults apply
        saved.clear()
    try:
        with view:
            tuner.fit()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for sig, h in saved.items():
            signal.signal(sig, h)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env
    interrupted = interrupted or STOP.requested
    df = table.write() if table.rows else trials_frame([], spec.to_dict())
    try:
        _tell_missed_completions(study_dir, info["name"], spec, df)
    except Exception as e:  # bookkeeping trouble must not hide the results
        print(f"warning: could not tell Optuna of every completed trial: {e}")
    if not interrupted:
        _close_dangling_optuna_trials(study_dir, info["name"])
    counts = _counts(df)
    expected = spec.search.num_samples + (1 if spec.search.baseline else 0)
    finished = counts["completed"] + counts["failed"] + counts["nan"]
    if finished < expected and spec.search.time_budget_s is None:
        interrupted = True
    base = df[df["is_baseline"]] if len(df) else df
    if len(base):
        info["baseline_trial_id"] = str(base.iloc[0]["trial_id"])
    info["finished"] = not interrupted
    info["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_study(study_dir, info)
    summary = {f"n_{k}": v for k, v in counts.items()}
    try:
        end_study_run(info["tracking_uri"], info["parent_run_id"], "KILLED" if interrupted else "FINISHED",
                      summary=summary,
                      artifacts=(study_dir / "trials.csv", study_dir / STUDY_FILE) if not interrupted else (),
                      study_dir=study_dir)
    except Exception as e:  # tracking trouble must not hide the results
        print(f"warning: could not close the MLflow parent run: {e}")
    outcome = StudyOutcome(study_dir, info["name"], df, interrupted, info["tracking_uri"], info["parent_run_id"], counts)
    view.final(outcome)
    return outcome

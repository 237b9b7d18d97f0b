"""The Ray Tune trainable: one trial = one call of :func:`sdsnn.train.train`.

A plain function trainable. Its Ray config holds the searched values by dotted path plus
``is_baseline``; the fixed part of the experiment comes bound through ``tune.with_parameters``.
Every epoch it reports the metrics with a small checkpoint: a marker naming the trial and the
epoch (``run_dir/.tune-checkpoint/trial.json``). The training state itself stays in the trial's run
folder (``<study>/trials/<id>/checkpoint.pt``), inside the study folder that is Ray's
``storage_path``, so every node that can write Ray's checkpoints can read it. (Reporting the run
folder itself made Ray copy ``checkpoint.pt`` every epoch: 1.3 GB for the reference CIFAR-10
network.) When Ray restarts a trial (retry or ``resume``), training continues from the run
folder's checkpoint. A trial whose loss became
NaN reports its last metrics and then raises :class:`TrialDiverged`, so Ray, Optuna and MLflow all
record it as failed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Optional

__all__ = ["run_trial", "TrialDiverged", "trial_params", "FINAL_NAME", "BASELINE_KEY", "NON_METRIC_KEYS",
           "MARKER_DIR", "MARKER_NAME"]

#: Written into the run folder when a trial ends; a restarted trial that finds it re-reports it.
FINAL_NAME = "final.json"
#: The checkpoint reported to Ray every epoch: ``run_dir/MARKER_DIR/MARKER_NAME`` (trial id, epoch).
MARKER_DIR = ".tune-checkpoint"
MARKER_NAME = "trial.json"
BASELINE_KEY = "is_baseline"

#: Keys of a reported Tune result that are bookkeeping (ours or Ray's), not metrics.
NON_METRIC_KEYS = frozenset({
    "trial_status", "run_dir", "hostname", "node_id", "pid", "trial_id", "date", "experiment_id",
    "node_ip", "done", "should_checkpoint", "time_this_iter_s", "timestamp", "timesteps_total",
    "episodes_total", "iterations_since_restore", "time_since_restore", "checkpoint_dir_name",
    "training_iteration", "time_total_s", "config",
})


class TrialDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """The searched values of a Ray trial config (dotted path -> value)."""
    return {k: v for k, v in config.items() if k != BASELINE_KEY and not k.startswith("__")}


def _where() -> dict[str, Any]:
    import ray

    try:
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside Ray
        node = None
    return {"node_id": node, "hostname": socket.gethostname(), "pid": os.getpid()}


def _atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def _report(metrics: dict[str, Any], run_dir: Path, trial_id: str) -> None:
    """``tune.report`` with the marker checkpoint (a few bytes; the state stays in ``run_dir``)."""
    from ray import tune
    from ray.tune import Checkpoint

    mark = run_dir / MARKER_DIR
    mark.mkdir(parents=True, exist_ok=True)
    epoch = metrics.get("epoch")
    _atomic_json(mark / MARKER_NAME, {"trial_id": trial_id, "epoch": int(epoch) if isinstance(epoch, (int, float))
                                      and math.isfinite(epoch) else None})
    tune.report(metrics, checkpoint=Checkpoint.from_directory(str(mark)))


def _slim(run_dir: Path, trial_id: str) -> None:
    """Slim a completed trial's checkpoint (:func:`sdsnn.train.slim_checkpoint`): it is only ever
    restored (export, reports), never resumed, since a restart finds ``final.json`` (written
    first). Keeps the model and masks and drops the training state (1.24 of the reference CIFAR-10
    network's 1.34 GB). Best effort: a failure leaves the full checkpoint, which restores the
    same model, and a warning; the trial stays completed."""
    import logging

    from sdsnn.train import CHECKPOINT_NAME, slim_checkpoint

    try:
        slim_checkpoint(run_dir)
    except Exception as e:  # noqa: BLE001 - a space saving must not fail a finished trial
        logging.getLogger(__name__).warning("trial %s: could not slim %s (%s); the full checkpoint "
                                            "stays", trial_id, Path(run_dir) / CHECKPOINT_NAME, e)


def restore_run_dir(src: Path, run_dir: Path, trial_id: str) -> None:
    """Make ``run_dir`` ready to resume from Ray's checkpoint folder ``src``.

    A marker checkpoint (this version) needs the run folder's own ``checkpoint.pt`` (or the
    ``final.json`` of a trial that had ended); a checkpoint without a marker is a full copy of the
    run folder (studies written before markers) and is copied back when the run folder lacks its
    checkpoint. Raises RuntimeError, naming the folder, when the state is nowhere to be found.
    """
    from sdsnn.train import CHECKPOINT_NAME

    marker = src / MARKER_NAME
    if marker.is_file():
        if (run_dir / CHECKPOINT_NAME).is_file() or (run_dir / FINAL_NAME).is_file():
            return
        epoch = json.loads(marker.read_text()).get("epoch")
        raise RuntimeError(
            f"trial {trial_id}: Ray restarted it after epoch {epoch}, but its run folder {run_dir} holds no "
            f"{CHECKPOINT_NAME}; the study folder must be on storage that every Ray node shares (a local path on "
            f"a single machine, or a shared file system on a cluster), and must not be cleaned while a study runs")
    if not (run_dir / CHECKPOINT_NAME).exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, run_dir, dirs_exist_ok=True)


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def run_trial(config: dict[str, Any], *, base: dict[str, Any], study_dir: str, data_root: Optional[str] = None) -> None:
    """Train one trial and report every epoch to Ray Tune.

    ``base`` is the fixed experiment config (dict, from :meth:`SearchSpec.base_config`),
    ``study_dir`` the study folder (run folders go to ``study_dir/trials/<trial_id>``).
    """
    from ray import tune

    from sdsnn.config import ExperimentConfig, apply_overrides
    from sdsnn.train import train

    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    baseline = bool(config.get(BASELINE_KEY, False))
    d = apply_overrides(base, {} if baseline else trial_params(config))
    if data_root:
        d = apply_overrides(d, {"data.data_root": data_root})
    d["name"] = f"{Path(study_dir).name}-{trial_id}"
    cfg = ExperimentConfig.model_validate(d)
    if baseline:
        cfg = cfg.dense_baseline()

    run_dir = Path(study_dir) / "trials" / trial_id
    where = _where()
    ckpt = tune.get_checkpoint()
    resume = False
    if ckpt is not None:
        # restarted trial (retry or study resume): continue from the run folder's checkpoint
        with ckpt.as_directory() as src:
            restore_run_dir(Path(src), run_dir, trial_id)
        resume = True
    final_path = run_dir / FINAL_NAME
    if resume and final_path.exists():
        final = json.loads(final_path.read_text())
        if final["status"] == "completed":  # a restart between final.json and the slimming
            _slim(run_dir, trial_id)
        metrics = {**final["metrics"], **where, "trial_status": final["status"], "run_dir": str(run_dir)}
        _report(metrics, run_dir, trial_id)
        if final["status"] == "nan":
            raise TrialDiverged(f"trial {trial_id}: the loss became NaN or infinite (recorded before the restart)")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(run_dir / "where.json", where)

    reported = [0]

    def on_epoch(metrics: dict, path: Optional[Path]) -> None:
        reported[0] += 1
        m = {**_finite(metrics), **where, "run_dir": str(run_dir)}
        nan = any(isinstance(v, float) and math.isnan(v) for k, v in m.items() if k == "train_loss")
        m["trial_status"] = "nan" if nan or "val_acc" not in m else "running"
        if m["trial_status"] == "nan":  # keep every objective present (NaN) so Tune sees the result
            from .space import KNOWN_METRICS

            for k in KNOWN_METRICS:
                m.setdefault(k, float("nan"))
        _report(m, run_dir, trial_id)

    result = train(cfg, run_dir, resume=resume, on_epoch=on_epoch, progress=False)
    _atomic_json(final_path, {"status": result.status, "metrics": _finite(result.metrics)})
    if result.status == "completed":
        _slim(run_dir, trial_id)
    if not reported[0]:  # resumed after the last epoch: nothing new was reported this time
        m = {**_finite(result.metrics), **where, "run_dir": str(run_dir), "trial_status": result.status}
        _report(m, run_dir, trial_id)
    if result.status != "completed":
        raise TrialDiverged(f"trial {trial_id}: the loss became NaN or infinite at epoch {len(result.history)}")

"""Tiny stand-in trainables for the search-machinery tests (Ray, Optuna, MLflow, resume).

They report the same metric names as the real trainable, with values computed from the trial's
config, so the runner's bookkeeping can be checked in seconds. The end-to-end test uses the real
training loop.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ray import tune
from ray.tune import Checkpoint


def _metrics(config: dict, base: dict, epoch: int) -> dict:
    lr = float(config.get("train.lr", base.get("train", {}).get("lr", 1e-3)))
    sf = float(config.get("plasticity.shrink_factor", 0.75))
    dense = bool(config.get("is_baseline"))
    acc = min(0.99, 0.5 + 0.1 * epoch + 10 * lr - (0.0 if dense else 0.2 * (1 - sf)))
    energy = 1000.0 * (1.0 if dense else sf) * (1 + lr)
    return {"epoch": float(epoch), "val_acc": acc, "energy_pj": energy, "params": 100.0 * sf,
            "train_loss": 1.0 / epoch, "syn_prune_rate": 0.0 if dense else 1 - sf}


def fake_trial(config, *, base, study_dir, data_root=None):
    """Reports `epochs` epochs; sleeps `__sleep` s per epoch; raises when train.lr > 0.05 * 0.9."""
    import ray

    tid = tune.get_context().get_trial_id()
    run_dir = Path(study_dir) / "trials" / tid
    run_dir.mkdir(parents=True, exist_ok=True)
    epochs = int(base.get("train", {}).get("epochs", 1))
    sleep = float(os.environ.get("SDSNN_FAKE_SLEEP", "0"))
    start = 0
    ck = tune.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            start = int(json.loads((Path(d) / "state.json").read_text())["epoch"])
    where = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "pid": os.getpid()}
    # markers next to the study folder (<results>/<study>.fail_once) make exactly one trial fail (raise: at
    # once, or after its first epoch) or diverge (NaN)
    kind = None
    if not config.get("is_baseline") and start == 0:
        for marker in ("fail_once", "fail_after_epoch_once", "nan_once"):
            m = Path(study_dir).parent / f"{Path(study_dir).name}.{marker}"
            try:
                os.rename(m, Path(study_dir).parent / f"{Path(study_dir).name}.{marker}.taken-by-{tid}")
                kind = marker
                break
            except FileNotFoundError:
                continue
    if kind == "fail_once":
        raise RuntimeError("deliberate failure for the test")
    for e in range(start + 1, epochs + 1):
        time.sleep(sleep)
        with open(Path(study_dir) / "executions.log", "a") as f:
            f.write(f"{tid} {e}\n")
        (run_dir / "state.json").write_text(json.dumps({"epoch": e}))
        m = {**_metrics(config, base, e), **where, "run_dir": str(run_dir), "trial_status": "running"}
        if kind == "nan_once":
            m.update(train_loss=float("nan"), trial_status="nan")
            m["val_acc"] = float("nan")
            tune.report(m, checkpoint=Checkpoint.from_directory(str(run_dir)))
            from sdsnn_search.trainable import TrialDiverged

            raise TrialDiverged("loss became NaN (test)")
        tune.report(m, checkpoint=Checkpoint.from_directory(str(run_dir)))
        if kind == "fail_after_epoch_once":
            raise RuntimeError("deliberate failure after an epoch, for the test")


def noop_trial(config, *, base, study_dir, data_root=None):
    """Does nothing but report once: measures the fixed per-trial overhead."""
    tune.report({"epoch": 1.0, "val_acc": 0.5, "energy_pj": 1.0, "trial_status": "running"})


def real_trial_failing_once(config, *, base, study_dir, data_root=None):
    """The real trainable (``run_trial``: real training), except that the first trial to take the
    marker ``<results>/<study>.fail_after_epoch_once`` raises right after its first epoch was
    reported. Every epoch trained is logged to ``<study>/executions.log`` as ``<trial> <epoch>``."""
    import sdsnn.train as st
    from sdsnn_search.trainable import run_trial

    tid = tune.get_context().get_trial_id()
    marker = Path(study_dir).parent / f"{Path(study_dir).name}.fail_after_epoch_once"
    real = st.train

    def train(cfg, run_dir, *, on_epoch, **kw):
        def cb(metrics, path):
            on_epoch(metrics, path)
            with open(Path(study_dir) / "executions.log", "a") as f:
                f.write(f"{tid} {int(metrics['epoch'])}\n")
            try:
                os.rename(marker, marker.with_name(f"{marker.name}.taken-by-{tid}"))
            except FileNotFoundError:
                return
            raise RuntimeError("deliberate failure after an epoch, for the test")

        return real(cfg, run_dir, on_epoch=cb, **kw)

    st.train = train
    try:
        run_trial(config, base=base, study_dir=study_dir, data_root=data_root)
    finally:
        st.train = real

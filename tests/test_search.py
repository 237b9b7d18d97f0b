"""The search runner against a real Ray scheduler, a real Optuna storage and a real MLflow store.

One local Ray session is shared by the module (except the kill-and-resume driver, which runs in
its own process, and the two-node cluster at the end). The machinery tests use the small
stand-in trainables of ``search_fakes``; the end-to-end test trains real networks on digits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import optuna  # noqa: E402
import ray  # noqa: E402
import ray.cloudpickle  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_fakes  # noqa: E402

from sdsnn_search.runner import read_study, resume_study, run_study  # noqa: E402
from sdsnn_search.space import parse_space  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ray_session():
    ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    ray.cloudpickle.register_pickle_by_value(search_fakes)
    yield
    ray.shutdown()


def _fake_spec(num_samples=4, epochs=2, sampler="random", max_failures=0, concurrent=2):
    return parse_space({
        "dataset": "digits",
        "experiment": {"train": {"epochs": epochs}},
        "params": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                   "plasticity.shrink_factor": {"type": "uniform", "low": 0.5, "high": 0.9}},
        "constraints": [{"metric": "val_acc", "op": ">=", "value": 0.3}],
        "reference_point": [0.0, 2000.0],
        "search": {"num_samples": num_samples, "max_concurrent": concurrent, "sampler": sampler,
                   "max_failures": max_failures, "seed": 3},
    })


def _optuna_states(study_dir: Path, name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'optuna.db'}")
    out: dict[str, int] = {}
    for t in study.get_trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _children(study_dir: Path):
    info = read_study(study_dir)
    c = MlflowClient(info["tracking_uri"])
    runs = c.search_runs([info["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{info['parent_run_id']}'",
                         max_results=1000)
    return c, info, runs


def test_failing_trials_do_not_stop_the_study_and_mlflow_structure(ray_session, tmp_path):
    (tmp_path / "res").mkdir()
    study_dir = tmp_path / "res" / "fails"
    (tmp_path / "res" / "fails.fail_once").write_text("")  # one trial raises
    (tmp_path / "res" / "fails.nan_once").write_text("")  # one trial diverges (NaN)
    spec = _fake_spec(num_samples=5, epochs=2)
    out = run_study(spec, results_dir=tmp_path / "res", name="fails", trainable=search_fakes.fake_trial, progress=False)
    df = pd.read_parquet(study_dir / "trials.parquet")
    assert len(df) == 6 and df["trial_id"].is_unique
    assert df["is_baseline"].sum() == 1
    by = df.set_index("trial_id")["status"].value_counts().to_dict()
    assert by == {"completed": 4, "failed": 1, "nan": 1}, by
    assert not out.interrupted and out.counts["completed"] == 4
    base = df[df["is_baseline"]].iloc[0]
    assert base["status"] == "completed" and base["syn_prune_rate"] == 0.0  # dense: nothing pruned
    assert not pd.isna(base["config/train.lr"])  # baseline row shows the values it trained with
    csv = pd.read_csv(study_dir / "trials.csv")
    assert list(csv.columns) == list(df.columns)

    # Optuna: the searched trials only (no baseline); both failures are FAIL; constraints recorded
    states = _optuna_states(study_dir, "fails")
    assert states == {"COMPLETE": 3, "FAIL": 2}, states
    study = optuna.load_study(study_name="fails", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert all(t.constraints and "val_acc>=0.3" in t.constraints for t in done)
    assert all(t.user_attrs["ray_trial_id"] in set(df["trial_id"]) for t in done)

    # MLflow: parent with spec and code version; one child per trial with per-epoch history
    c, info, runs = _children(study_dir)
    parent = c.get_run(info["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sdsnn.code_version"] and parent.data.params["seed"] == "3"
    assert parent.data.params["objectives"] == "val_acc:max, energy_pj:min"
    arts = {a.path for a in c.list_artifacts(info["parent_run_id"])}
    assert {"spec.yaml", "study.json"} <= arts
    assert len(runs) == 6
    tags = [r.data.tags["trial_id"] for r in runs]
    assert sorted(tags) == sorted(df["trial_id"])
    status = {r.data.tags["trial_id"]: (r.info.status, r.data.tags.get("status")) for r in runs}
    for _, row in df.iterrows():
        st, tag = status[row["trial_id"]]
        assert tag == row["status"]
        assert st == ("FINISHED" if row["status"] == "completed" else "FAILED")
        assert row["mlflow_run_id"] in {r.info.run_id for r in runs}
    ok = df[(df["status"] == "completed") & ~df["is_baseline"]].iloc[0]
    hist = c.get_metric_history(ok["mlflow_run_id"], "val_acc")
    assert sorted(m.step for m in hist) == [1, 2]
    assert c.get_run(ok["mlflow_run_id"]).data.params["train.lr"] == str(ok["config/train.lr"])


def test_resume_retry_failed_runs_failed_trials_again(ray_session, tmp_path):
    """A plain resume keeps failed trials failed; --retry-failed runs them again from their last
    epoch, and a success reaches the table, Optuna (as a new trial with the same parameters and
    NSGA-II generation: Optuna cannot tell a finished trial twice) and MLflow; a NaN trial stays
    NaN without training again (the fake would complete it if run: its marker is used up)."""
    (tmp_path / "res").mkdir()
    study_dir = tmp_path / "res" / "retry"
    for marker in ("fail_once", "fail_after_epoch_once", "nan_once"):  # one trial each
        (tmp_path / "res" / f"retry.{marker}").write_text("")
    spec = _fake_spec(num_samples=4, epochs=2, sampler="nsga2")
    run_study(spec, results_dir=tmp_path / "res", name="retry", trainable=search_fakes.fake_trial, progress=False)
    df = pd.read_parquet(study_dir / "trials.parquet").set_index("trial_id")
    taken = {m: next(tmp_path.glob(f"res/retry.{m}.taken-by-*")).name.rsplit("-", 1)[1]
             for m in ("fail_once", "fail_after_epoch_once", "nan_once")}
    assert [df.loc[taken[m], "status"] for m in ("fail_once", "fail_after_epoch_once", "nan_once")] == ["failed", "failed", "nan"], \
        (taken, df[["status", "epochs"]])

    out = resume_study(study_dir, progress=False)
    assert out.table.set_index("trial_id").loc[list(taken.values()), "status"].tolist() == ["failed", "failed", "nan"]
    assert _optuna_states(study_dir, "retry") == {"COMPLETE": 1, "FAIL": 3}

    log_before = (study_dir / "executions.log").read_text().split("\n")
    out = resume_study(study_dir, progress=False, retry_failed=True)
    df = out.table.set_index("trial_id")
    assert len(df) == 5
    assert df.loc[taken["nan_once"], "status"] == "nan"
    assert (df.drop(index=taken["nan_once"])["status"] == "completed").all(), df["status"]
    new_lines = (study_dir / "executions.log").read_text().split("\n")[len(log_before) - 1:]
    assert sorted(l for l in new_lines if l.startswith(taken["fail_once"])) == [f"{taken['fail_once']} 1", f"{taken['fail_once']} 2"]
    # the one that failed after epoch 1 went on from its checkpoint: epoch 2 only
    assert [l for l in new_lines if l.startswith(taken["fail_after_epoch_once"])] == [f"{taken['fail_after_epoch_once']} 2"]
    assert not [l for l in new_lines if l.startswith(taken["nan_once"])]  # not trained again

    study = optuna.load_study(study_name="retry", storage=f"sqlite:///{study_dir / 'optuna.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 3
    new = [t for t in study.get_trials() if "retry_of_number" in t.user_attrs]
    assert sorted(t.user_attrs["ray_trial_id"] for t in new) == sorted([taken["fail_once"], taken["fail_after_epoch_once"]])
    for t in new:
        old = study.trials[t.user_attrs["retry_of_number"]]
        assert t.state.name == "COMPLETE" and old.state.name == "FAIL" and old.params == t.params
        assert t.system_attrs["NSGAIISampler:generation"] == old.system_attrs["NSGAIISampler:generation"]
        row = df.loc[t.user_attrs["ray_trial_id"]]
        assert t.values == [row["val_acc"], row["energy_pj"]] and "val_acc>=0.3" in t.constraints
    c, info, children = _children(study_dir)
    assert len(children) == 5  # no run duplicated
    by_id = {r.data.tags["trial_id"]: r for r in children}
    for tid in (taken["fail_once"], taken["fail_after_epoch_once"]):
        assert by_id[tid].info.status == "FINISHED" and by_id[tid].data.tags["status"] == "completed"
        assert "error" not in by_id[tid].data.tags
    assert by_id[taken["nan_once"]].data.tags["status"] == "nan"


def test_end_to_end_digits_real_training(ray_session, tmp_path):
    out = run_study(ROOT / "search_spaces" / "digits.yaml", results_dir=tmp_path, name="e2e", num_samples=2,
                    epochs=1, progress=False)
    df = out.table
    assert len(df) == 3 and (df["status"] == "completed").all(), df[["trial_id", "status"]]
    assert (df["epochs"] == 1).all()
    for _, r in df.iterrows():
        run_dir = Path(r["run_dir"])
        assert (run_dir / "checkpoint.pt").exists() and (run_dir / "metrics.jsonl").exists()
        assert json.loads((run_dir / "config.json").read_text())["plasticity"]["mode"] == ("dense" if r["is_baseline"] else "sdsnn")
        assert 0.0 <= r["val_acc"] <= 1.0 and r["energy_pj"] > 0
    info = read_study(out.study_dir)
    for k in ("name", "dataset", "space_file", "objectives", "constraints", "reference_point", "tracking_uri",
              "parent_run_id", "experiment_name", "baseline_trial_id", "created", "seed"):
        assert k in info
    assert info["baseline_trial_id"] == df[df["is_baseline"]].iloc[0]["trial_id"] and info["finished"]
    assert (out.study_dir / "spec.yaml").exists() and (out.study_dir / "mlflow.db").exists()
    searched = df[~df["is_baseline"]]
    assert searched["config/plasticity.shrink_factor"].between(0.5, 0.9).all()


def test_real_trial_restarted_by_ray_resumes_from_its_run_folder(ray_session, tmp_path):
    """The real trainable reports a marker checkpoint (a few bytes, never checkpoint.pt) each
    epoch; when Ray restarts a trial that failed after epoch 1, training goes on from the run
    folder's checkpoint (epoch 1 is not trained again) and ends with the numbers of an
    uninterrupted run of the same config."""
    from sdsnn.config import ExperimentConfig
    from sdsnn.train import train
    from sdsnn_search.trainable import MARKER_NAME

    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "flaky.fail_after_epoch_once").write_text("")
    spec = parse_space({
        "dataset": "digits",
        "experiment": {"data": {"time_steps": 2, "batch_size": 32, "train_limit": 320},
                       "model": {"name": "mlp", "depth": 1, "width": 24},
                       "plasticity": {"develop_every": 2, "spine_window": 1, "rho_init_fc": 10.0},
                       "train": {"epochs": 2, "threads": 1}, "energy": {"batches": 1}},
        "params": {"train.lr": {"type": "loguniform", "low": 2e-3, "high": 5e-3}},
        "search": {"num_samples": 1, "max_concurrent": 1, "sampler": "random", "max_failures": 1,
                   "seed": 1, "baseline": False},
    })
    out = run_study(spec, results_dir=tmp_path / "res", name="flaky", trainable=search_fakes.real_trial_failing_once,
                    progress=False)
    row = out.table.iloc[0]
    assert len(out.table) == 1 and row["status"] == "completed" and row["epochs"] == 2, out.table
    tid = row["trial_id"]
    assert next((tmp_path / "res").glob("flaky.fail_after_epoch_once.taken-by-*")).name.endswith(tid)
    assert (out.study_dir / "executions.log").read_text().split("\n")[:-1] == [f"{tid} 1", f"{tid} 2"]

    ray_dir = out.study_dir / "ray"
    markers = sorted(ray_dir.rglob(MARKER_NAME))
    assert markers and json.loads(markers[-1].read_text()) == {"trial_id": tid, "epoch": 2}
    assert not list(ray_dir.rglob("checkpoint.pt"))
    assert sum(f.stat().st_size for f in ray_dir.rglob("checkpoint_*/*") if f.is_file()) < 1000

    run_dir = Path(row["run_dir"])
    cfg = ExperimentConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    ref = train(cfg, tmp_path / "uninterrupted", progress=False)
    got = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    strip = lambda hs: [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in hs]  # noqa: E731
    assert strip(got) == strip(ref.history)
    assert row["val_acc"] == ref.history[-1]["val_acc"]
    # the completed trial's checkpoint was slimmed; it restores the uninterrupted run's model and masks
    import torch

    from sdsnn.train import restore

    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["slim"]
    a, b = restore(run_dir), restore(tmp_path / "uninterrupted")
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, a.model.state_dict()[k]), k
    for k in b.masks:
        assert torch.equal(a.masks[k].group, b.masks[k].group) and torch.equal(a.masks[k].neuron, b.masks[k].neuron)


def test_restart_without_the_run_folders_checkpoint_says_where_it_looked(tmp_path):
    from sdsnn_search.trainable import MARKER_NAME, restore_run_dir

    src = tmp_path / "ray_ckpt"
    src.mkdir()
    (src / MARKER_NAME).write_text(json.dumps({"trial_id": "t1", "epoch": 3}))
    with pytest.raises(RuntimeError, match=r"trial t1: Ray restarted it after epoch 3, but its run folder .*/gone holds no checkpoint.pt"):
        restore_run_dir(src, tmp_path / "gone", "t1")
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "checkpoint.pt").write_bytes(b"x")
    restore_run_dir(src, tmp_path / "here", "t1")  # the state is there: nothing to do
    # a checkpoint from before markers is a copy of the run folder, copied back when needed
    old = tmp_path / "old_ckpt"
    old.mkdir()
    (old / "checkpoint.pt").write_bytes(b"state")
    restore_run_dir(old, tmp_path / "fresh", "t1")
    assert (tmp_path / "fresh" / "checkpoint.pt").read_bytes() == b"state"


def _run_driver(study_root: Path, spec_raw: dict, env: dict) -> subprocess.Popen:
    code = (
        "import sys, json; sys.path.insert(0, %r); import ray.cloudpickle, search_fakes; "
        "ray.cloudpickle.register_pickle_by_value(search_fakes); "
        "from sdsnn_search.space import parse_space; from sdsnn_search.runner import run_study; "
        "run_study(parse_space(json.loads(sys.argv[1])), results_dir=sys.argv[2], name='killed', "
        "trainable=search_fakes.fake_trial, progress=False)" % str(TESTS)
    )
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(spec_raw), str(study_root)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for_table(study_dir: Path, ready, timeout: float = 120.0) -> pd.DataFrame:
    """Poll the study's trials table until ``ready(table)``; the last table read (empty if none)."""
    df = pd.DataFrame({"status": [], "epochs": [], "trial_id": []})
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            df = pd.read_parquet(study_dir / "trials.parquet")
        except Exception:
            continue
        if ready(df):
            break
    return df


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from /proc)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for p in pids:
        try:
            st = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if st != "Z":
                alive.append(p)
        except OSError:
            pass
    return alive


def test_kill_and_resume(ray_session, tmp_path, capfd):
    spec_raw = _fake_spec(num_samples=5, epochs=2).to_dict()
    env = dict(os.environ, SDSNN_FAKE_SLEEP="1.0")
    proc = _run_driver(tmp_path, spec_raw, env)
    study_dir = tmp_path / "killed"
    df = _wait_for_table(study_dir, lambda d: (d["status"] == "completed").sum() >= 2 and (d["status"] == "running").any())
    done_before = set(df.loc[df["status"] == "completed", "trial_id"])
    assert 2 <= len(done_before) < 6, "the driver did not get going"
    kids = _descendants(proc.pid)
    assert kids  # Ray's processes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # the Ray processes the killed driver started go with it
    deadline = time.time() + 60
    while _alive(kids) and time.time() < deadline:
        time.sleep(0.5)
    assert not _alive(kids), [Path(f"/proc/{p}/cmdline").read_text()[:80] for p in _alive(kids)]

    capfd.readouterr()  # what came before the resume
    out = resume_study(study_dir, progress=False)
    # Tune's warning about the trials that had not started when the driver died is noise here
    assert "Failed to fetch metrics" not in "".join(capfd.readouterr())
    df = out.table
    assert not out.interrupted
    assert len(df) == 6 and df["trial_id"].is_unique and (df["status"] == "completed").all(), df[["trial_id", "status"]]
    # completed trials were kept, not re-run: each ran its 2 epochs exactly once
    runs = pd.read_csv(study_dir / "executions.log", sep=" ", names=["trial", "epoch"])
    per = runs.groupby("trial")["epoch"].apply(list)
    for tid in done_before:
        assert per[tid] == [1, 2], (tid, per[tid])
    # Optuna: six searched trials complete, nothing left running
    assert _optuna_states(study_dir, "killed") == {"COMPLETE": 5}
    # MLflow: one child per trial, no duplicates, all finished; the parent is closed
    c, info, children = _children(study_dir)
    ids = [r.data.tags["trial_id"] for r in children]
    assert sorted(ids) == sorted(df["trial_id"]) and len(ids) == len(set(ids)) == 6
    assert all(r.info.status == "FINISHED" for r in children)
    assert c.get_run(info["parent_run_id"]).info.status == "FINISHED"


def test_ctrl_c_marks_cut_trials_interrupted_and_resume_finishes_them(ray_session, tmp_path):
    """SIGINT to the driver (Ctrl-C, `kill -INT`) while trials are mid-way: Ray Tune stops them
    gracefully, and they must not pass for completed trials (table, Optuna, MLflow), the study must
    say it is unfinished, and resume must run them to the end. (The signal goes to the driver
    alone: sent to the whole process group it also reaches Ray's own daemons, which this test
    does not control.)"""
    spec_raw = _fake_spec(num_samples=3, epochs=4).to_dict()
    env = dict(os.environ, SDSNN_FAKE_SLEEP="1.0")
    proc = _run_driver(tmp_path, spec_raw, env)
    study_dir = tmp_path / "killed"
    _wait_for_table(study_dir, lambda d: (d["status"] == "running").any() and (d["epochs"] >= 1).any())
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=90) == 0  # run_study returns normally after a graceful stop
    info = read_study(study_dir)
    assert info["finished"] is False
    df = pd.read_parquet(study_dir / "trials.parquet")
    cut = df[df["epochs"] < 4]
    assert len(cut) >= 1, df[["trial_id", "status", "epochs"]]
    assert (cut["status"].isin(["interrupted", "pending"])).all(), df[["trial_id", "status", "epochs"]]
    assert not (df["status"] == "completed").any() or (df.loc[df["status"] == "completed", "epochs"] == 4).all()
    assert _optuna_states(study_dir, "killed").get("COMPLETE", 0) == int(
        ((df["status"] == "completed") & ~df["is_baseline"]).sum())  # no partial result told to Optuna

    out = resume_study(study_dir, progress=False)
    df = out.table
    assert not out.interrupted
    assert len(df) == 4 and (df["status"] == "completed").all() and (df["epochs"] == 4).all(), df[["trial_id", "status", "epochs"]]
    assert _optuna_states(study_dir, "killed") == {"COMPLETE": 3}
    c, info, children = _children(study_dir)
    assert all(r.info.status == "FINISHED" for r in children)


def test_completed_trials_optuna_missed_are_told_from_the_table(tmp_path):
    """A trial that ends just as Ctrl-C stops the study can miss its completion in Ray's searcher
    (the Ctrl-C test above failed so, now and then): the runner tells Optuna from the table, with
    constraints and attributes; a trial the table calls interrupted stays RUNNING."""
    from sdsnn_search.runner import _tell_missed_completions

    spec = _fake_spec()
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                                directions=["maximize", "minimize"])
    dist = {"train.lr": optuna.distributions.FloatDistribution(1e-3, 1e-2, log=True)}
    for rid in ("r1", "r2", "r3"):
        study.ask(dist).set_user_attr("ray_trial_id", rid)
    df = pd.DataFrame({"trial_id": ["b", "r1", "r2", "r3"], "is_baseline": [True, False, False, False],
                       "status": ["completed", "completed", "interrupted", "completed"],
                       "val_acc": [0.9, 0.8, 0.5, float("nan")], "energy_pj": [1e3, 500.0, 400.0, 300.0]})
    _tell_missed_completions(tmp_path, "s", spec, df)
    by = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials()}
    assert by["r1"].state.name == "COMPLETE" and by["r1"].values == [0.8, 500.0]
    assert by["r1"].constraints == {"val_acc>=0.3": pytest.approx(0.3 - 0.8)} and by["r1"].user_attrs["val_acc"] == 0.8
    assert by["r2"].state.name == "RUNNING"  # interrupted: resume finishes it
    assert by["r3"].state.name == "RUNNING"  # no finite objective values: nothing to tell
    _tell_missed_completions(tmp_path, "s", spec, df)  # told once only
    assert [t.state.name for t in study.get_trials()].count("COMPLETE") == 1


def test_two_node_cluster_trials_land_on_both_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()  # leave the module's single-node session
    os.environ["SDSNN_FAKE_SLEEP"] = "0.5"  # inherited by the nodes' workers: trials overlap
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        spec = _fake_spec(num_samples=3, epochs=2)
        out = run_study(spec, results_dir=tmp_path, name="cluster", address=cluster.address,
                        trainable=search_fakes.fake_trial, progress=False)
        df = out.table
        assert (df["status"] == "completed").all() and len(df) == 4
        nodes = set(df["node_id"])
        assert len(nodes) == 2, nodes
        assert set(df["hostname"]) and df["pid"].nunique() >= 2
    finally:
        os.environ.pop("SDSNN_FAKE_SLEEP", None)
        ray.shutdown()
        cluster.shutdown()


def test_progress_of_a_resumed_study_counts_the_trials_done_before(tmp_path):
    from sdsnn_search.progress import ProgressView

    spec = _fake_spec(num_samples=3, epochs=2)
    pd.DataFrame({"trial_id": ["b", "t1", "t2", "t3"], "status": ["completed", "completed", "failed", "interrupted"],
                  "is_baseline": [True, False, False, False], "val_acc": [0.9, 0.8, float("nan"), 0.5],
                  "energy_pj": [5.0, 3.0, float("nan"), 1.0]}).to_parquet(tmp_path / "trials.parquet")
    view = ProgressView(spec, tmp_path, enabled=False)
    view.setup()
    c = view._counts()
    assert (c["completed"], c["failed"], c["running"]) == (2, 1, 0)  # the interrupted one is still to do
    assert view._best == {"val_acc": 0.8, "energy_pj": 3.0}  # search trials only, not the baseline


def test_the_end_of_a_run_says_when_no_trial_is_feasible(tmp_path, capsys):
    """Completed trials that all break a constraint: the final summary says there is no Pareto set
    and why, instead of printing nothing about it."""
    from sdsnn_search.progress import ProgressView
    from sdsnn_search.runner import StudyOutcome

    spec = _fake_spec(num_samples=2, epochs=2)  # constraint val_acc >= 0.3
    df = pd.DataFrame({"trial_id": ["b", "t1", "t2"], "status": ["completed"] * 3, "is_baseline": [True, False, False],
                       "val_acc": [0.9, 0.1, 0.2], "energy_pj": [5.0, 3.0, 1.0]})
    out = StudyOutcome(study_dir=tmp_path, name="hard", table=df, counts={"completed": 3})
    ProgressView(spec, tmp_path, enabled=True).final(out)
    text = " ".join(capsys.readouterr().out.split())
    assert "no Pareto set: none of the 2 completed search trials meets the constraints (val_acc >= 0.3)" in text
    df.loc[2, "val_acc"] = 0.5
    ProgressView(spec, tmp_path, enabled=True).final(out)
    text = " ".join(capsys.readouterr().out.split())
    assert "no Pareto set" not in text and "Pareto set of hard: 1 on the front" in text

"""Report files of a Pareto analysis: content, offline HTML, importances, MLflow artifacts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdsnn_search.pareto import analyze_studies
from sdsnn_search.report import REPORT_FILES, write_report

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth_study import make_trials, write_study  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _optuna_db(folder, trials: pd.DataFrame, name: str) -> None:
    """An Optuna storage whose trials carry the table's params and objective values."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db",
                                directions=["maximize", "minimize"])
    dists = {"plasticity.spine_window": optuna.distributions.IntDistribution(1, 5),
             "plasticity.shrink_factor": optuna.distributions.FloatDistribution(0.5, 0.9)}
    for _, r in trials.iterrows():
        study.add_trial(optuna.trial.create_trial(
            params={k: r[f"config/{k}"] for k in dists}, distributions=dists,
            values=[float(r["val_acc"]), float(r["energy_pj"])]))


def test_report_files_content_and_mlflow_artifacts(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    trials = make_trials(24, seed=11)
    # val_acc driven by the spine window alone, so fANOVA must rank it first for that objective
    rng = np.random.default_rng(0)
    trials["val_acc"] = 0.6 + 0.08 * trials["config/plasticity.spine_window"] + rng.normal(0, 1e-3, len(trials))
    trials.loc[trials["is_baseline"], "val_acc"] = 0.95
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("s1", artifact_location=str(tmp_path / "mlartifacts"))
    parent = client.create_run(exp, run_name="s1").info.run_id
    d = write_study(tmp_path, "s1", trials, tracking_uri=uri, parent_run_id=parent)
    ok = trials[(trials["status"] == "completed") & ~trials["is_baseline"]]
    _optuna_db(d, ok, "s1")

    res = analyze_studies([d])["digits"]
    [written] = write_report(res)
    assert written.logged_to == parent and written.notes == []
    for name in REPORT_FILES:
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    assert not list(d.glob(".*.tmp*")), "temporary files left behind"

    csv = pd.read_csv(d / "pareto.csv")
    assert list(csv["trial_id"].astype(str)) == list(res.front["trial_id"])
    assert csv["is_knee"].sum() == 1 and csv.loc[csv["is_knee"], "trial_id"].item() == res.knee_trial_id
    assert {"acc_gain", "energy_vs_dense", "syn_prune/fc1", "config/plasticity.spine_window"} <= set(csv.columns)
    summary = json.loads((d / "pareto.json").read_text())
    assert summary["hypervolume"] == pytest.approx(res.hypervolume)

    html = (d / "pareto_front.html").read_text()
    assert "<script src=\"https://" not in html and "Plotly.newPlot" in html and len(html) > 1_000_000
    assert res.knee_trial_id in html

    import matplotlib.image as mpimg
    for png in ("pareto_front.png", "hypervolume.png", "pruning_profiles.png"):
        img = mpimg.imread(d / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.std() > 0.01  # a real, non-blank picture

    hist = pd.read_csv(d / "hypervolume.csv")
    assert len(hist) == len(trials) and hist["hypervolume"].is_monotonic_increasing
    assert hist["hypervolume"].iloc[-1] == pytest.approx(res.hypervolume)

    md = (d / "report.md").read_text()
    assert f"Trial `{res.knee_trial_id}`" in md and "Dense baseline" in md and "fANOVA" in md
    imp_section = md.split("## Settings that mattered")[1]
    first_param_row = [l for l in imp_section.splitlines() if l.startswith("| plasticity.")][0]
    assert first_param_row.startswith("| plasticity.spine_window |")

    arts = {os.path.basename(a.path) for a in client.list_artifacts(parent, "pareto")}
    assert set(REPORT_FILES) <= arts
    mlflow.set_tracking_uri(None)


def test_report_without_mlflow_or_optuna_says_so(tmp_path):
    d = write_study(tmp_path, "plain", make_trials(10, seed=12))
    res = analyze_studies([d])["digits"]
    [written] = write_report(res)
    assert written.logged_to is None and "not logged" in written.notes[0]
    assert "no optuna.db" in (d / "report.md").read_text()


def test_three_objective_report_and_out_dir(tmp_path):
    import json as _json

    d = write_study(tmp_path, "three", make_trials(16, seed=13))
    meta = _json.loads((d / "study.json").read_text())
    meta["objectives"].append({"metric": "params", "mode": "min"})
    meta["reference_point"].append(20000)
    (d / "study.json").write_text(_json.dumps(meta))
    res = analyze_studies([d])["digits"]
    out = tmp_path / "reports"
    [written] = write_report(res, out, log_mlflow=False)
    assert written.folder == out and not (d / "pareto.csv").exists()
    assert '"type":"scatter3d"' in (out / "pareto_front.html").read_text().replace(" ", "")
    import matplotlib.image as mpimg
    img = mpimg.imread(out / "pareto_front.png")
    assert img.shape[1] > 2 * img.shape[0]  # three panels side by side: one per pair of objectives
    assert len(pd.read_csv(out / "pareto.csv")) == len(res.front)


def test_hypervolume_history_follows_mlflow_end_times(tmp_path):
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    trials = make_trials(8, seed=14)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(tracking_uri=uri)
    exp = c.create_experiment("o", artifact_location=str(tmp_path / "art"))
    parent = c.create_run(exp, run_name="o").info.run_id
    finish = np.random.default_rng(1).permutation(len(trials))  # the order the trials finished
    ids = []
    for i in range(len(trials)):
        rid = c.create_run(exp, start_time=1000, tags={MLFLOW_PARENT_RUN_ID: parent}).info.run_id
        c.set_terminated(rid, end_time=10_000 + 1000 * int(finish[i]))
        ids.append(rid)
    trials["mlflow_run_id"] = ids
    d = write_study(tmp_path, "o", trials, tracking_uri=uri, parent_run_id=parent)
    res = analyze_studies([d])["digits"]
    expected = list(trials["trial_id"].to_numpy()[np.argsort(finish)])
    assert list(res.history["trial_id"]) == expected
    assert res.studies[0].order_source.startswith("end times")


def test_report_prints_trial_ids_as_names_not_numbers():
    from sdsnn_search.report import _fmt

    assert _fmt("09950869") == "09950869" and _fmt("1e345678") == "1e345678"
    assert _fmt(123456.0) == "1.235e+05" and _fmt(float("nan")) == "-"

"""Pareto analysis against brute force on random points (2 and 3 objectives, mixed max/min)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sdsnn.errors import UserError
from sdsnn_search.pareto import (
    Constraint,
    analyze_studies,
    feasible_mask,
    hypervolume,
    hypervolume_history,
    knee_index,
    nondominated_mask,
    to_minimisation,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synth_study import make_trials, write_study  # noqa: E402

MODES = {2: [True, False], 3: [True, False, True]}


def brute_nondominated(pts_min: np.ndarray) -> np.ndarray:
    n = len(pts_min)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            le = np.all(pts_min[j] <= pts_min[i])
            if le and np.any(pts_min[j] < pts_min[i]):
                keep[i] = False  # strictly dominated
            elif le and j < i:
                keep[i] = False  # duplicate of an earlier point
    return keep


def brute_hypervolume(pts_min: np.ndarray, ref: np.ndarray) -> float:
    """Volume of the union of boxes [p, ref] by summing the cells of the coordinate grid."""
    pts = pts_min[np.all(pts_min < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    axes = [np.unique(np.append(pts[:, k], ref[k])) for k in range(pts.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lower = np.array([axes[k][c] for k, c in enumerate(cell)])
        if np.any(np.all(pts <= lower, axis=1)):
            total += float(np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)]))
    return total


def random_points(rng, n, m):
    # small integer grid: many ties and duplicates, the hard cases for dominance
    return rng.integers(0, 8, size=(n, m)).astype(float)


@pytest.mark.parametrize("m", [2, 3])
def test_nondominated_and_hypervolume_equal_brute_force(m):
    rng = np.random.default_rng(m)
    maximise = MODES[m]
    for _ in range(25):
        pts = random_points(rng, int(rng.integers(1, 16)), m)
        ref = np.where(maximise, -0.5, 8.5) if rng.random() < 0.5 else np.full(m, 5.0)  # some points worse than ref
        mins = to_minimisation(pts, maximise)
        ref_min = to_minimisation(ref.reshape(1, -1), maximise)[0]
        np.testing.assert_array_equal(nondominated_mask(pts, maximise), brute_nondominated(mins))
        assert hypervolume(pts, maximise, ref) == pytest.approx(brute_hypervolume(mins, ref_min), rel=1e-12, abs=1e-12)


def test_hypervolume_is_positive_and_known_value():
    # maximise accuracy, minimise energy; reference (0, 10)
    pts = np.array([[0.5, 4.0], [0.8, 6.0], [0.4, 8.0]])
    # boxes: [0,0.5]x[4,10] U [0,0.8]x[6,10]  -> 0.5*6 + 0.3*4 = 4.2 ; third point dominated
    assert hypervolume(pts, [True, False], [0.0, 10.0]) == pytest.approx(4.2)


def test_hypervolume_history_equals_prefix_brute_force():
    rng = np.random.default_rng(7)
    maximise = MODES[3]
    pts = random_points(rng, 14, 3)
    counted = rng.random(14) < 0.7
    ref = np.array([-1.0, 9.0, -1.0])
    hist = hypervolume_history(pts, maximise, ref, counted=counted)
    mins = to_minimisation(pts, maximise)
    ref_min = to_minimisation(ref.reshape(1, -1), maximise)[0]
    for k in range(1, 15):
        sel = mins[:k][counted[:k]]
        assert hist[k - 1] == pytest.approx(brute_hypervolume(sel, ref_min))
    assert np.all(np.diff(hist) >= -1e-12)


def test_knee_lies_on_front_and_picks_the_balanced_point():
    rng = np.random.default_rng(3)
    for m in (2, 3):
        for _ in range(20):
            pts = random_points(rng, 12, m)
            nd = nondominated_mask(pts, MODES[m])
            front = pts[nd]
            k = knee_index(front, MODES[m])
            assert 0 <= k < len(front)
            # the knee is not dominated by any point of the whole set
            assert nondominated_mask(np.vstack([front[k], pts]), MODES[m])[0]
    # a convex front: the middle point is closest to the ideal point
    front = np.array([[0.99, 10.0], [0.95, 2.0], [0.5, 1.0]])  # maximise acc, minimise energy
    assert knee_index(front, [True, False]) == 1


def test_feasible_mask_filters_constraints_and_nan():
    df = pd.DataFrame({"val_acc": [0.9, 0.5, np.nan, 0.8], "energy_pj": [5.0, 1.0, 1.0, 20.0]})
    cons = [Constraint("val_acc", ">=", 0.7), Constraint("energy_pj", "<=", 10.0)]
    np.testing.assert_array_equal(feasible_mask(df, cons), [True, False, False, False])
    with pytest.raises(UserError, match="not a column"):
        feasible_mask(df, [Constraint("nope", ">=", 1)])


def test_analyze_study_front_constraints_baseline_and_deltas(tmp_path):
    trials = make_trials(30, seed=1)
    # an infeasible trial that would dominate everything: the constraint must keep it off the front
    trials.loc[len(trials)] = {**trials.iloc[1].to_dict(), "trial_id": "cheat", "val_acc": 0.69, "energy_pj": 1.0}
    d = write_study(tmp_path, "s1", trials)
    res = analyze_studies([d])["digits"]
    front = res.front
    assert "cheat" not in set(front["trial_id"]) and "baseline" not in set(front["trial_id"])
    assert (front["val_acc"] >= 0.7).all()
    assert set(front["status"]) == {"completed"}
    # brute force on the feasible rows
    t = res.trials
    feas = (t["status"] == "completed") & ~t["is_baseline"] & (t["val_acc"] >= 0.7)
    pts = t.loc[feas, ["val_acc", "energy_pj"]].to_numpy(float)
    mins = to_minimisation(pts, [True, False])
    expected = set(t.loc[feas, "trial_id"][brute_nondominated(mins)])
    assert set(front["trial_id"]) == expected
    assert res.hypervolume == pytest.approx(brute_hypervolume(mins, np.array([0.0, 2.0e6])))
    assert res.history["hypervolume"].iloc[-1] == pytest.approx(res.hypervolume)
    assert res.knee_trial_id in expected and front["is_knee"].sum() == 1
    # deltas against the dense baseline row (val_acc 0.95, energy 1.2e6, params 10000)
    np.testing.assert_allclose(front["acc_gain"], front["val_acc"] - 0.95)
    np.testing.assert_allclose(front["energy_vs_dense"], front["energy_pj"] / 1.2e6)
    np.testing.assert_allclose(front["params_vs_dense"], front["params"] / 10000)


def test_a_space_without_reference_point_gets_one_derived_from_its_trials(tmp_path):
    """No reference_point in the space (it is optional there): pareto derives one beyond the worst
    completed value of each objective (10 % of the range), so every completed trial counts, and
    says so in the report (it used to refuse the study)."""
    import json as _json

    trials = make_trials(20, seed=6)
    d = write_study(tmp_path, "noref", trials)
    meta = _json.loads((d / "study.json").read_text())
    meta["reference_point"] = None
    (d / "study.json").write_text(_json.dumps(meta))
    res = analyze_studies([d])["digits"]
    done = trials[trials["status"] == "completed"]
    acc, energy = done["val_acc"], done["energy_pj"]
    expected = [acc.min() - 0.1 * (acc.max() - acc.min()), energy.max() + 0.1 * (energy.max() - energy.min())]
    assert res.reference_point_derived and res.reference_point == pytest.approx(expected)
    t = res.trials
    pts = to_minimisation(t.loc[t["feasible"], ["val_acc", "energy_pj"]].to_numpy(float), [True, False])
    ref = to_minimisation(np.array([expected]), [True, False])[0]
    assert res.hypervolume == pytest.approx(brute_hypervolume(pts[brute_nondominated(pts)], ref))
    from click.testing import CliRunner

    from sdsnn_search.cli import main

    r = CliRunner().invoke(main, ["pareto", str(d), "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert "the space gave none" in (d / "report.md").read_text()
    assert _json.loads((d / "pareto.json").read_text())["reference_point_derived"] is True


def test_studies_of_one_dataset_merge_and_datasets_stay_apart(tmp_path):
    a = write_study(tmp_path, "a", make_trials(12, seed=2), created="2025-01-01")
    b = write_study(tmp_path, "b", make_trials(12, seed=3), created="2025-01-02")
    c = write_study(tmp_path, "c", make_trials(12, seed=4, dataset="mnist"), dataset="mnist")
    res = analyze_studies([b, a, c])
    assert set(res) == {"digits", "mnist"}
    merged = res["digits"]
    assert list(merged.history["study"].unique()) == ["a", "b"]  # ordered by creation time
    t = merged.trials
    feas = t["feasible"].to_numpy()
    pts = t.loc[feas, ["val_acc", "energy_pj"]].to_numpy(float)
    keys = list(zip(t.loc[feas, "study"], t.loc[feas, "trial_id"]))
    nd = brute_nondominated(to_minimisation(pts, [True, False]))
    expected = {k for k, keep in zip(keys, nd) if keep}
    assert set(zip(merged.front["study"], merged.front["trial_id"])) == expected
    # on the command line each study keeps its own report; the merged one goes beside it
    from click.testing import CliRunner

    from sdsnn_search.cli import main

    assert CliRunner().invoke(main, ["pareto", str(a), "--no-mlflow"]).exit_code == 0
    own = (a / "report.md").read_text()
    r = CliRunner().invoke(main, ["pareto", str(a), str(b), "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert (a / "report.md").read_text() == own and "`a`, `b`" not in own
    for d in (a, b):
        assert "Studies: `a`, `b`." in (d / "pareto-merged" / "report.md").read_text()


def test_no_feasible_trial_gives_one_clear_line(tmp_path):
    d = write_study(tmp_path, "hard", make_trials(8, seed=5),
                    constraints=[{"metric": "val_acc", "op": ">=", "value": 0.999}])
    with pytest.raises(UserError) as e:
        analyze_studies([d])
    msg = str(e.value)
    assert "\n" not in msg and "no feasible trial" in msg and "val_acc >= 0.999" in msg and str(d) in msg


def test_not_a_study_folder(tmp_path):
    with pytest.raises(UserError, match="no study.json"):
        analyze_studies([tmp_path])


def test_cli_pareto_writes_reports_and_fails_cleanly(tmp_path):
    from click.testing import CliRunner

    from sdsnn_search.cli import main

    good = write_study(tmp_path, "ok", make_trials(10, seed=6))
    r = CliRunner().invoke(main, ["pareto", str(good), "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert "hypervolume" in r.output and (good / "pareto.csv").is_file()
    bad = write_study(tmp_path, "bad", make_trials(6, seed=7),
                      constraints=[{"metric": "energy_pj", "op": "<=", "value": 1.0}])
    r = CliRunner().invoke(main, ["pareto", str(bad)])
    assert r.exit_code == 2
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no feasible trial")
    assert not (bad / "pareto.csv").exists()


def test_final_table_of_a_run_respects_the_space_constraints():
    """The Pareto table printed at the end of `run` (progress.pareto_rows) drops trials that break
    a constraint, like `sdsnn-search pareto` does, even when they would dominate."""
    from sdsnn_search.progress import pareto_rows

    df = pd.DataFrame({
        "trial_id": ["base", "a", "b", "c", "d"],
        "status": ["completed", "completed", "completed", "completed", "interrupted"],
        "is_baseline": [True, False, False, False, False],
        "val_acc": [0.99, 0.30, 0.90, 0.80, 0.95],   # a: infeasible (< 0.5) but the cheapest
        "energy_pj": [9.0, 1.0, 5.0, 3.0, 0.5],      # d: cut short by Ctrl-C, never on a front
    })
    objectives = [{"metric": "val_acc", "mode": "max"}, {"metric": "energy_pj", "mode": "min"}]
    assert set(pareto_rows(df, objectives)["trial_id"]) == {"a", "b", "c"}
    cons = [{"metric": "val_acc", "op": ">=", "value": 0.5}]
    assert list(pareto_rows(df, objectives, cons)["trial_id"]) == ["b", "c"]


def test_a_study_where_every_trial_failed_says_so(tmp_path):
    """Not "relax the constraints": nothing completed, so the error points at the failures."""
    from sdsnn_search.pareto import analyze_studies

    t = make_trials(5)
    t["status"] = "failed"
    d = write_study(tmp_path, "allfail", t)
    with pytest.raises(UserError, match=r"no search trial .* completed \(5 failed or diverged\)"):
        analyze_studies([d])


def _baseline_of(trials: pd.DataFrame, **values) -> pd.DataFrame:
    t = trials.copy()
    for k, v in values.items():
        t.loc[t["is_baseline"], k] = v
    return t


def test_studies_that_share_a_name_keep_their_own_baselines_and_trial_ids(tmp_path):
    """Two studies named alike (in different folders) with the same trial ids: each front member is
    compared with its own study's baseline, tables name the studies apart, the knee is the flagged
    row (not the first row with its trial id)."""
    one = write_study(tmp_path / "lab1", "s", _baseline_of(make_trials(15, seed=8), val_acc=0.95, energy_pj=1.2e6,
                                                           params=10000), created="2025-01-01")
    two = write_study(tmp_path / "lab2", "s", _baseline_of(make_trials(15, seed=9), val_acc=0.80, energy_pj=6.0e5,
                                                           params=4000), created="2025-01-02")
    res = analyze_studies([one, two])["digits"]
    assert [s.tag for s in res.studies] == ["lab1/s", "lab2/s"]
    assert set(res.baselines["study"]) == {"lab1/s", "lab2/s"}
    base = {"lab1/s": (0.95, 1.2e6, 10000), "lab2/s": (0.80, 6.0e5, 4000)}
    f = res.front
    assert set(f["study"]) == {"lab1/s", "lab2/s"}  # both studies reach the front with these seeds
    for _, r in f.iterrows():
        acc, energy, params = base[r["study"]]
        assert r["acc_gain"] == pytest.approx(r["val_acc"] - acc)
        assert r["energy_vs_dense"] == pytest.approx(r["energy_pj"] / energy)
        assert r["params_vs_dense"] == pytest.approx(r["params"] / params)
    knee = f[f["is_knee"]].iloc[0]
    assert res.knee["study"] == knee["study"] and res.knee["val_acc"] == knee["val_acc"]
    assert any("2 studies merged" in n for n in res.notes)


def test_a_study_merged_with_its_copy_is_refused(tmp_path):
    import shutil

    d = write_study(tmp_path / "orig", "s", make_trials(10, seed=1), created="2025-03-01T10:00:00")
    copy = tmp_path / "backup" / "s"
    shutil.copytree(d, copy)
    with pytest.raises(UserError, match="copies of one study") as e:
        analyze_studies([d, copy])
    assert "\n" not in str(e.value)
    assert analyze_studies([d, d])["digits"].counts["trials"] == 11  # the same folder twice: once


def test_front_members_dominated_by_the_dense_baseline_are_flagged(tmp_path):
    """A baseline better than the knee on both objectives: flagged in the front, pareto.csv, the
    report and the command's notes; with a poor baseline nothing is flagged."""
    from click.testing import CliRunner

    from sdsnn_search.cli import main

    t = make_trials(20, seed=2)
    strong = write_study(tmp_path, "strong", _baseline_of(t, val_acc=0.999, energy_pj=1.0e3))
    res = analyze_studies([strong])["digits"]
    assert res.front["dominated_by_dense"].all() and res.knee["dominated_by_dense"]
    assert any("the knee among them" in n for n in res.notes)
    r = CliRunner().invoke(main, ["pareto", str(strong), "--no-mlflow"])
    assert r.exit_code == 0, r.output
    assert "note:" in r.output and "dominated by their study's dense baseline" in r.output
    assert "The knee is dominated by the dense baseline" in (strong / "report.md").read_text()
    assert pd.read_csv(strong / "pareto.csv")["dominated_by_dense"].all()
    weak = write_study(tmp_path, "weak", _baseline_of(t, val_acc=0.5, energy_pj=1.9e6))
    res = analyze_studies([weak])["digits"]
    assert not res.front["dominated_by_dense"].any() and not any("dominated" in n for n in res.notes)
    # one objective equal, the other better: still dominated; equal on both: not
    knee = res.knee
    mixed = write_study(tmp_path, "mixed", _baseline_of(t, val_acc=float(knee["val_acc"]),
                                                        energy_pj=float(knee["energy_pj"]) - 1.0))
    assert analyze_studies([mixed])["digits"].knee["dominated_by_dense"]
    tie = write_study(tmp_path, "tie", _baseline_of(t, val_acc=float(knee["val_acc"]),
                                                    energy_pj=float(knee["energy_pj"])))
    assert not analyze_studies([tie])["digits"].knee["dominated_by_dense"]


def test_an_unfinished_study_and_a_two_member_front_are_said(tmp_path):
    import json as _json

    t = make_trials(6, seed=3)
    t = t[t["is_baseline"] | t["trial_id"].isin(["t000", "t001"])].copy()
    t.loc[t["trial_id"] == "t000", ["val_acc", "energy_pj"]] = [0.9, 5e5]
    t.loc[t["trial_id"] == "t001", ["val_acc", "energy_pj"]] = [0.8, 2e5]
    d = write_study(tmp_path, "cut", t)
    meta = _json.loads((d / "study.json").read_text())
    assert not any("not finished" in n for n in analyze_studies([d])["digits"].notes)
    meta["finished"] = False
    (d / "study.json").write_text(_json.dumps(meta))
    res = analyze_studies([d])["digits"]
    assert len(res.front) == 2 and res.knee_trial_id == "t000"
    assert any("has not finished" in n and f"sdsnn-search resume {d.resolve()}" in n for n in res.notes)
    assert any("two members" in n and "higher val_acc" in n for n in res.notes)


def test_history_follows_ended_at_and_no_mlflow_never_contacts_the_store(tmp_path):
    """The table's ended_at orders the hypervolume history; an older table (no ended_at) whose
    study names an MLflow server nobody answers falls back to row order at once, and with
    use_mlflow=False the store is not even probed."""
    import socket

    from sdsnn_search.pareto import load_study

    t = make_trials(8, seed=4)
    t["ended_at"] = np.arange(len(t), 0, -1, dtype=float) + 1.7e9  # finished in reverse row order
    d = write_study(tmp_path, "timed", t)
    s = load_study(d)
    assert list(s.trials["trial_id"]) == list(t["trial_id"])[::-1]
    assert s.order_source == "end times recorded in the trials table"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    old = write_study(tmp_path, "old", make_trials(8, seed=4), tracking_uri=f"http://127.0.0.1:{port}",
                      parent_run_id="abc")
    s = load_study(old)
    assert "unreachable" in s.order_source and list(s.trials["trial_id"]) == list(make_trials(8, seed=4)["trial_id"])
    assert "--no-mlflow" in load_study(old, use_mlflow=False).order_source
    gone = write_study(tmp_path, "gone", make_trials(8, seed=4), tracking_uri=f"sqlite:///{tmp_path}/nope.db",
                       parent_run_id="abc")
    assert "does not exist" in load_study(gone).order_source and not (tmp_path / "nope.db").exists()


def test_one_dataset_without_feasible_trials_does_not_stop_the_others(tmp_path):
    from click.testing import CliRunner

    from sdsnn_search.cli import main

    good = write_study(tmp_path, "good", make_trials(10, seed=6))
    bad = write_study(tmp_path, "bad", make_trials(6, seed=7, dataset="mnist"), dataset="mnist",
                      constraints=[{"metric": "energy_pj", "op": "<=", "value": 1.0}])
    r = CliRunner().invoke(main, ["pareto", str(bad), str(good), "--no-mlflow"])
    assert r.exit_code == 2
    assert "digits: " in r.output and (good / "report.md").is_file()
    assert "error: no feasible trial for dataset 'mnist'" in r.output and not (bad / "pareto.csv").exists()


def test_different_objectives_error_names_both(tmp_path):
    import json as _json

    a = write_study(tmp_path, "a", make_trials(6, seed=1), created="2025-01-01")
    b = write_study(tmp_path, "b", make_trials(6, seed=2), created="2025-01-02")
    meta = _json.loads((b / "study.json").read_text())
    meta["objectives"] = [{"metric": "val_acc", "mode": "max"}, {"metric": "params", "mode": "min"}]
    (b / "study.json").write_text(_json.dumps(meta))
    with pytest.raises(UserError, match=r"energy_pj \(min\).*params \(min\)"):
        analyze_studies([a, b])

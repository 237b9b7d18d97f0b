"""Export of Pareto trials: round trip, measured card figures, MLflow registry with aliases.

The study is tiny but real: three short digits runs trained with ``sdsnn.train.train`` (a dense
baseline and two SD-SNN settings), recorded in a study folder laid out as docs/internals.md says,
with an MLflow parent run and one child run per trial.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny import tiny_config  # noqa: E402

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _cfg(name: str, **over):
    return tiny_config(name, 5, **{"train.epochs": 2, **over})


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from sdsnn.train import train

    root = tmp_path_factory.mktemp("study") / "tiny"
    (root / "trials").mkdir(parents=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tiny", artifact_location=str(root / "mlartifacts"))
    parent = client.create_run(exp, run_name="tiny").info.run_id
    settings = {"base": {"plasticity.mode": "dense"}, "a": {"plasticity.rho_init_fc": 20.0},
                "b": {"plasticity.rho_init_fc": 5.0, "plasticity.shrink_factor": 0.6}}
    rows = []
    for tid, over in settings.items():
        run_dir = root / "trials" / tid
        res = train(_cfg(f"tiny-{tid}", **over), run_dir, progress=False)
        assert res.status == "completed"
        child = client.create_run(exp, run_name=f"trial-{tid}",
                                  tags={MLFLOW_PARENT_RUN_ID: parent, "trial_id": tid}).info.run_id
        rows.append({"trial_id": tid, "status": "completed", "is_baseline": tid == "base", "dataset": "digits",
                     "duration_s": 1.0, "epochs": 2, "run_dir": str(run_dir), "mlflow_run_id": child,
                     "config/plasticity.rho_init_fc": over.get("plasticity.rho_init_fc", 10.0),
                     **res.metrics,
                     "params": -1})  # a wrong value on purpose: the card must measure, not copy
    pd.DataFrame(rows).to_csv(root / "trials.csv", index=False)
    (root / "study.json").write_text(json.dumps({
        "name": "tiny", "dataset": "digits", "space_file": None,
        "objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "energy_pj", "mode": "min"}],
        "constraints": [], "reference_point": [0.0, 1e9], "tracking_uri": uri, "parent_run_id": parent,
        "experiment_name": "tiny", "baseline_trial_id": "base", "created": "2025-01-01", "seed": 5}))
    return root


def _predictions(model, loader):
    preds = []
    with torch.no_grad():
        for x, _ in loader:
            preds.append(model(x).argmax(1))
            model.reset()
    return torch.cat(preds)


def test_export_all_pareto_round_trip_card_and_registry(study, tmp_path):
    import mlflow.artifacts
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    import sdsnn
    from sdsnn.compact import count_parameters
    from sdsnn.config import EnergyConfig
    from sdsnn.data import build_loaders
    from sdsnn.train import restore
    from sdsnn_search.cli import main
    from sdsnn_search.pareto import analyze_studies

    out = tmp_path / "exported"
    r = CliRunner().invoke(main, ["export", str(study), "--pick", "all-pareto", "--out", str(out)])
    assert r.exit_code == 0, r.output
    front = analyze_studies([study])["digits"].front
    assert "base" not in set(front["trial_id"])
    info = json.loads((study / "study.json").read_text())
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    pruned_somewhere = False
    for tid in front["trial_id"]:
        folder = out / f"pareto-{tid}"
        assert {"model.safetensors", "model.json", "MODEL_CARD.md", "card.json"} <= {p.name for p in folder.iterdir()}
        card = json.loads((folder / "card.json").read_text())
        assert card["trial_id"] == tid and card["test"]["identical_predictions"] is True
        assert "identical" in (folder / "MODEL_CARD.md").read_text()

        # independent round trip on the whole test set
        rest = restore(study / "trials" / tid)
        bundle = build_loaders(rest.config.data, rest.config.seed, progress=False)
        loaded = sdsnn.load_model(folder)
        p_ckpt, p_loaded = _predictions(rest.model, bundle.test), _predictions(loaded, bundle.test)
        assert torch.equal(p_ckpt, p_loaded)
        labels = torch.cat([y for _, y in bundle.test])
        assert card["test"]["samples"] == len(labels)
        assert card["test"]["acc"] == pytest.approx(float((p_loaded == labels).float().mean()))

        # parameter counts are measured on the models, not copied from the trials table (-1 there)
        counts = count_parameters(rest.model, rest.masks)
        assert card["parameters"]["compact"] == sum(p.numel() for p in loaded.parameters()) == counts["compact"]
        assert card["parameters"]["dense"] == counts["dense"]
        if any((~m.neuron).any() for m in rest.masks.values()):
            pruned_somewhere = True
            assert card["parameters"]["compact"] < card["parameters"]["dense"]
        assert card["speed"]["compact_ms"] > 0 and card["speed"]["dense_ms"] > 0
        # ties at the top, counted independently
        with torch.no_grad():
            rates = torch.cat([loaded.predict(x) for x, _ in bundle.test])
        ties = sum(int((r == r.max()).sum() > 1) for r in rates)
        assert card["test"]["tied_top"] == ties
        # the card's energy, recomputed from the exported folder alone (its stored masks)
        rep = sdsnn.count_operations(loaded, loaded.masks, list(bundle.test), EnergyConfig(**card["config"]["energy"]))
        e = card["energy_test"]
        assert e["samples"] == rep.samples > 0  # the first energy.batches test batches, as at export
        for k in ("sops", "macs", "energy_pj"):
            assert e[k] == pytest.approx(getattr(rep, k), rel=1e-6), k

        # registered with its alias; the registered artifacts load and predict the same
        reg = card["registered"]
        mv = client.get_model_version_by_alias(reg["name"], f"pareto-{tid}")
        assert str(mv.version) == reg["version"] and mv.run_id == front.set_index("trial_id").loc[tid, "mlflow_run_id"]
        assert mv.source == reg["source"] and f"/export/pareto-{tid}/" in mv.source  # a folder per export
        local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / f"dl-{tid}"))
        assert torch.equal(_predictions(sdsnn.load_model(local), bundle.test), p_ckpt)
        # the version's card is the local one, registration included
        assert json.loads((Path(local) / "card.json").read_text()) == card
    assert pruned_somewhere, "the tiny study should prune some neurons"


def test_export_knee_alias_and_errors(study, tmp_path):
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from sdsnn_search.cli import main
    from sdsnn_search.pareto import analyze_studies

    r = CliRunner().invoke(main, ["export", str(study), "--pick", "knee", "--out", str(tmp_path / "k")])
    assert r.exit_code == 0, r.output
    knee = analyze_studies([study])["digits"].knee_trial_id
    card = json.loads((tmp_path / "k" / "knee" / "card.json").read_text())
    assert card["trial_id"] == knee
    info = json.loads((study / "study.json").read_text())
    mv = MlflowClient(tracking_uri=info["tracking_uri"]).get_model_version_by_alias("sdsnn-tiny", "knee")
    assert mv.tags["trial_id"] == knee

    # an existing pick folder is replaced only on request
    before = (tmp_path / "k" / "knee" / "card.json").read_text()
    r = CliRunner().invoke(main, ["export", str(study), "--pick", "knee", "--out", str(tmp_path / "k")])
    assert r.exit_code == 2 and "exists already" in r.output and r.output.count("\n") == 1
    assert (tmp_path / "k" / "knee" / "card.json").read_text() == before
    r = CliRunner().invoke(main, ["export", str(study), "--pick", "knee", "--out", str(tmp_path / "k"),
                                  "--overwrite", "--no-register"])
    assert r.exit_code == 0, r.output

    r = CliRunner().invoke(main, ["export", str(study), "--pick", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no study.json" in r.output
    assert not (tmp_path / "x").exists()


def test_export_one_trial_by_id_on_the_front_or_not(study, tmp_path):
    from click.testing import CliRunner

    from sdsnn import load_model
    from sdsnn_search.cli import main
    from sdsnn_search.pareto import analyze_studies

    assert "base" not in set(analyze_studies([study])["digits"].front["trial_id"])  # exported although off the front
    for tid in ["a", "b", "base"]:
        r = CliRunner().invoke(main, ["export", str(study), "--trial", tid, "--out", str(tmp_path / "t"), "--no-register"])
        assert r.exit_code == 0, r.output
        card = json.loads((tmp_path / "t" / f"trial-{tid}" / "card.json").read_text())
        assert card["trial_id"] == tid and card["alias"] == f"trial-{tid}"
        model = load_model(tmp_path / "t" / f"trial-{tid}")
        assert sum(p.numel() for p in model.parameters()) == card["parameters"]["compact"]

    base_card = (tmp_path / "t" / "trial-base" / "MODEL_CARD.md").read_text()
    assert "The dense baseline of study `tiny`" in base_card and "not on the study's Pareto front" in base_card
    assert json.loads((tmp_path / "t" / "trial-base" / "card.json").read_text())["vs_dense_baseline"] == {}
    assert json.loads((tmp_path / "t" / "trial-a" / "card.json").read_text())["vs_dense_baseline"]["acc_gain"] is not None

    # a study where no trial satisfies the constraints has no front, and --trial still exports
    import shutil

    strict = tmp_path / "strict"
    shutil.copytree(study, strict)
    meta = json.loads((strict / "study.json").read_text())
    meta["constraints"] = [{"metric": "val_acc", "op": ">=", "value": 2.0}]
    (strict / "study.json").write_text(json.dumps(meta))
    r = CliRunner().invoke(main, ["export", str(strict), "--pick", "knee", "--out", str(tmp_path / "s"), "--no-register"])
    assert r.exit_code == 2 and "no feasible trial" in r.output, r.output
    r = CliRunner().invoke(main, ["export", str(strict), "--trial", "a", "--out", str(tmp_path / "s"), "--no-register"])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "s" / "trial-a" / "card.json").read_text())
    assert card["on_front"] is False and card["picked_by"] == "trial id" and card["test"]["identical_predictions"]

    r = CliRunner().invoke(main, ["export", str(study), "--trial", "zzz", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "--trial zzz: no such trial" in r.output, r.output
    r = CliRunner().invoke(main, ["export", str(study), "--trial", "a", "--pick", "knee", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "not both" in r.output
    assert not (tmp_path / "x").exists()


def test_a_moved_study_folder_still_exports_and_reports(study, tmp_path):
    """Copy the study elsewhere and remove the original (a study trained on a cluster, analysed on
    a laptop): trials.csv and study.json still name the old absolute paths, yet export finds the
    checkpoints under trials/ and the MLflow store beside study.json."""
    import shutil

    from click.testing import CliRunner

    from sdsnn_search.cli import main
    from sdsnn_search.runner import read_study

    old = tmp_path / "old" / "tiny"
    shutil.copytree(study, old)
    trials = pd.read_csv(old / "trials.csv")
    trials["run_dir"] = [str(old / "trials" / t) for t in trials["trial_id"]]
    trials.to_csv(old / "trials.csv", index=False)
    info = json.loads((old / "study.json").read_text())
    info["tracking_uri"] = f"sqlite:///{old / 'mlflow.db'}"
    (old / "study.json").write_text(json.dumps(info))
    new = tmp_path / "new" / "tiny"
    shutil.copytree(old, new)
    shutil.rmtree(old)

    assert read_study(new)["tracking_uri"] == f"sqlite:///{(new / 'mlflow.db').resolve()}"
    r = CliRunner().invoke(main, ["pareto", str(new)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["export", str(new), "--pick", "knee", "--out", str(tmp_path / "exp")])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "exp" / "knee" / "card.json").read_text())
    assert card["test"]["identical_predictions"] is True
    assert "registered" in r.output


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_a_copied_study_folder_exports_from_and_into_itself_only(study, tmp_path):
    """A copy beside its original (study.json, trials.csv and the MLflow store all still name the
    original's absolute paths): export reads the copy's checkpoints, registers in the copy's
    store, writes the version's files under the copy's mlartifacts and leaves the original as it
    was; each export keeps its own version folder."""
    import shutil

    import mlflow.artifacts
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    import sdsnn
    from sdsnn_search.cli import main

    copy = tmp_path / "copy" / "tiny"
    shutil.copytree(study, copy)
    before = _files(study)
    out = tmp_path / "exp"
    r = CliRunner().invoke(main, ["export", str(copy), "--trial", "a", "--out", str(out)])
    assert r.exit_code == 0 and "registered" in r.output, r.output
    first = json.loads((out / "trial-a" / "card.json").read_text())["registered"]
    assert first["source"].startswith((copy / "mlartifacts").resolve().as_uri() + "/"), first
    client = MlflowClient(tracking_uri=f"sqlite:///{copy / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias(first["name"], "trial-a").version) == first["version"]
    r = CliRunner().invoke(main, ["export", str(copy), "--trial", "a", "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    second = json.loads((out / "trial-a" / "card.json").read_text())["registered"]
    assert second["version"] != first["version"] and second["source"] != first["source"]
    for reg in (first, second):  # both versions' files are there and load
        local = mlflow.artifacts.download_artifacts(artifact_uri=reg["source"], dst_path=str(tmp_path / reg["version"]))
        assert json.loads((Path(local) / "card.json").read_text())["registered"] == reg
        sdsnn.load_model(local)
    assert _files(study) == before, "the original study folder changed"
    # the copy's own checkpoint, not the original's that trials.csv names
    (copy / "trials" / "a" / "checkpoint.pt").unlink()
    r = CliRunner().invoke(main, ["export", str(copy), "--trial", "a", "--out", str(tmp_path / "exp2")])
    assert r.exit_code == 2 and str(copy / "trials" / "a" / "checkpoint.pt") in r.output, r.output

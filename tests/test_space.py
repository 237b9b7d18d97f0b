"""Search-space schema: the shipped files validate; bad files give one line, exit 2, nothing created."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from sdsnn.errors import ConfigError
from sdsnn_search.cli import main
from sdsnn_search.space import load_space, parse_space

ROOT = Path(__file__).resolve().parent.parent
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_all_five_spaces_ship_and_validate():
    names = {p.stem for p in SPACES}
    assert {"digits", "mnist", "cifar10", "nmnist", "dvsgesture"} <= names
    for p in SPACES:
        spec = load_space(p)
        assert spec.dataset == p.stem
        assert spec.params, p
        # every searched path is a real config field: a trial config builds at both bounds
        cfg = spec.trial_config({})
        assert cfg.data.dataset == p.stem
        assert spec.reference_point is not None and len(spec.reference_point) == len(spec.objectives)


def test_defaults_and_trial_config():
    spec = parse_space({"dataset": "digits", "params": {"plasticity.spine_window": {"type": "int", "low": 2, "high": 4}}})
    assert [(o.metric, o.mode) for o in spec.objectives] == [("val_acc", "max"), ("energy_pj", "min")]
    cfg = spec.trial_config({"plasticity.spine_window": 4})
    assert cfg.plasticity.spine_window == 4 and cfg.plasticity.mode == "sdsnn"
    assert cfg.train.threads == 1  # one torch thread per requested CPU
    dense = spec.trial_config({"plasticity.spine_window": 4}, baseline=True)
    assert dense.plasticity.mode == "dense" and dense.plasticity.spine_window == spec.trial_config({}).plasticity.spine_window
    three = parse_space({"objectives": [{"metric": "val_acc", "mode": "max"}, {"metric": "energy_pj", "mode": "min"},
                                        {"metric": "params", "mode": "min"}], "reference_point": [0, 1e6, 1e5]})
    assert len(three.objectives) == 3
    frac = parse_space({"resources": {"cpu": 0.5, "gpu": 0.25}})
    assert frac.resources.cpu == 0.5


BAD = {
    "unknown_field": ({"dataset": "digits", "serach": {}}, "serach", "unknown field"),
    "unknown_nested_field": ({"search": {"num_sample": 3}}, "search.num_sample", "unknown field"),
    "wrong_type": ({"search": {"num_samples": "many"}}, "search.num_samples", "integer"),
    "empty_range": ({"params": {"train.lr": {"type": "uniform", "low": 0.1, "high": 0.1}}}, "params.train.lr", "empty or inverted"),
    "inverted_range": ({"params": {"train.lr": {"type": "loguniform", "low": 0.1, "high": 0.01}}}, "params.train.lr", "empty or inverted"),
    "not_a_config_field": ({"params": {"plasticity.spine_windw": {"type": "int", "low": 1, "high": 3}}}, "params.plasticity.spine_windw", "not a field"),
    "invalid_value_in_range": ({"params": {"plasticity.shrink_factor": {"type": "uniform", "low": 0.5, "high": 1.5}}}, "params.plasticity.shrink_factor", "invalid"),
    "unknown_metric": ({"objectives": [{"metric": "val_accuracy", "mode": "max"}]}, "objectives.0.metric", "unknown metric"),
    "unknown_constraint_metric": ({"constraints": [{"metric": "joules", "op": "<=", "value": 1}]}, "constraints.0.metric", "unknown metric"),
    "unknown_dataset": ({"dataset": "imagenet"}, "dataset", "unknown dataset"),
    "too_many_objectives": ({"objectives": [{"metric": m, "mode": "min"} for m in ("val_loss", "energy_pj", "params", "sops")]}, "objectives", "1 to 3"),
    "reference_point_length": ({"reference_point": [0.0]}, "reference_point", "one value per objective"),
    "negative_cpu": ({"resources": {"cpu": 0}}, "resources.cpu", "greater than 0"),
    "fractional_cpu_above_one": ({"resources": {"cpu": 1.5}}, "resources", "fractions"),
    "bad_experiment_field": ({"experiment": {"model": {"depth": 0}}}, "experiment.model.depth", "greater than or equal"),
    "cuda_without_gpu": ({"experiment": {"train": {"device": "cuda"}}}, "experiment.train.device", "resources.gpu"),
    "categorical_without_choices": ({"params": {"model.width": {"type": "categorical", "choices": []}}}, "params.model.width.choices", "non-empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spaces_name_file_and_field(case, tmp_path):
    raw, field, words = BAD[case]
    f = tmp_path / f"{case}.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_space(f)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(f) in msg and f"'{field}'" in msg and words in msg, msg


def _cli_run(tmp_path, space: Path, *extra: str):
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["run", "--space", str(space), "--results-dir", str(results), "--name", "s", *extra])
    return r, results


def test_cli_missing_file_yaml_syntax_and_impossible_resources_exit_2_and_create_nothing(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "nope.yaml"
    syn = tmp_path / "syntax.yaml"
    syn.write_text("dataset: digits\nsearch: {num_samples: 3\n")
    cases["syntax"] = syn
    big = tmp_path / "big.yaml"
    big.write_text(yaml.safe_dump({"dataset": "digits", "resources": {"cpu": 512}}))
    cases["cpu"] = big
    gpu = tmp_path / "gpu.yaml"
    gpu.write_text(yaml.safe_dump({"dataset": "digits", "resources": {"cpu": 1, "gpu": 8}}))
    cases["gpu"] = gpu
    unk = tmp_path / "unknown.yaml"
    unk.write_text(yaml.safe_dump({"dataset": "imagenet"}))
    cases["dataset"] = unk
    expect = {"missing": "no such search-space file", "syntax": "YAML syntax error", "cpu": "resources.cpu",
              "gpu": "resources.gpu", "dataset": "unknown dataset"}
    for name, path in cases.items():
        r, results = _cli_run(tmp_path, path)
        assert r.exit_code == 2, (name, r.output)
        err = r.stderr.strip()
        assert err.count("\n") == 0 and expect[name] in err and str(path) in err, (name, err)
        assert not results.exists(), name  # nothing created on disk (no study folder, no MLflow store)


def test_cli_spaces_validate(tmp_path):
    ok = CliRunner().invoke(main, ["spaces", "validate", str(ROOT / "search_spaces" / "digits.yaml")])
    assert ok.exit_code == 0 and "ok" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"params": {"train.lr": {"type": "uniform", "low": 1, "high": 0}}}))
    r = CliRunner().invoke(main, ["spaces", "validate", str(bad)])
    assert r.exit_code == 2 and "params.train.lr" in r.stderr


def test_overrides_are_validated_too(tmp_path):
    with pytest.raises(ConfigError, match="search.num_samples"):
        load_space(ROOT / "search_spaces" / "digits.yaml", {"search.num_samples": 0})
    spec = load_space(ROOT / "search_spaces" / "digits.yaml", {"search.num_samples": 3, "search.epochs": 1})
    assert spec.search.num_samples == 3 and spec.epochs == 1

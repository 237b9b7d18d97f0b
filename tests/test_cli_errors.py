"""Bad input on the command line: one line on stderr saying what, where and how to fix it, exit
code 2, no traceback, and nothing written (found by a stranger's tour of the CLI)."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner

from sdsnn_search.cli import main

REPO = Path(__file__).resolve().parents[1]


def _fails_cleanly(args, cwd: Path, expect: str) -> str:
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    err = r.stderr.strip()
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert expect in err, err
    # click's own usage errors have a usage header; ours are exactly one line
    if err.startswith("error:"):
        assert len(err.splitlines()) == 1, err
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before  # nothing written
    return err


def test_bad_files_and_values_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet.yaml").write_text("model: {name: resnet}\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "a_file").write_text("x")
    study = tmp_path / "broken"
    study.mkdir()
    (study / "study.json").write_text("{bad")
    space = str(REPO / "search_spaces" / "digits.yaml")
    config = str(REPO / "configs" / "digits.yaml")

    _fails_cleanly(["train", "--config", "resnet.yaml", "--out", "o"], tmp_path, "not a known backbone")
    _fails_cleanly(["train", "--config", "binary.yaml"], tmp_path, "not a UTF-8 text file")
    _fails_cleanly(["train", "--config", "empty.yaml"], tmp_path, "is empty")
    _fails_cleanly(["train", "--config", space], tmp_path, "this is a search-space file")
    _fails_cleanly(["spaces", "validate", config], tmp_path, "this is an experiment config")
    _fails_cleanly(["spaces", "validate", "empty.yaml"], tmp_path, "is empty")
    _fails_cleanly(["train", "--set", "plasticity.spine_window=[1,"], tmp_path, "not valid YAML")
    _fails_cleanly(["train", "--dataset", "digits", "--epochs", "1", "--out", "a_file/run"], tmp_path,
                   "a_file")
    _fails_cleanly(["train", "--epochs", "0"], tmp_path, "--epochs")
    _fails_cleanly(["ui", "broken"], tmp_path, "is not valid JSON")
    _fails_cleanly(["resume", "broken"], tmp_path, "is not valid JSON")
    _fails_cleanly(["ui", "broken", "--port", "99999"], tmp_path, "--port")
    _fails_cleanly(["run", "--space", space, "--epochs", "-1"], tmp_path, "--epochs")
    _fails_cleanly(["run", "--space", space, "--num-samples", "1", "--epochs", "1", "--results-dir",
                    "a_file/x"], tmp_path, "a_file")
    (tmp_path / "choice.yaml").write_text(
        "dataset: digits\nexperiment: {}\nparams:\n"
        "  plasticity.develop_every: {type: categorical, choices: [epoch, x]}\n"
        "objectives: [{metric: val_acc, mode: max}, {metric: energy_pj, mode: min}]\n"
        "reference_point: [0, 1.0e9]\n")
    err = _fails_cleanly(["spaces", "validate", "choice.yaml"], tmp_path,
                         "value 'x' is invalid for 'plasticity.develop_every': Input should be 'epoch'")
    assert "literal" not in err  # no pydantic internals in the message
    _fails_cleanly(["run", "--space", space, "--resume", "broken"], tmp_path, "keeps its own settings")
    # a backbone or dataset nobody registered fails validation, not as a failed baseline trial
    (tmp_path / "net.yaml").write_text("dataset: digits\nexperiment: {model: {name: no_such_net}}\n")
    _fails_cleanly(["run", "--space", "net.yaml", "--num-samples", "1", "--epochs", "1"], tmp_path,
                   "field 'experiment.model.name': unknown backbone 'no_such_net'")
    (tmp_path / "nets.yaml").write_text(
        "dataset: digits\nparams:\n  model.name: {type: categorical, choices: [mlp, resnet]}\n")
    _fails_cleanly(["spaces", "validate", "nets.yaml"], tmp_path,
                   "field 'params.model.name.choices': unknown backbone 'resnet'")
    (tmp_path / "ds.yaml").write_text("dataset: imagenet\n")
    _fails_cleanly(["spaces", "validate", "ds.yaml"], tmp_path, "field 'dataset': unknown dataset 'imagenet'")
    # a search on a dataset that is not there fails before any trial runs or any folder is made
    _fails_cleanly(["run", "--space", str(REPO / "search_spaces" / "mnist.yaml"), "--data-root", str(tmp_path / "none")],
                   tmp_path, "dataset 'mnist' not found")
    # nothing listens on port 1: both fail in seconds instead of retrying for minutes
    _fails_cleanly(["run", "--space", space, "--num-samples", "1", "--epochs", "1", "--name", "t",
                    "--tracking-uri", "http://127.0.0.1:1"], tmp_path, "no MLflow server answers")
    _fails_cleanly(["run", "--space", space, "--num-samples", "1", "--epochs", "1", "--name", "a",
                    "--address", "127.0.0.1:1"], tmp_path, "no Ray head answers")
    if not torch.cuda.is_available():
        _fails_cleanly(["train", "--dataset", "digits", "--set", "train.device=cuda", "--out", "o"], tmp_path,
                       "CUDA device")
    assert (study / "study.json").read_text() == "{bad"


def test_values_that_used_to_slip_through(tmp_path, monkeypatch):
    """Found by the second stranger's tour: an out-of-range seed crashed in Optuna's sampler and
    left a study folder behind; a command-line override hid a bad value of the file; a repeated
    key was silently dropped; an unknown tracking-URI scheme crashed after the folder was made."""
    monkeypatch.chdir(tmp_path)
    space = str(REPO / "search_spaces" / "digits.yaml")
    text = (REPO / "search_spaces" / "digits.yaml").read_text()
    small = ["--num-samples", "1", "--epochs", "1"]
    _fails_cleanly(["run", "--space", space, *small, "--seed", "-5"], tmp_path,
                   "(with the command-line options): field 'search.seed': Input should be greater than or equal to 0")
    _fails_cleanly(["run", "--space", space, *small, "--seed", str(2**32)], tmp_path, "field 'search.seed'")
    (tmp_path / "seed.yaml").write_text(text.replace("seed: 0,", "seed: -1,"))
    _fails_cleanly(["spaces", "validate", "seed.yaml"], tmp_path, "seed.yaml: field 'search.seed'")
    # the file as written is checked before the overrides replace its values
    (tmp_path / "many.yaml").write_text(text.replace("num_samples: 14", "num_samples: many"))
    _fails_cleanly(["run", "--space", "many.yaml", *small], tmp_path,
                   "many.yaml: field 'search.num_samples': Input should be a valid integer")
    (tmp_path / "neg.yaml").write_text(text.replace("train: {epochs: 4,", "train: {epochs: -1,"))
    _fails_cleanly(["run", "--space", "neg.yaml", *small], tmp_path,
                   "neg.yaml: field 'experiment.train.epochs': Input should be greater than or equal to 1")
    assert "train: {epochs: -1," in (tmp_path / "neg.yaml").read_text() and "seed: 0," in text  # the edits took
    (tmp_path / "twice.yaml").write_text(text.replace(
        "  train.lr: {type: loguniform", "  train.lr: {type: uniform, low: 0, high: 1}\n  train.lr: {type: loguniform"))
    line = next(i for i, l in enumerate((tmp_path / "twice.yaml").read_text().splitlines(), 1) if "train.lr" in l)
    _fails_cleanly(["spaces", "validate", "twice.yaml"], tmp_path,
                   f"twice.yaml: line {line + 1}: key 'train.lr' appears twice in the same mapping (first on line {line})")
    (tmp_path / "cfg.yaml").write_text("train: {epochs: 1}\ntrain: {epochs: 2}\n")
    _fails_cleanly(["train", "--config", "cfg.yaml"], tmp_path, "key 'train' appears twice")
    # MLflow refuses the scheme only once the study starts: what the run made by then is removed,
    # and nothing else (another study's folder beside it stays)
    (tmp_path / "res" / "other").mkdir(parents=True)
    (tmp_path / "res" / "other" / "study.json").write_text("{}")
    _fails_cleanly(["run", "--space", space, *small, "--name", "t", "--results-dir", "res/new/deeper",
                    "--tracking-uri", "foo://bar"], tmp_path, "--tracking-uri foo://bar: MLflow could not start the study's run")
    _fails_cleanly(["run", "--space", space, *small, "--name", "t", "--results-dir", "res",
                    "--tracking-uri", "foo://bar"], tmp_path, "unsupported URI 'foo://bar'")


def test_train_refuses_to_overwrite_and_to_resume_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "digits", "--epochs", "1", "--no-baseline", "--set", "data.train_limit=100",
            "--set", "model.width=8", "--set", "train.threads=1", "--out", "run"]
    _fails_cleanly([*args[:-1], "nowhere", "--resume"], tmp_path, "has no checkpoint to continue")
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    ckpt = tmp_path / "run" / "sdsnn" / "checkpoint.pt"
    stamp = ckpt.stat().st_mtime_ns
    _fails_cleanly(args, tmp_path, "holds a run already")
    assert ckpt.stat().st_mtime_ns == stamp
    again = CliRunner().invoke(main, [*args, "--overwrite"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert ckpt.stat().st_mtime_ns != stamp
    # --resume continues *this* run: its own settings, a longer schedule only
    _fails_cleanly([*args, "--resume", "--overwrite"], tmp_path, "contradict each other")
    _fails_cleanly(["train", "--resume", "--out", "run", "--set", "model.width=16"], tmp_path,
                   "model.width 8 -> 16")
    more = CliRunner().invoke(main, ["train", "--resume", "--out", "run", "--epochs", "2", "--no-baseline"],
                              catch_exceptions=False)  # no need to repeat the run's --set options
    assert more.exit_code == 0, more.output
    assert len((tmp_path / "run" / "sdsnn" / "metrics.jsonl").read_text().splitlines()) == 2
    _fails_cleanly(["train", "--resume", "--out", "run", "--epochs", "1"], tmp_path, "trained 2 epochs already")


def test_ctrl_c_during_train_says_how_to_continue(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sdsnn_search.cli", "train", "--dataset", "digits", "--epochs", "200",
           "--no-baseline", "--set", "train.threads=1", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "sdsnn" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert f"continue with  sdsnn-search train --resume --out {out}" in err and "Traceback" not in err
    done = len(metrics.read_text().splitlines())
    assert 2 <= done < 200
    # the printed command as it is: the run continues as it was started (no baseline)
    r = CliRunner().invoke(main, ["train", "--resume", "--out", str(out), "--epochs", str(done + 1)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(metrics.read_text().splitlines()) == done + 1
    assert not (out / "dense").exists()


def test_ctrl_c_in_any_command_exits_130_and_a_missing_study_folder_is_named(tmp_path, monkeypatch):
    import sdsnn_search.export as export

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_study", interrupted)
    r = CliRunner().invoke(main, ["export", str(tmp_path), "--out", str(tmp_path / "x")], catch_exceptions=False)
    assert r.exit_code == 130 and "interrupted" in r.output and "Aborted" not in r.output, r.output
    monkeypatch.undo()
    missing = tmp_path / "nope"
    r = CliRunner().invoke(main, ["export", str(missing), "--out", str(tmp_path / "x")], catch_exceptions=False)
    assert r.exit_code == 2 and r.output.count("\n") == 1 and f"{missing}: no such folder" in r.output, r.output


def test_train_overwrite_replaces_both_parts_and_resume_checks_the_folder_first(tmp_path, monkeypatch):
    """Found by a stranger's tour: --overwrite --no-baseline left the old dense/ run, which a later
    --resume printed as this run's baseline; a changed dataset on resume was reported as a missing
    dataset; a damaged config.json ended in a traceback after rewriting it with defaults."""
    from sdsnn.compare import resume_hint

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--set", "data.train_limit=100", "--set", "model.width=8",
            "--set", "train.threads=1", "--out", "run"]
    r = CliRunner().invoke(main, [*base, "--epochs", "2"], catch_exceptions=False)
    assert r.exit_code == 0 and (run / "dense" / "checkpoint.pt").is_file(), r.output
    r = CliRunner().invoke(main, [*base, "--epochs", "1", "--no-baseline", "--overwrite"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not any((run / "dense").iterdir()), "the old baseline survived --overwrite"
    r = CliRunner().invoke(main, ["train", "--resume", "--out", "run", "--epochs", "2"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert not (run / "dense" / "checkpoint.pt").exists()
    assert len((run / "sdsnn" / "metrics.jsonl").read_text().splitlines()) == 2
    # a changed setting is named as such, before the (missing) data is looked for
    _fails_cleanly(["train", "--resume", "--out", "run", "--dataset", "mnist", "--data-root", str(tmp_path / "none")],
                   tmp_path, "data.dataset 'digits' -> 'mnist'")
    (run / "sdsnn" / "config.json").write_text("{bad")
    _fails_cleanly(["train", "--resume", "--out", "run", "--epochs", "3"], tmp_path, "config.json is unreadable")
    (run / "sdsnn" / "config.json").unlink()
    _fails_cleanly(["train", "--resume", "--out", "run", "--epochs", "3"], tmp_path, "config.json is missing")
    assert "continue with" in resume_hint(run) and "nothing to resume" in resume_hint(tmp_path / "new")


def test_a_value_fitting_no_member_of_a_union_field_names_the_field_and_each_choice(tmp_path):
    err = _fails_cleanly(["train", "--dataset", "digits", "--set", "plasticity.develop_every=ep", "--out", "o"],
                         tmp_path, "field 'plasticity.develop_every': Input should be 'epoch' or a valid integer")
    assert "literal[" not in err and "more error" not in err

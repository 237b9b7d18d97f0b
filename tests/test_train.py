"""The training loop: exact resume, NaN status, hard masks through real training, CLI train."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdsnn.config import ExperimentConfig
from sdsnn.structure import expand_group_mask
from sdsnn.train import restore, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny import tiny_config  # noqa: E402


def tiny_cfg(**over) -> ExperimentConfig:
    return tiny_config("tiny", 3, **over)


def _strip_times(history):
    return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]


class _Crash(RuntimeError):
    pass


def test_resume_reproduces_uninterrupted_run(tmp_path):
    cfg = tiny_cfg()
    full = train(cfg, tmp_path / "full", progress=False)

    def crash_after_two(metrics, run_dir):
        if metrics["epoch"] == 2:
            raise _Crash()

    with pytest.raises(_Crash):
        train(cfg, tmp_path / "cut", on_epoch=crash_after_two, progress=False)
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False)

    assert full.status == resumed.status == "completed"
    assert len(resumed.history) == 3
    assert _strip_times(resumed.history) == _strip_times(full.history)
    a = restore(tmp_path / "full").model.state_dict()
    b = restore(tmp_path / "cut").model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # metrics.jsonl holds exactly one line per epoch after the resume
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [1.0, 2.0, 3.0]


def test_slim_checkpoint_restores_the_same_model_and_masks_but_refuses_resume(tmp_path):
    from sdsnn.errors import UserError
    from sdsnn.train import slim_checkpoint

    cfg = tiny_cfg()
    train(cfg, tmp_path, progress=False)
    full = restore(tmp_path)
    x = torch.rand(cfg.data.time_steps, 16, 1, 8, 8)
    before, after = slim_checkpoint(tmp_path)
    assert after < before / 2, (before, after)
    assert slim_checkpoint(tmp_path) == (after, after)  # a slim file is left as it is
    slim = restore(tmp_path)
    assert slim.epoch == full.epoch and slim.metrics == full.metrics
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, slim.model.state_dict()[k]), k
    assert full.masks.keys() == slim.masks.keys()
    for k in full.masks:
        assert torch.equal(full.masks[k].group, slim.masks[k].group) and torch.equal(full.masks[k].neuron, slim.masks[k].neuron)
    assert not all(m.neuron.all() for m in full.masks.values())  # something was pruned, so the masks say something
    with torch.no_grad():
        assert torch.equal(full.model.predict(x), slim.model.predict(x))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["slim"] and "optimizer" not in state and set(state["development"]["layers"]["fc1"]) == {"group", "neuron", "rho"}
    config_before = (tmp_path / "config.json").read_text()
    with pytest.raises(UserError, match="cannot be resumed"):
        train(tiny_cfg(**{"train.epochs": 4}), tmp_path, resume=True, progress=False)
    assert (tmp_path / "config.json").read_text() == config_before  # refused before anything changed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the device machine)")
def test_resume_on_cuda(tmp_path):
    """A run cut short on the GPU resumes there (the checkpoint's random-number state used to be
    loaded onto the GPU, which set_rng_state refuses) and ends with the epochs it was asked for."""
    cfg = tiny_cfg(**{"train.device": "cuda"})

    def crash_after_one(metrics, run_dir):
        if metrics["epoch"] == 1:
            raise _Crash()

    with pytest.raises(_Crash):
        train(cfg, tmp_path, on_epoch=crash_after_one, progress=False)
    resumed = train(cfg, tmp_path, resume=True, progress=False)
    assert resumed.status == "completed" and [h["epoch"] for h in resumed.history] == [1.0, 2.0, 3.0]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["rng_cuda"] is not None


def test_development_prunes_and_masked_weights_stay_zero(tmp_path):
    # a development step after every optimizer step: several steps per epoch
    cfg = tiny_cfg(**{"train.epochs": 4, "plasticity.develop_every": 1})
    res = train(cfg, tmp_path, progress=False)
    assert res.status == "completed"
    assert res.metrics["syn_prune_rate"] > 0.0  # development actually pruned something
    r = restore(tmp_path)
    for li in r.model.prunable_layers():
        m = r.masks[li.name]
        live = expand_group_mask(m.group, li.weight)
        assert int((li.weight != 0).sum()) <= int(live.sum())
        assert torch.all(li.weight[~live] == 0)
    assert res.metrics["energy_pj"] <= res.metrics["dense_energy_pj"]
    # per-epoch counts cover every development step of the epoch: they add up to the totals
    assert sum(h["pruned"] for h in res.history) == res.metrics["pruned_total"] > 0
    assert sum(h["regrown"] for h in res.history) == res.metrics["regrown_total"]
    pruned_now = sum(int((~r.masks[li.name].neuron).sum()) for li in r.model.prunable_layers())
    assert res.metrics["pruned_total"] >= pruned_now > 0
    # the mask-only synaptic rate ignores weights reading from pruned neurons: never higher
    hidden = [li for li in r.model.prunable_layers() if not li.is_output]
    all_w = sum(li.weight.numel() for li in hidden)
    mask_w = sum(int(r.masks[li.name].group.sum()) * li.group_size for li in hidden)
    assert res.metrics["syn_prune_rate_masks"] == pytest.approx(1 - mask_w / all_w)
    assert res.metrics["syn_prune_rate_masks"] <= res.metrics["syn_prune_rate"]
    # the restored model goes out without the development's hooks (BN-bypass probes)
    assert any(li.norm is not None for li in hidden)
    for m in r.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, m


def test_nan_loss_ends_run_with_status(tmp_path, monkeypatch):
    import sdsnn.train as tr

    real_loss, calls = tr._loss, {"n": 0}

    def loss_turning_nan(*args):
        calls["n"] += 1
        out = real_loss(*args)
        # the 15th training batch (in epoch 2) produces a NaN loss
        return out * float("nan") if calls["n"] == 15 else out

    monkeypatch.setattr(tr, "_loss", loss_turning_nan)
    seen = []
    cfg = tiny_cfg()
    res = train(cfg, tmp_path / "bad", on_epoch=lambda m, d: seen.append(m), progress=False)
    assert res.status == "nan"
    assert len(seen) == 2  # epoch 1 completed; the callback still hears about the failed epoch 2
    assert len(res.history) == 2 and math.isnan(res.history[-1]["train_loss"])
    assert "val_acc" not in res.history[-1]  # no garbage validation figures for a NaN epoch
    state = torch.load(tmp_path / "bad" / "checkpoint.pt", weights_only=True)
    assert state["status"] == "nan" and state["epoch"] == 2
    monkeypatch.setattr(tr, "_loss", real_loss)
    again = train(cfg, tmp_path / "bad", resume=True, progress=False)  # a NaN run is not trained on
    assert again.status == "nan" and len(again.history) == 2


def test_diverging_weights_end_run_with_nan_status(tmp_path):
    # With lr 1e30 the weights overflow after a few steps; spike outputs stay bounded, so this is
    # caught through the non-finite gradient norm.
    bad = tiny_cfg(**{"train.lr": 1e30, "train.weight_decay": 0.0, "train.epochs": 2})
    res = train(bad, tmp_path, progress=False)
    assert res.status == "nan"


def test_train_cli_prints_table_against_dense(tmp_path):
    cmd = [
        sys.executable, "-m", "sdsnn_search.cli", "train", "--dataset", "digits", "--epochs", "1",
        "--set", "data.train_limit=200", "--set", "model.width=16", "--set", "train.threads=1",
        "--out", str(tmp_path / "run"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    for label in ("validation accuracy", "test accuracy", "synaptic pruning", "energy / sample"):
        assert label in p.stdout
    assert (tmp_path / "run" / "sdsnn" / "checkpoint.pt").exists()
    assert (tmp_path / "run" / "dense" / "test.json").exists()


def test_train_cli_bad_field_is_one_line_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "sdsnn_search.cli", "train", "--set", "plasticity.spine_windw=2",
           "--out", str(tmp_path / "x")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "plasticity.spine_windw" in p.stderr and "unknown field" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_potential_readout_trains_and_outputs_are_not_rates(tmp_path):
    cfg = tiny_cfg(**{"model.readout": "potential", "model.width": 64, "data.train_limit": None,
                      "data.time_steps": 4, "train.epochs": 2})
    res = train(cfg, tmp_path, progress=False)
    assert res.status == "completed"
    assert res.metrics["val_acc"] > 0.5  # chance is 0.1
    r = restore(tmp_path)
    x = torch.rand(2, 5, 1, 8, 8)
    out = r.model(x)
    r.model.reset()
    # a non-spiking readout gives real-valued means, not multiples of 1/T in [0, 1]
    assert out.shape == (5, 10)
    assert bool(((out * 2) != (out * 2).round()).any())


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load_and_build(path):
    """Every config in configs/ validates and builds its backbone for its dataset's input."""
    from sdsnn import build_model
    from sdsnn.config import load_config
    from sdsnn.data.registry import get_dataset

    cfg = load_config(path)
    ds = get_dataset(cfg.data.dataset)
    model = build_model(cfg.model, ds.shape_for(cfg), ds.num_classes)
    assert model.prunable_layers()[-1].module.out_features == ds.num_classes


def test_cifar10_config_is_the_reference_setup():
    """configs/cifar10.yaml carries the constants of docs/sd-snn.md section 12."""
    from sdsnn.config import REFERENCE_PLASTICITY, load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cifar10.yaml")
    assert (cfg.model.name, cfg.data.time_steps, cfg.data.batch_size, cfg.data.augment) == ("sdsnn_cifar", 8, 50, True)
    t = cfg.train
    assert (t.epochs, t.lr, t.min_lr, t.weight_decay, t.warmup_epochs, t.loss) == (600, 2.44e-4, 1e-5, 0.01, 5, "mse")
    assert cfg.plasticity.model_dump() == {**cfg.plasticity.model_dump(), **REFERENCE_PLASTICITY}
    assert cfg.model.readout == "rate" and cfg.plasticity.spine_window == 18


def test_budgeted_training_benchmark_pauses_and_resumes(tmp_path):
    """benchmarks/bench_train_budget.py: out of time after an epoch it pauses (no test figure),
    the same command continues from the checkpoint and finishes with the test set evaluated once."""
    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps(tiny_cfg(**{"train.epochs": 3}).to_dict()))  # JSON is YAML
    cmd = [sys.executable, str(root / "benchmarks" / "bench_train_budget.py"), "--config", str(cfg),
           "--name", "tiny-budget", "--out", str(tmp_path / "run"), "--result-dir", str(tmp_path),
           "--set", "train.device=cpu"]
    first = subprocess.run(cmd + ["--minutes", "0"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    out = json.loads((tmp_path / "tiny-budget.json").read_text())
    assert out["summary"]["epochs_done"] == 1 and out["summary"]["test_acc"] is None
    assert out["summary"]["status"].startswith("paused") and out["summary"]["median_epoch_s"] > 0
    second = subprocess.run(cmd + ["--minutes", "5"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    out = json.loads((tmp_path / "tiny-budget.json").read_text())
    assert out["summary"]["status"] == "completed" and out["summary"]["epochs_done"] == 3
    assert [e["epoch"] for e in out["per_epoch"]] == [1.0, 2.0, 3.0]
    assert 0.0 <= out["summary"]["test_acc"] <= 1.0
    # the resumed run is the uninterrupted one (exact resume)
    whole = train(tiny_cfg(**{"train.epochs": 3}), tmp_path / "whole", evaluate_test=True, progress=False)
    assert _strip_times(whole.history) == _strip_times(json.loads(line) for line in
                                                        (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert whole.test["test_acc"] == out["summary"]["test_acc"]

    # a call killed mid-run (the machine's time limit) still leaves the figures of its epochs
    import signal
    import time

    result = tmp_path / "long" / "tiny-long.json"
    proc = subprocess.Popen([*cmd[:4], "--name", "tiny-long", "--out", str(tmp_path / "long-run"), "--result-dir",
                             str(tmp_path / "long"), "--set", "train.device=cpu", "--epochs", "500", "--minutes", "9"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not result.exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    out = json.loads(result.read_text())
    assert out["summary"]["status"] == "in progress" and out["summary"]["epochs_done"] >= 1
    assert out["summary"]["test_acc"] is None and len(out["per_epoch"]) == out["summary"]["epochs_done"]


def test_develop_every_epoch_runs_one_step_per_epoch(tmp_path):
    """develop_every: epoch (the reference) -> development step s at the end of epoch s+1; with
    N = 1 pruning starts at s = 3 > 2N, i.e. at the end of epoch 4, not before."""
    cfg = tiny_cfg(**{"train.epochs": 4, "plasticity.develop_every": "epoch", "plasticity.spine_window": 1})
    res = train(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["development"]["step"] == 4
    pruned = [h["pruned"] for h in res.history]
    assert pruned[:3] == [0, 0, 0] and pruned[3] >= 2  # K = floor(24 * 10 / 100) = 2 per hidden layer


def test_a_repeated_frame_travels_to_the_device_once():
    from sdsnn.train import to_device

    frame = torch.rand(4, 1, 8, 8)
    x = frame.unsqueeze(0).expand(6, -1, -1, -1, -1)  # direct encoding: T = 6 views of one frame
    assert to_device(x, torch.device("cpu")) is x  # already there
    moved = to_device(x, torch.device("meta"))  # another device (shape only)
    assert moved.device.type == "meta" and moved.shape == x.shape and moved.stride(0) == 0
    spikes = (torch.rand(6, 4, 1, 8, 8) < 0.5).float()  # Poisson / events: every step differs
    assert to_device(spikes, torch.device("meta")).is_contiguous()


def test_train_table_explains_a_run_too_short_to_prune(tmp_path):
    from sdsnn.compare import train_against_dense

    short = tiny_cfg(**{"train.epochs": 2, "plasticity.develop_every": "epoch", "plasticity.spine_window": 3})
    comp = train_against_dense(short, tmp_path / "short", baseline=False, progress=False)
    assert comp.run.metrics["neuron_prune_rate"] == 0.0 and comp.run.metrics["dev_steps"] == 2
    (note,) = comp.notes()
    assert "starts at development step 2N+1 = 7" in note and "made 2" in note
    pruned = train_against_dense(tiny_cfg(), tmp_path / "long", baseline=False, progress=False)
    assert pruned.run.metrics["neuron_prune_rate"] > 0 and pruned.notes() == []


def test_resume_check_counts_settings_added_since_with_their_defaults(tmp_path):
    """A run saved before a setting existed resumes (the setting's default is what it used); a
    setting that differs is still refused, in one line."""
    from sdsnn.compare import check_resumable
    from sdsnn.errors import UserError

    cfg = tiny_cfg()
    saved = cfg.to_dict()
    del saved["data"]["randaugment_ops"], saved["data"]["randaugment_magnitude"]  # an older config.json
    (tmp_path / "config.json").write_text(json.dumps(saved))
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # a folder that has trained (the file is not read)
    check_resumable(tmp_path, cfg)
    with pytest.raises(UserError, match="data.randaugment_ops 0 -> 2"):
        check_resumable(tmp_path, tiny_cfg(**{"data.randaugment_ops": 2}))


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> bytes:
    """The bytes of a real (full, resumable) checkpoint of a one-epoch tiny run."""
    run = tmp_path_factory.mktemp("real")
    train(tiny_cfg(**{"train.epochs": 1}), run, progress=False)
    return (run / "checkpoint.pt").read_bytes()


_DAMAGE = {
    "text": lambda good: b"this is not a checkpoint\n",  # a text file written over it
    "half": lambda good: good[: len(good) // 2],  # truncated (the archive's directory is lost)
    "prefix": lambda good: good[:10000],  # truncated early (torch: "[Errno 22] Invalid argument")
    "empty": lambda good: b"",
    "tensor": lambda good: _saved(torch.zeros(3)),  # a torch file, but not a checkpoint
}


def _saved(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("damage", sorted(_DAMAGE))
def test_a_corrupt_checkpoint_is_one_line_naming_it_for_restore_resume_and_slim(tmp_path, real_checkpoint, damage):
    """A checkpoint that torch cannot read (text over it, cut short) is a UserError in one line that
    names the file and says what to do, from restore, resume and slim_checkpoint alike; never the
    weights_only=False advice of torch's own message, and nothing in the run folder changes."""
    from sdsnn.errors import UserError
    from sdsnn.train import slim_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    bad = _DAMAGE[damage](real_checkpoint)
    ckpt.write_bytes(bad)
    calls = {
        "restore": lambda: restore(tmp_path),
        "resume": lambda: train(tiny_cfg(**{"train.epochs": 2}), tmp_path, resume=True, progress=False),
        "slim": lambda: slim_checkpoint(tmp_path),
    }
    for what, call in calls.items():
        with pytest.raises(UserError) as info:
            call()
        msg = str(info.value)
        assert str(ckpt) in msg and "not a readable sdsnn checkpoint" in msg, (what, msg)
        assert "re-run" in msg and "\n" not in msg and "weights_only" not in msg, (what, msg)
        assert ckpt.read_bytes() == bad, what  # left as it was
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"], what  # nothing written


def test_a_missing_checkpoint_keeps_its_own_errors(tmp_path):
    from sdsnn.errors import UserError
    from sdsnn.train import slim_checkpoint

    with pytest.raises(UserError, match="no checkpoint found"):
        restore(tmp_path)
    with pytest.raises(FileNotFoundError):
        slim_checkpoint(tmp_path)


def test_progress_into_a_log_file_is_one_line_per_epoch(capsys):
    """stderr that is not a terminal (a log file, a pipe) gets plain lines, not a bar redrawn with
    carriage returns into one ever longer line."""
    res = train(tiny_cfg(**{"train.epochs": 2}), None, progress=True)
    assert res.status == "completed"
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ": epoch " in ln]
    assert [ln.split(": epoch ")[1].split()[0] for ln in lines] == ["1/2", "2/2"], err
    assert all(" val " in ln and " loss " in ln for ln in lines)


def test_comparison_table_deltas():
    """Ratios for counts, points for rates; a count that is zero on both sides (MACs of event data,
    where every layer reads spikes) has no ratio and shows '-', not '+0.0'."""
    from sdsnn.compare import Comparison
    from sdsnn.train import TrainResult

    run = TrainResult("completed", {"val_acc": 0.85, "macs": 0.0, "sops": 90.0, "energy_pj": 81.0})
    dense = TrainResult("completed", {"val_acc": 0.80, "macs": 0.0, "sops": 100.0, "energy_pj": 90.0})
    rows = {r[0]: r[1:] for r in Comparison(run, dense).rows()}
    assert rows["validation accuracy"][2] == "+5.00 pt"
    assert rows["SOPs / sample"][2] == "x0.900" and rows["energy / sample (pJ)"][2] == "x0.900"
    assert rows["MACs / sample"] == ("0", "0", "-")
    assert rows["test accuracy"] == ("-", "-", "-")  # neither has it

"""Plugins: a backbone and a dataset registered outside the package (examples/plugin_example.py)
work with every command, in Ray's trial workers too, and a broken plugin fails in one line.

Each command runs in its own process, as a user would run it: plugins register into the
process-wide registries, and ``--plugin`` sets ``SDSNN_PLUGINS`` for the processes it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "plugin_example.py"
CLI = [sys.executable, "-m", "sdsnn_search.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SDSNN_PLUGINS"}
    env.update(extra)
    return env


def _cli(args, cwd: Path, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)


def test_plugin_backbone_and_dataset_train_and_load(tmp_path):
    r = _cli(["--plugin", str(EXAMPLE), "data", "check", "breast_cancer"], tmp_path)
    assert r.returncode == 0 and "built-in" in r.stdout and "455 / 114" in r.stdout, r.stdout + r.stderr
    r = _cli(["--plugin", str(EXAMPLE), "train", "--dataset", "breast_cancer", "--epochs", "2", "--no-baseline",
              "--set", "model.name=wide_mlp", "--set", "model.depth=2", "--set", "model.width=8",
              "--set", "plasticity.develop_every=4", "--out", "run"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    cfg = json.loads((tmp_path / "run" / "sdsnn" / "config.json").read_text())
    assert cfg["model"]["name"] == "wide_mlp" and cfg["data"]["dataset"] == "breast_cancer"
    # library use: SDSNN_PLUGINS names the plugin; restore() rebuilds the plugin's network
    code = ("from sdsnn import restore\n"
            "r = restore('run/sdsnn')\n"
            "print(r.model.widths, r.model.input_shape)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(SDSNN_PLUGINS=str(EXAMPLE)),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "[16, 8] [1, 5, 6]" in p.stdout.replace("(", "[").replace(")", "]"), p.stdout + p.stderr
    # without the plugin the backbone is unknown, and the error says which name
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "'wide_mlp' is not a known backbone" in p.stderr


def test_broken_plugins_fail_in_one_line(tmp_path):
    (tmp_path / "bad.py").write_text("raise RuntimeError('half-written plugin')\n")
    (tmp_path / "needs.py").write_text("import no_such_dependency_q\n")
    for plugin, expect in (("no_such_module_xyz", "No module named 'no_such_module_xyz'; give a module on sys.path"),
                           (str(tmp_path / "bad.py"), "RuntimeError: half-written plugin"),
                           (str(tmp_path / "needs.py"), "needs a package that is not installed"),
                           (str(tmp_path / "missing.py"), "no such file"),
                           ("a,b.py", "a comma separates plugins")):
        r = _cli(["--plugin", plugin, "data", "check"], tmp_path)
        assert r.returncode == 2, (plugin, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: plugin") and expect in err, err
    # named in the environment instead: the same
    r = _cli(["data", "check", "digits"], tmp_path, env=_env(SDSNN_PLUGINS="no_such_module_xyz"))
    assert r.returncode == 2 and "SDSNN_PLUGINS" in r.stderr


def _dataset_plugin(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    f = folder / "plug.py"
    f.write_text(
        "import numpy as np\n"
        "from sdsnn.data import register_dataset\n"
        "from sdsnn.data.images import ImageDataset\n"
        f"@register_dataset({name!r})\n"
        "class D(ImageDataset):\n"
        "    num_classes = 2\n    input_shape = (1, 2, 2)\n    needs_files = False\n"
        "    def read(self, folder, split):\n"
        "        return np.zeros((4, 1, 2, 2), np.uint8), np.array([0, 1, 0, 1])\n")
    return f


def test_plugins_named_alike_or_twice_and_replacing_a_builtin(tmp_path):
    _dataset_plugin(tmp_path / "a", "ds_a")
    _dataset_plugin(tmp_path / "b", "ds_b")
    # two files with the same name are two plugins
    r = _cli(["--plugin", "a/plug.py", "--plugin", "b/plug.py", "data", "check"], tmp_path)
    assert r.returncode == 0 and "ds_a" in r.stdout and "ds_b" in r.stdout, r.stdout + r.stderr
    # one file named as a module and by its path is imported once
    r = _cli(["--plugin", "plug", "--plugin", "a/plug.py", "data", "check", "ds_a"], tmp_path,
             env=_env(PYTHONPATH=str(tmp_path / "a")))
    assert r.returncode == 0 and "ds_a" in r.stdout, r.stdout + r.stderr
    # a plugin that replaces a built-in backbone does so for every lookup, not only the first
    (tmp_path / "over.py").write_text(
        "from sdsnn.models import BlockSpec, output_block, register_model\n"
        "@register_model('mlp', replace=True)\n"
        "def mlp7(cfg, shape, n):\n"
        "    return [BlockSpec('fc1', 'fc', 7, 'lif', 1.0, False, True), output_block(cfg, n)]\n")
    code = ("from sdsnn import build_model\nfrom sdsnn.config import ModelConfig\n"
            "print(build_model(ModelConfig(name='mlp', width=32), (1, 8, 8), 10).widths)\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(SDSNN_PLUGINS="over.py"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "[7]", p.stdout + p.stderr


def test_search_with_a_plugin_runs_in_rays_workers(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(
        "name: bc\ndataset: breast_cancer\n"
        "experiment:\n"
        "  data: {time_steps: 2, batch_size: 32}\n"
        "  model: {name: wide_mlp, depth: 1, width: 8, readout: potential}\n"
        "  plasticity: {develop_every: 4, spine_window: 1}\n"
        "params:\n"
        "  model.name: {type: categorical, choices: [wide_mlp]}\n"
        "  train.lr: {type: loguniform, low: 3.0e-3, high: 3.0e-2}\n"
        "search: {sampler: random, num_samples: 2, max_concurrent: 2, seed: 0, epochs: 2}\n")
    # without the plugin: one line, exit 2, nothing created
    r = _cli(["run", "--space", str(space), "--results-dir", "res"], tmp_path)
    assert r.returncode == 2 and "unknown dataset 'breast_cancer'" in r.stderr and not (tmp_path / "res").exists()
    # named by a path relative to the driver's directory: the workers, elsewhere, still find it
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / "plugin_example.py").write_text(EXAMPLE.read_text())
    proc = subprocess.Popen([*CLI, "run", "--space", str(space), "--results-dir", "res", "--name", "bc"],
                            cwd=tmp_path, env=_env(SDSNN_PLUGINS="ex/plugin_example.py"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    df = pd.read_csv(tmp_path / "res" / "bc" / "trials.csv")
    assert len(df) == 3 and (df["status"] == "completed").all(), df
    # every trial (the baseline too) built the plugin's backbone, in Ray's worker processes
    assert proc.pid not in set(df["pid"])
    for run_dir in (tmp_path / "res" / "bc" / "trials").iterdir():
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["model"]["name"] == "wide_mlp" and cfg["data"]["dataset"] == "breast_cancer"
    # the study remembers its plugins: resuming needs no --plugin (it used to fail: unknown dataset)
    r = _cli(["resume", str(tmp_path / "res" / "bc")], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "the study has finished, nothing to resume" in r.stdout  # and no Ray started for nothing
    assert len(pd.read_csv(tmp_path / "res" / "bc" / "trials.csv")) == 3
    # ... unless its plugin file is gone: one line, exit 2
    (tmp_path / "ex" / "plugin_example.py").unlink()
    r = _cli(["resume", str(tmp_path / "res" / "bc")], tmp_path)
    assert r.returncode == 2 and "plugin_example.py, which is gone" in r.stderr and len(r.stderr.splitlines()) == 1
    # ... named again at its new place: resumes, and the study records the new place
    (tmp_path / "moved").mkdir()
    (tmp_path / "moved" / "plugin_example.py").write_text(EXAMPLE.read_text())
    r = _cli(["--plugin", "moved/plugin_example.py", "resume", str(tmp_path / "res" / "bc")], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    info = json.loads((tmp_path / "res" / "bc" / "study.json").read_text())
    assert info["plugins"] == str((tmp_path / "moved" / "plugin_example.py").resolve())
    # ... moved again and renamed: the one recorded file that is gone, the one given file that is new
    (tmp_path / "moved" / "plugin_example.py").rename(tmp_path / "moved" / "renamed.py")
    r = _cli(["--plugin", "moved/renamed.py", "resume", str(tmp_path / "res" / "bc")], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    info = json.loads((tmp_path / "res" / "bc" / "study.json").read_text())
    assert info["plugins"] == str((tmp_path / "moved" / "renamed.py").resolve())
    # export reads the study's plugins as resume does: no --plugin needed for its backbone and dataset
    r = _cli(["export", str(tmp_path / "res" / "bc"), "--pick", "knee", "--out", "exp", "--no-register"], tmp_path)
    assert r.returncode == 0 and (tmp_path / "exp" / "knee" / "model.json").is_file(), r.stdout[-2000:] + r.stderr[-2000:]
    # ... and its card's loading snippet names them: run as written, in a fresh process, it loads
    card = (tmp_path / "exp" / "knee" / "MODEL_CARD.md").read_text()
    snippet = card.split("```python\n")[-1].split("```")[0].replace("rates = model.predict(x)", "print(model.widths)  #")
    assert "add_plugins" in snippet
    p = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path / "exp", env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip().startswith("["), p.stdout + p.stderr
    # without the plugin: one line naming the backbone and the plugin the model was saved with
    code = "import sdsnn\ntry:\n    sdsnn.load_model('knee')\nexcept sdsnn.UserError as e:\n    print(e)\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "exp",
                       env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 1, p.stdout + p.stderr
    assert "backbone 'wide_mlp' is not registered" in p.stdout and "renamed.py" in p.stdout, p.stdout


def test_plugins_reach_workers_of_a_ray_the_caller_started(tmp_path):
    """Python API: Ray initialised by the caller before the plugin is named, so its workers never
    see SDSNN_PLUGINS in their environment; the trials load it from their bound arguments."""
    (tmp_path / "plugin_example.py").write_text(EXAMPLE.read_text())
    code = f"""
import os, ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from sdsnn.plugins import add_plugins
add_plugins(["plugin_example.py"])
from sdsnn_search.runner import run_study
from sdsnn_search.space import parse_space
spec = parse_space({{
    "name": "bc", "dataset": "breast_cancer",
    "experiment": {{"data": {{"time_steps": 2, "batch_size": 32}},
                    "model": {{"name": "wide_mlp", "depth": 1, "width": 8, "readout": "potential"}},
                    "plasticity": {{"develop_every": 4, "spine_window": 1}}}},
    "params": {{"train.lr": {{"type": "loguniform", "low": 3.0e-3, "high": 3.0e-2}}}},
    "search": {{"sampler": "random", "num_samples": 1, "max_concurrent": 2, "seed": 0, "epochs": 1}}}}, "<test>")
out = run_study(spec, results_dir="res", name="bc", progress=False)
print(sorted(out.table["status"]))
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "['completed', 'completed']", p.stdout


def test_plugin_bugs_fail_in_one_line_naming_the_backbone_or_dataset():
    """Found by a stranger extending the tool: these plugin bugs used to train a wrong network or
    wrong data silently (exit 0), or end in a traceback deep in training."""
    import numpy as np
    import pytest

    from sdsnn import build_model
    from sdsnn.config import ModelConfig
    from sdsnn.data.images import Digits, _cached_read
    from sdsnn.data.registry import DATASETS, register_dataset
    from sdsnn.errors import ConfigError
    from sdsnn.models import MODELS, BlockSpec, output_block, register_model

    def fc(name, out, **kw):
        return BlockSpec(name, kw.pop("kind", "fc"), out, "lif", 1.0, False, True, **kw)

    builders = {
        "t_typo": (lambda cfg, s, n: [fc("fc1", cfg.widht), output_block(cfg, n)],
                   r"model 't_typo': its builder .* raised AttributeError: .*widht.* \(.*test_plugins.py:\d+\)"),
        "t_noout": (lambda cfg, s, n: [fc("fc1", 64)], r"the last block \('fc1'\) has 64 outputs for 10 classes"),
        "t_classes": (lambda cfg, s, n: [fc("fc1", 8), output_block(cfg, n + 3)], r"has 13 outputs for 10 classes"),
        "t_kind": (lambda cfg, s, n: [fc("fc1", 8, kind="dense"), output_block(cfg, n)], r"block 0 \('fc1'\): kind 'dense'"),
        "t_names": (lambda cfg, s, n: [fc("fc1", 8), fc("fc1", 8), output_block(cfg, n)], r"block 1 \('fc1'\): the name is used twice"),
        "t_pools": (lambda cfg, s, n: [BlockSpec(f"conv{i}", "conv", 4, "lif", 1.0, False, True, pool=True) for i in range(5)]
                    + [output_block(cfg, n)], r"block 3 \('conv3'\): a 2x2 max-pool on a 1x1 map"),
        "t_none": (lambda cfg, s, n: None, r"must return a non-empty list of BlockSpec \(got NoneType\)"),
        "t_dpools": (lambda cfg, s, n: [BlockSpec(f"conv{i}", "conv", 4, "lif", 1.0, False, True, pool=True)
                                        for i in range(cfg.depth)] + [output_block(cfg, n)], None),
    }
    try:
        for name, (fn, pattern) in builders.items():
            register_model(name)(fn)
            if pattern is not None:
                with pytest.raises(ConfigError, match=pattern):
                    build_model(ModelConfig(name=name), (1, 8, 8), 10)
        # a search space that can pick a broken backbone fails validation, before any trial runs
        from sdsnn_search.space import parse_space

        with pytest.raises(ConfigError, match=r"field 'params.model.name.choices': backbone 't_pools' cannot be built "
                                              r"for digits input \(1, 8, 8\): .*a 2x2 max-pool on a 1x1 map"):
            parse_space({"dataset": "digits", "params": {"model.name": {"type": "categorical", "choices": ["mlp", "t_pools"]}}})
        # ... also when only a searched setting at its bound breaks it (depth 2 builds, depth 5 pools 8x8 to nothing)
        build_model(ModelConfig(name="t_dpools", depth=2), (1, 8, 8), 10)
        with pytest.raises(ConfigError, match=r"field 'params.model.depth': backbone 't_dpools' with model.depth=5 cannot "
                                              r"be built for digits input \(1, 8, 8\): .*block 3 \('conv3'\): a 2x2 max-pool"):
            parse_space({"dataset": "digits", "experiment": {"model": {"name": "t_dpools", "depth": 2}},
                         "params": {"model.depth": {"type": "int", "low": 2, "high": 5}}})
        # a taken name is refused unless replaced on purpose; the same function again is fine
        with pytest.raises(ValueError, match=r"backbone 'mlp' is already registered .*replace=True"):
            register_model("mlp")(builders["t_noout"][0])
        register_model("t_typo")(builders["t_typo"][0])
    finally:
        for name in builders:
            MODELS.pop(name, None)

    cases = {
        "t_float": (lambda x, y: (x.astype(np.float32) / 16, y), r"read\('train'\) returned float32 images .*set max_value"),
        "t_int16": (lambda x, y: (x.astype(np.int16) * 300, y), r"returned int16 images \(values 0..4800\)"),
        "t_shape": (lambda x, y: (x[:, :, :4], y), r"returned images of shape \(\d+, 1, 4, 8\); input_shape \(1, 8, 8\)"),
        "t_labels": (lambda x, y: (x, y + 1), r"returned labels 1..10; with num_classes 10 they must lie in 0..9"),
        "t_flabels": (lambda x, y: (x, y.astype(np.float64)), r"returned float64 labels"),
        "t_count": (lambda x, y: (x, y[:-1]), r"labels of shape \(\d+,\) for \d+ images"),
        "t_raise": (lambda x, y: {}["nope"], r"dataset 't_raise': its read\('train'\) raised KeyError: 'nope' \(.*test_plugins.py:\d+\)"),
    }
    try:
        for name, (mangle, pattern) in cases.items():
            cls = type(name, (Digits,), {"read": lambda self, folder, split, m=mangle: m(*Digits.read(self, folder, split))})
            register_dataset(name)(cls)
            with pytest.raises(ConfigError, match=pattern):
                _cached_read(cls, "", "train")
        # lossless integer images (digits' 0..16 as int64) are accepted as they are
        ok = type("t_int64", (Digits,), {"read": lambda self, f, s: (lambda x, y: (x.astype(np.int64), y))(*Digits.read(self, f, s))})
        x, _ = _cached_read(ok, "", "train")
        assert x.dtype == np.uint8 and x.max() == 16
    finally:
        for name in cases:
            DATASETS.pop(name, None)


def test_a_builder_bug_fails_train_in_one_line(tmp_path):
    (tmp_path / "typo.py").write_text(
        "from sdsnn.models import BlockSpec, output_block, register_model\n"
        "@register_model('typo_mlp')\n"
        "def typo(cfg, shape, n):\n"
        "    return [BlockSpec('fc1', 'fc', cfg.widht, 'lif', 1.0, False, True), output_block(cfg, n)]\n")
    r = _cli(["--plugin", "typo.py", "train", "--dataset", "digits", "--set", "model.name=typo_mlp", "--epochs", "1",
              "--out", "run"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "typo.py:4)" in r.stderr and "widht" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_search_whose_trials_all_fail_exits_1(tmp_path):
    """A bug that only shows in the trials (here a dataset plugin whose read() raises) fails every
    trial; the command says so and exits 1 instead of 0, and each trial's reason names the plugin."""
    (tmp_path / "broken_ds.py").write_text(
        "from sdsnn.data.images import Digits\n"
        "from sdsnn.data.registry import register_dataset\n"
        "@register_dataset('broken_digits')\n"
        "class Broken(Digits):\n"
        "    def read(self, folder, split):\n"
        "        return {}['no_such_key']\n")
    space = tmp_path / "space.yaml"
    space.write_text("dataset: broken_digits\nexperiment: {model: {name: mlp, depth: 1, width: 8}}\n"
                     "params:\n  train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-2}\n"
                     "search: {sampler: random, num_samples: 1, max_concurrent: 2, seed: 0, epochs: 1}\n")
    r = _cli(["--plugin", "broken_ds.py", "run", "--space", str(space), "--results-dir", "res", "--name", "b"], tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "no search trial of" in r.stderr and "--retry-failed" in r.stderr, r.stderr[-2000:]
    assert "dataset 'broken_digits': its read('train') raised KeyError" in " ".join((r.stdout + r.stderr).split())  # rich wraps
    df = pd.read_csv(tmp_path / "res" / "b" / "trials.csv")
    assert (df["status"] == "failed").all() and len(df) == 2, df

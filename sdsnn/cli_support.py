"""Small helpers behind ``sdsnn-search train`` (kept out of the CLI so it holds no logic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional

import yaml
from pydantic import ValidationError

from .config import ExperimentConfig, apply_overrides, format_validation_error, load_config, load_yaml_text
from .errors import ConfigError

__all__ = ["load_train_config", "resolve_train_run", "parse_sets", "default_out_dir"]


def parse_sets(sets: Iterable[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a.b": 3, "c": "x"}`` (values parsed as YAML scalars)."""
    out = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. --set plasticity.spine_window=2")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = load_yaml_text(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              f"quote it or fix it, e.g. --set plasticity.spine_window=2") from None
    return out


def _train_overrides(dataset, epochs, data_root, sets) -> dict:
    overrides = parse_sets(sets)
    if dataset is not None:
        overrides["data.dataset"] = dataset
    if epochs is not None:
        overrides["train.epochs"] = epochs
    if data_root is not None:
        overrides["data.data_root"] = data_root
    return overrides


def _validate(raw: dict, where: str) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, where)) from None


def load_train_config(
    path: Optional[str],
    *,
    dataset: Optional[str] = None,
    epochs: Optional[int] = None,
    data_root: Optional[str] = None,
    sets: Iterable[str] = (),
) -> ExperimentConfig:
    overrides = _train_overrides(dataset, epochs, data_root, sets)
    if path is not None:
        return load_config(path, overrides)
    return _validate(apply_overrides({}, overrides), "command-line options")


def resolve_train_run(
    path: Optional[str],
    *,
    out_dir: Optional[str] = None,
    resume: bool = False,
    dataset: Optional[str] = None,
    epochs: Optional[int] = None,
    data_root: Optional[str] = None,
    sets: Iterable[str] = (),
) -> tuple[ExperimentConfig, Path]:
    """The config and run folder of ``sdsnn-search train``.

    With ``resume`` and no config file, the run's own ``config.json`` is the base that the
    command-line options change (so ``train --resume --out DIR`` continues DIR as it was set up;
    :func:`sdsnn.compare.check_resumable` then refuses changes other than its length and where it runs).
    """
    cfg = load_train_config(path, dataset=dataset, epochs=epochs, data_root=data_root, sets=sets)
    out = Path(out_dir) if out_dir else default_out_dir(cfg)
    stored = out / "sdsnn" / "config.json"
    if resume and path is None and stored.is_file():
        try:
            base = json.loads(stored.read_text())
        except ValueError:  # sdsnn.compare.check_resumable says so in one line
            return cfg, out
        cfg = _validate(apply_overrides(base, _train_overrides(dataset, epochs, data_root, sets)), str(stored))
    return cfg, out


def default_out_dir(cfg: ExperimentConfig) -> Path:
    return Path("results") / f"train-{cfg.name}-{cfg.data.dataset}"

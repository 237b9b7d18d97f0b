"""Small helpers behind ``sdsnn-search train`` (kept out of the CLI so it holds no logic)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import yaml
from pydantic import ValidationError

from .config import ExperimentConfig, apply_overrides, format_validation_error, load_config
from .errors import ConfigError

__all__ = ["load_train_config", "parse_sets", "default_out_dir"]


def parse_sets(sets: Iterable[str]) -> dict:
    """``["a.b=3", "c=x"]`` -> ``{"a.b": 3, "c": "x"}`` (values parsed as YAML scalars)."""
    out = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. --set plasticity.spine_window=2")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML ({getattr(e, 'problem', None) or e}); "
                              f"quote it or fix it, e.g. --set plasticity.spine_window=2") from None
    return out


def load_train_config(
    path: Optional[str],
    *,
    dataset: Optional[str] = None,
    epochs: Optional[int] = None,
    data_root: Optional[str] = None,
    sets: Iterable[str] = (),
) -> ExperimentConfig:
    overrides = parse_sets(sets)
    if dataset is not None:
        overrides["data.dataset"] = dataset
    if epochs is not None:
        overrides["train.epochs"] = epochs
    if data_root is not None:
        overrides["data.data_root"] = data_root
    if path is not None:
        return load_config(path, overrides)
    try:
        return ExperimentConfig.model_validate(apply_overrides({}, overrides))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "command-line options")) from None


def default_out_dir(cfg: ExperimentConfig) -> Path:
    return Path("results") / f"train-{cfg.name}-{cfg.data.dataset}"

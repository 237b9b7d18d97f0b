"""The tiny experiment config the training and export tests share (digits, a small MLP)."""

from __future__ import annotations

from sdsnn.config import ExperimentConfig


def tiny_config(name: str = "tiny", seed: int = 3, **over) -> ExperimentConfig:
    """A seconds-long SD-SNN run on 320 digits; ``over`` sets fields by ``section.key``."""
    d = {
        "name": name,
        "seed": seed,
        "data": {"dataset": "digits", "time_steps": 2, "batch_size": 32, "train_limit": 320},
        "model": {"name": "mlp", "depth": 2, "width": 24},
        "plasticity": {"develop_every": 2, "spine_window": 1, "rho_init_fc": 10.0},
        "train": {"epochs": 3, "lr": 3e-3, "threads": 1},
        "energy": {"batches": 1},
    }
    for k, v in over.items():
        sect, key = k.split(".")
        d.setdefault(sect, {})[key] = v
    return ExperimentConfig.model_validate(d)

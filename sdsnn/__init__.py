"""SD-SNN: adaptive structural development for spiking networks, as a plain PyTorch library.

Public names are imported lazily (PEP 562), so that ``import sdsnn.errors`` or the data checks
do not pay for importing torch and spikingjelly: a missing dataset fails in well under a second.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {
    # backbones, energy, compaction (issue 3)
    "MODELS": "models",
    "SpikingNet": "models",
    "build_model": "models",
    "register_model": "models",
    "EnergyReport": "energy",
    "count_operations": "energy",
    "compact": "compact",
    "count_parameters": "compact",
    "load_model": "compact",
    "save_model": "compact",
    # config and training (issue 3)
    "ExperimentConfig": "config",
    "load_config": "config",
    "train": "train",
    "restore": "train",
    "TrainResult": "train",
    "StructuralDevelopment": "plasticity",
    "build_loaders": "data",
    "UserError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'sdsnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)

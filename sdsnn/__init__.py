"""SD-SNN: adaptive structural development for spiking networks, as a plain PyTorch library.

Each part adds its public names to ``__all__`` in its own section below.
"""

__all__: list[str] = []

# ---- backbones, energy, compaction (issue 3) ----
from .models import MODELS, SpikingNet, build_model, register_model  # noqa: E402
from .energy import EnergyReport, count_operations  # noqa: E402
from .compact import compact, count_parameters, load_model, save_model  # noqa: E402

__all__ += ["MODELS", "SpikingNet", "build_model", "register_model", "EnergyReport", "count_operations"]
__all__ += ["compact", "count_parameters", "load_model", "save_model"]
# ---- end backbones, energy, compaction ----

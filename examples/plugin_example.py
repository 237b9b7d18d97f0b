"""An sdsnn plugin: one backbone and one dataset of your own, without editing the package.

Use it with any command, for example::

    sdsnn-search --plugin examples/plugin_example.py data check breast_cancer
    sdsnn-search --plugin examples/plugin_example.py train --dataset breast_cancer \\
        --set model.name=wide_mlp --epochs 4
    sdsnn-search --plugin examples/plugin_example.py run --space examples/breast_cancer.yaml

or name it in ``SDSNN_PLUGINS`` (a module name on ``PYTHONPATH``, or this file's path) for library
use: ``build_model``, ``build_loaders``, ``train`` and ``load_model`` load the plugins named there
before they look a name up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdsnn.config import ModelConfig
from sdsnn.data import register_dataset
from sdsnn.data.images import ImageDataset
from sdsnn.models import BlockSpec, output_block, register_model


@register_model("wide_mlp")
def wide_mlp(cfg: ModelConfig, input_shape: tuple[int, int, int], num_classes: int) -> list[BlockSpec]:
    """An MLP whose first hidden layer is twice ``model.width`` and the others ``model.width``.

    A builder returns one :class:`BlockSpec` per block: a weight layer ("fc" or "conv", 3x3),
    optional BatchNorm, spiking neurons ("lif" or "plif"), optional 2x2 max-pool (conv only);
    the network is a chain of them, ending with :func:`output_block`. Block names ("fc1", ...)
    name the layers in masks, metrics and exports; every config field (``model.*``) is the
    builder's to read. Development, energy accounting, compaction and export work unchanged.
    """
    bn = cfg.batch_norm
    widths = [2 * cfg.width] + [cfg.width] * (cfg.depth - 1)
    blocks = [
        BlockSpec(f"fc{i + 1}", "fc", w, cfg.neuron, cfg.v_threshold, batch_norm=bn, bias=not bn,
                  dropout=cfg.dropout if i > 0 else 0.0)
        for i, w in enumerate(widths)
    ]
    return blocks + [output_block(cfg, num_classes)]


@register_dataset("breast_cancer")
class BreastCancer(ImageDataset):
    """scikit-learn's Wisconsin breast-cancer table (569 samples, 30 features, 2 classes) as
    1 x 5 x 6 "images": each feature min-max scaled to 0..255 on the training split.

    A dataset returns uint8 arrays ``[N, C, H, W]`` and int64 labels per split ("train",
    "test"); the loaders scale by ``max_value`` and carve the validation set from "train".
    ``needs_files = False`` marks it built in (no data root needed); a dataset read from files
    sets ``folder`` and ``files`` instead and reads them in ``read(folder, split)``.
    """

    num_classes = 2
    input_shape = (1, 5, 6)
    needs_files = False
    max_value = 255.0
    description = "scikit-learn breast cancer (plugin example)"

    def read(self, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split

        d = load_breast_cancer()
        idx_tr, idx_te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target,
                                          random_state=0)
        lo, hi = d.data[idx_tr].min(0), d.data[idx_tr].max(0)
        x = np.clip((d.data - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
        x = np.round(x * 255).astype(np.uint8).reshape(-1, *self.input_shape)
        idx = np.sort(idx_tr if split == "train" else idx_te)
        return x[idx], d.target[idx].astype(np.int64)

"""Compaction and export: a physically smaller network with the masked network's outputs.

:func:`compact` removes every pruned neuron (``LayerMask.neuron`` False) of the hidden layers and
every weight that reads from it: conv output channels with their bias and BatchNorm entries, the
next conv's input channels, FC units, and the flattened columns between the last conv and the first
FC (channel ``c`` of a ``C x H x W`` map occupies the ``H*W`` consecutive columns starting at
``c*H*W``).  Masked synapse groups of the surviving neurons are copied as exact zeros.  The output
layer keeps all its neurons.  Why the outputs are the same: a pruned neuron has zero weights, zero
bias and zero BatchNorm affine parameters, so its input current is exactly zero, it never spikes,
and every term it contributes downstream is an exact zero.

How exact: the neurons, the pooling and a 1-channel first layer (:func:`sdsnn.native.conv1ch`)
compute each value in a fixed order, so dropping exact zeros changes nothing there.  oneDNN's
convolutions and MKL's matrix products, however, choose their kernels (and so the grouping of a
sum) by the widths and the number of rows, and a layer with fewer live inputs or outputs may round
a potential differently in the last bit (about 1e-7 relative).  Analog values (a ``readout:
potential`` output) may therefore differ slightly, and a spike flips where a potential lies that
close to its threshold: possible (it can be provoked by tuning a bias onto the threshold), rare on
real inputs: on the whole MNIST test set, the SD-SNN benchmark model and its compacted copy
differ in 0 of 13 million spikes and in no prediction (benchmarks/bench_compact_exactness.py).
Export (``sdsnn-search export``) checks the predictions on the whole test set and refuses to
write a model that predicts differently.

:func:`save_model` writes ``model.safetensors`` (weights) and ``model.json`` (architecture +
metadata) atomically; :func:`load_model` rebuilds the network from them without pickle.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .config import ModelConfig
from .errors import UserError
from .models import SpikingNet, build_model
from .structure import LayerMask, expand_group_mask

__all__ = ["compact", "compact_with_masks", "live_widths", "count_parameters", "save_model", "load_model", "FORMAT"]

FORMAT = "sdsnn-model"
#: 2: model.safetensors may hold the masks too (``MASK_KEY``); version 1 files (no masks) load as before
FORMAT_VERSION = 2
MASK_PREFIX, MASK_SUFFIX = "masks.", ".group"
MASK_KEY = MASK_PREFIX + "{}" + MASK_SUFFIX


def _keep_index(mask: Optional[LayerMask], n: int, device: torch.device) -> torch.Tensor:
    if mask is None:
        return torch.arange(n, device=device)
    idx = torch.nonzero(mask.neuron.to(device), as_tuple=False).flatten()
    if idx.numel() == 0:
        # every neuron pruned: keep one (dead: zero weights, bias and BN affine) so shapes stay valid
        idx = torch.zeros(1, dtype=torch.long, device=device)
    return idx


def live_widths(model: SpikingNet, masks: Optional[Mapping[str, LayerMask]]) -> list[int]:
    """Hidden-layer widths after compaction (at least 1 per layer)."""
    out = []
    for li in model.prunable_layers()[:-1]:
        m = None if masks is None else masks.get(li.name)
        n = li.num_neurons if m is None else int(m.neuron.sum())
        out.append(max(1, n))
    return out


def _rebuild(model: SpikingNet, widths: list[int]) -> SpikingNet:
    s = model.spec()
    return build_model(
        ModelConfig.model_validate(s["model"]),
        s["input_shape"],
        s["num_classes"],
        static_input=s["static_input"],
        widths=widths,
        spiking_input_first=s["spiking_input_first"],
    )


def compact(model: SpikingNet, masks: Optional[Mapping[str, LayerMask]]) -> SpikingNet:
    """A new, physically smaller :class:`SpikingNet` equal to ``model`` with ``masks`` imposed.

    ``model`` is not modified.  The result is on the model's device and in its train/eval mode.
    """
    return compact_with_masks(model, masks)[0]


@torch.no_grad()
def compact_with_masks(model: SpikingNet, masks: Optional[Mapping[str, LayerMask]]
                       ) -> tuple[SpikingNet, dict[str, LayerMask]]:
    """:func:`compact`, and the masks of the compacted model: the synapse groups of kept neurons
    that ``masks`` left masked (their weights are zero in the compacted model) and all its
    neurons alive.  ``count_operations(small, small_masks, ...)`` then counts what
    ``count_operations(model, masks, ...)`` counts."""
    masks = masks or {}
    layers = model.prunable_layers()
    device = layers[0].weight.device
    keeps = []
    for li in layers:
        if li.is_output:
            keeps.append(torch.arange(li.num_neurons, device=device))
        else:
            keeps.append(_keep_index(masks.get(li.name), li.num_neurons, device))
    new = _rebuild(model, [int(k.numel()) for k in keeps[:-1]]).to(device=device, dtype=layers[0].weight.dtype)
    new_layers = new.prunable_layers()
    prev_keep: Optional[torch.Tensor] = None
    prev_kind: Optional[str] = None
    new_masks: dict[str, LayerMask] = {}
    for i, (li, nl, keep) in enumerate(zip(layers, new_layers, keeps)):
        m = masks.get(li.name)
        w = li.weight.detach()
        alive = torch.ones(li.num_neurons, dtype=torch.bool, device=device)
        if m is not None:
            alive = m.neuron.to(device) if not li.is_output else alive
            w = w * expand_group_mask(m.group.to(device), w).to(w.dtype)
        w = w * alive.reshape((-1,) + (1,) * (w.dim() - 1)).to(w.dtype)
        # input columns that survive
        if prev_keep is None:
            cols = torch.arange(w.shape[1], device=device)
        elif li.kind == "fc" and prev_kind == "conv":
            prev_out = layers[i - 1].num_neurons
            hw = w.shape[1] // prev_out
            cols = (prev_keep.reshape(-1, 1) * hw + torch.arange(hw, device=device)).flatten()
        else:
            cols = prev_keep
        nl.module.weight.copy_(w.index_select(0, keep).index_select(1, cols))
        group = m.group.to(device) if m is not None else torch.ones(w.shape[:2], dtype=torch.bool, device=device)
        new_masks[nl.name] = LayerMask(group.index_select(0, keep).index_select(1, cols),  # [out, in] like w's
                                       torch.ones(int(keep.numel()), dtype=torch.bool, device=device))
        alive_k = alive.index_select(0, keep).to(w.dtype)
        if li.module.bias is not None:
            nl.module.bias.copy_(li.module.bias.detach().index_select(0, keep) * alive_k)
        if li.norm is not None:
            src, dst = li.norm, nl.norm
            if src.weight is not None:
                dst.weight.copy_(src.weight.detach().index_select(0, keep) * alive_k)
                dst.bias.copy_(src.bias.detach().index_select(0, keep) * alive_k)
            if src.running_mean is not None:
                dst.running_mean.copy_(src.running_mean.index_select(0, keep))
                dst.running_var.copy_(src.running_var.index_select(0, keep))
                dst.num_batches_tracked.copy_(src.num_batches_tracked)
        prev_keep, prev_kind = keep, li.kind
    # neuron parameters (PLIF's learnable time constant is one scalar per layer)
    for ob, nb in zip(model.blocks, new.blocks):
        nb.neuron.load_state_dict(ob.neuron.state_dict())
    new.train(model.training)
    return new, new_masks


def count_parameters(model: SpikingNet, masks: Optional[Mapping[str, LayerMask]] = None) -> dict[str, int]:
    """``{"compact": parameters of the compacted model, "dense": parameters of ``model``}``.

    All parameters count (weights, biases, BatchNorm affine, PLIF time constants).  The compacted
    model is built on the ``meta`` device: exact shapes, no memory, no copying.
    """
    dense = sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        small = _rebuild(model, live_widths(model, masks))
    return {"compact": int(sum(p.numel() for p in small.parameters())), "dense": int(dense)}


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_model(
    model: SpikingNet,
    path: str | Path,
    meta: Optional[dict[str, Any]] = None,
    *,
    masks: Optional[Mapping[str, LayerMask]] = None,
) -> Path:
    """Write ``path/model.safetensors`` and ``path/model.json``; with ``masks``, compact first and
    store the compacted model's masks too (:func:`compact_with_masks`: the synapse groups of kept
    neurons that stay masked; ``load_model(...).masks``), so that the saved model's operation
    counts and energy can be recomputed from the folder alone.

    ``meta`` (JSON-serialisable) is stored under ``"meta"`` in model.json.  Returns the folder.
    """
    from safetensors.torch import save_file

    kept_masks: dict[str, LayerMask] = {}
    if masks is not None:
        model, kept_masks = compact_with_masks(model, masks)
    d = Path(path)
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": model.spec(), "meta": meta or {}}
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except TypeError as e:
        raise UserError(f"save_model: meta is not JSON-serialisable ({e}); pass plain numbers, strings, lists, dicts") from None
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update({MASK_KEY.format(name): m.group.to("cpu").contiguous() for name, m in kept_masks.items()})
    _atomic_write(d / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    # model.json last: a folder with a model.json always has matching weights next to it
    _atomic_write(d / "model.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    return d


def load_model(path: str | Path, device: str | torch.device = "cpu") -> SpikingNet:
    """Rebuild a model written by :func:`save_model` (a folder, or its model.json) in eval mode.

    Uses only JSON and safetensors (no pickle).  The stored metadata is in ``model.meta``, the
    stored masks in ``model.masks`` (``{layer: LayerMask}``, or None when the folder has none: every
    weight live), ready for ``sdsnn.count_operations(model, model.masks, batches, energy_cfg)``.
    """
    from safetensors.torch import load_file

    p = Path(path)
    d = p.parent if p.is_file() else p
    jf, wf = d / "model.json", d / "model.safetensors"
    if not jf.is_file() or not wf.is_file():
        raise UserError(f"{d}: no saved model here (needs model.json and model.safetensors); give the folder written by save_model/export")
    try:
        doc = json.loads(jf.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
        arch = doc["architecture"]
        _check_backbone_known(jf, arch["model"]["name"], doc.get("meta") or {})
        model = build_model(
            ModelConfig.model_validate(arch["model"]),
            arch["input_shape"],
            arch["num_classes"],
            static_input=bool(arch["static_input"]),
            widths=arch["widths"],
            spiking_input_first=bool(arch["spiking_input_first"]),
        )
    except UserError:
        raise
    except Exception as e:  # malformed JSON, missing keys, invalid model config
        raise UserError(f"{jf}: not a valid sdsnn model description ({type(e).__name__}: {e}); re-export the model") from None
    try:
        state = load_file(str(wf))
        groups = {k[len(MASK_PREFIX):-len(MASK_SUFFIX)]: state.pop(k) for k in list(state)
                  if k.startswith(MASK_PREFIX) and k.endswith(MASK_SUFFIX)}
        model.load_state_dict(state, strict=True)
        masks = None
        if groups:
            masks = {}
            for li in model.prunable_layers():
                g = groups.pop(li.name)
                if g.dtype != torch.bool or tuple(g.shape) != tuple(li.weight.shape[:2]):
                    raise ValueError(f"mask of {li.name} is {g.dtype} {tuple(g.shape)}")
                masks[li.name] = LayerMask(g, torch.ones(li.num_neurons, dtype=torch.bool))
            if groups:
                raise ValueError(f"masks of unknown layers {sorted(groups)}")
    except Exception as e:
        raise UserError(f"{wf}: weights do not match model.json ({type(e).__name__}); re-export the model") from None
    model.meta = doc.get("meta", {})  # type: ignore[attr-defined]
    model.masks = None if masks is None else {k: LayerMask(m.group.to(device), m.neuron.to(device))  # type: ignore[attr-defined]
                                              for k, m in masks.items()}
    return model.to(device).eval()


def _check_backbone_known(jf: Path, name: Any, meta: Mapping[str, Any]) -> None:
    """One line when ``model.json`` names a backbone this process has not registered (a plugin's)."""
    from .models import MODELS
    from .plugins import load_plugins

    load_plugins()
    if not isinstance(name, str) or name in MODELS:
        return
    plugins = meta.get("plugins")
    raise UserError(
        f"{jf}: backbone '{name}' is not registered in this process; "
        + (f"it was saved with the plugins {plugins}: " if plugins else "")
        + "import the module that registers it (@sdsnn.register_model) before load_model, or name its file in "
          "SDSNN_PLUGINS")


class _CallableModule(types.ModuleType):
    """``sdsnn.compact`` names both this module and its main function (exported lazily by the
    package): once the module is imported, the package attribute is the module.  Calling the
    module calls :func:`compact`, so ``sdsnn.compact(model, masks)`` works either way."""

    def __call__(self, model: SpikingNet, masks: Optional[Mapping[str, LayerMask]]) -> SpikingNet:
        return compact(model, masks)


sys.modules[__name__].__class__ = _CallableModule

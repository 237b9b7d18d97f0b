"""How does the regrowth signal of pruned neurons compare with the live groups' signals?

A diagnostic of a finished SD-SNN run (``--run-dir``, default the MNIST benchmark's
``results/bench-mnist/sdsnn``; run ``benchmarks/bench_mnist.py`` first). From its checkpoint (model
and development state), it runs ``--batches`` training batches forward and backward with the
development hooks on, as the training loop does from step 2N + 1 on (no optimizer step), and
accumulates the regrowth signal ``g`` (sd-snn.md 7). Per developing layer it reports the median
``g`` of live and of masked groups, which fraction of the masked groups lies above the layer's
P-th percentile for a few P, and, for layers behind a BatchNorm, the same with the masked signal
multiplied by the live neurons' median BN scale (|gamma| / sqrt(running var + eps)). It also
reports the mean |weight| of the next layer's synapses that read from the layer's pruned neurons
against those that read from live ones (live target neurons only).

Why: behind a BatchNorm a pruned neuron's signal is computed with its BN as the identity (its
zeroed BN weight would block it), while live groups' gradients carry their BN scale. This
measures how much that scale matters next to the rest (docs/internals.md).

    .venv/bin/python benchmarks/bench_regrowth_signal.py --data-root ../shared/datasets

Writes results/benchmarks/regrowth_signal.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402

from sdsnn.config import ExperimentConfig, apply_overrides  # noqa: E402
from sdsnn.data import build_loaders  # noqa: E402
from sdsnn.plasticity.regeneration import group_signal  # noqa: E402
from sdsnn.train import _build, _loss  # noqa: E402

DEFAULT_RUN = ROOT / "results" / "bench-mnist" / "sdsnn"
PERCENTILES = (60, 65, 95, 99)


def above(g: torch.Tensor, masked: torch.Tensor) -> dict[str, float]:
    """Fraction of ``masked`` values above each percentile of ``g`` (all groups of the layer)."""
    flat = g.flatten().double()
    return {f"P{p}": float((masked > torch.quantile(flat, p / 100).item()).float().mean()) for p in PERCENTILES}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", type=Path, default=DEFAULT_RUN)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--data-root", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    state = torch.load(a.run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    if state.get("slim"):
        raise SystemExit(f"{a.run_dir}: a slim checkpoint (a completed search trial) keeps no development state; "
                         f"give the run folder of a 'sdsnn-search train' or benchmark run")
    over = {"data.data_root": a.data_root} if a.data_root else {}
    cfg = ExperimentConfig.model_validate(apply_overrides(state["config"], over))
    model, dev = _build(cfg, state["input_shape"], state["num_classes"], state["static_input"], torch.device("cpu"))
    if dev is None:
        raise SystemExit(f"{a.run_dir}: a dense run has no development state")
    model.load_state_dict(state["model"])
    dev.load_state_dict(state["development"])
    if dev.step <= 2 * dev.window:
        raise SystemExit(f"{a.run_dir}: development step {dev.step} is before regeneration starts (2N + 1)")
    dev._sync_probes()  # the BN-bypass hooks the training loop has from step 2N + 1 on
    layers = [L for L in dev._layers if L.develops]
    for L in layers:
        L.grad_acc.zero_()
    scale = float(cfg.data.time_steps) if cfg.model.readout == "rate" else 1.0
    model.train()
    for i, (x, y) in enumerate(build_loaders(cfg.data, cfg.seed).train):
        if i >= a.batches:
            break
        model.zero_grad(set_to_none=True)
        _loss(model(x), y, cfg.train.loss, scale).backward()
        dev.after_backward()
        model.reset()

    out = []
    for L in layers:
        g = group_signal(L.grad_acc)
        live, masked = g[L.group], g[~L.group]
        row = {"layer": L.li.name, "groups": g.numel(), "masked": masked.numel(),
               "pruned_neurons": int((~L.neuron).sum()), "behind_bn": L.li.norm is not None}
        if masked.numel():
            row.update(median_live=float(live.median()), median_masked=float(masked.median()),
                       live_over_masked=float(live.median() / masked.median()), above=above(g, masked))
            if L.li.norm is not None:
                bn = L.li.norm
                s = (bn.weight.detach().abs() / torch.sqrt(bn.running_var + bn.eps))[L.neuron].median()
                g2 = g.clone()
                g2[~L.group] = masked * s
                row.update(bn_scale_median_live=float(s), above_bn_scaled=above(g2, masked * s))
        # the synapses that read from this layer's pruned neurons (next layer, live groups)
        j = dev._layers.index(L) + 1
        src = dev._source_alive(j) if j < len(dev._layers) else None
        if src is not None:
            nxt = dev._layers[j]
            w = nxt.li.weight.detach().abs().flatten(2).mean(2) if nxt.li.weight.dim() > 2 else nxt.li.weight.detach().abs()
            w = w[nxt.neuron]
            row.update(outgoing_abs_mean_from_live=float(w[:, src].mean()),
                       outgoing_abs_mean_from_pruned=float(w[:, ~src].mean()))
        out.append(row)
        print(row, flush=True)
    payload = {"benchmark": "regrowth_signal", "run_dir": str(a.run_dir), "batches": a.batches,
               "development_step": dev.step, "layers": out,
               "command": "benchmarks/bench_regrowth_signal.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(write_result("regrowth_signal", payload))
    return payload


if __name__ == "__main__":
    main()

"""Benchmark (b): does compaction turn pruned neurons into real inference speed?

Builds a convnet for MNIST-shaped input (1x28x28, direct encoding), prunes a fraction of every
hidden layer's neurons at random (the pruned neurons' input groups masked too, as SD-SNN does),
compacts it, and measures on the same batches:

- inference time of the masked dense network and of the compacted one (median of several
  interleaved repeats, fixed torch threads, eval mode, no grad);
- their operation counts: ``exec_macs``, the multiply-accumulates the weight layers execute on this
  hardware (weights x output positions x rows; the static first layer runs once for all T), and
  for reference the SD-SNN energy figures of :func:`sdsnn.count_operations`.

Target (issue 3): time ratio (compact / dense) within 1.25x of the exec-MAC ratio.
Writes results/benchmarks/compaction.json and prints one line.  No training needed: timing and
operation counts do not depend on the weight values.

    .venv/bin/python benchmarks/bench_compaction.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdsnn import build_model, compact, count_operations  # noqa: E402
from sdsnn.config import EnergyConfig, ModelConfig  # noqa: E402
from sdsnn.structure import LayerMask, apply_masks  # noqa: E402


def exec_counts(model, x) -> tuple[float, float]:
    """Per sample: MACs the weight layers of ``model`` execute on ``x`` (as computed on a CPU: the
    static first layer once, every other layer for all T steps), and neuron updates (neurons x T),
    the element-wise work (BN, LIF, pool) that shrinks only linearly with the widths."""
    macs = [0.0]
    hooks = []
    for li in model.prunable_layers():
        def hook(mod, inp, out, li=li):
            rows = out.shape[0]
            positions = out[0, 0].numel() if li.kind == "conv" else 1
            macs[0] += li.weight.numel() * positions * rows

        hooks.append(li.module.register_forward_hook(hook))
    neurons = [0.0]
    for b in model.blocks:
        hooks.append(b.neuron.register_forward_hook(lambda m, i, o: neurons.__setitem__(0, neurons[0] + o.numel())))
    with torch.no_grad():
        model(x)
    model.reset()
    for h in hooks:
        h.remove()
    return macs[0] / x.shape[1], neurons[0] / x.shape[1]


def random_neuron_masks(model, frac: float, gen: torch.Generator) -> dict[str, LayerMask]:
    masks = {}
    for li in model.prunable_layers():
        out, inn = li.weight.shape[:2]
        neuron = torch.ones(out, dtype=torch.bool)
        if not li.is_output:
            k = int(round(frac * out))
            neuron[torch.randperm(out, generator=gen)[:k]] = False
        group = neuron.reshape(-1, 1).expand(out, inn).clone()
        masks[li.name] = LayerMask(group, neuron)
    return masks


def time_model(model, batches) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model(x)
            model.reset()
    return time.perf_counter() - t0


def run_case(width: int, prune: float, a: argparse.Namespace) -> dict:
    """Dense (masked) vs compacted convnet of base ``width`` with ``prune`` of hidden neurons removed."""
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = ModelConfig(name="convnet", depth=a.depth, width=width, fc_width=a.fc_width, pool_every=2)
    dense = build_model(cfg, (1, 28, 28), 10, static_input=True).eval()
    masks = random_neuron_masks(dense, prune, gen)
    apply_masks(dense.prunable_layers(), masks)
    small = compact(dense, masks).eval()
    batches = [torch.rand(1, a.batch, 1, 28, 28).expand(a.time_steps, -1, -1, -1, -1) for _ in range(a.batches)]

    # sanity: same outputs (the test suite checks every layer's spikes exactly)
    with torch.no_grad():
        same = True
        for x in batches:
            same &= torch.equal(dense(x), small(x))
            dense.reset()
            small.reset()

    # warm-up, then interleaved repeats so that background load hits both alike
    time_model(dense, batches[:1])
    time_model(small, batches[:1])
    t_dense, t_small = [], []
    for _ in range(a.repeats):
        t_dense.append(time_model(dense, batches))
        t_small.append(time_model(small, batches))
    td, ts = statistics.median(t_dense), statistics.median(t_small)

    macs_d, neur_d = exec_counts(dense, batches[0])
    macs_s, neur_s = exec_counts(small, batches[0])
    e = EnergyConfig(batches=a.batches)
    rep_d = count_operations(dense, masks, batches, e)
    rep_s = count_operations(small, None, batches, e)
    time_ratio = ts / td
    op_ratio = macs_s / macs_d
    return {
        "model": cfg.model_dump(mode="json"),
        "prune_fraction": prune,
        "dense_widths": dense.widths,
        "compact_widths": small.widths,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "compact_params": sum(p.numel() for p in small.parameters()),
        "outputs_equal": bool(same),
        "dense_time_s": td,
        "compact_time_s": ts,
        "dense_times_s": t_dense,
        "compact_times_s": t_small,
        "dense_exec_macs_per_sample": macs_d,
        "compact_exec_macs_per_sample": macs_s,
        "dense_neuron_updates_per_sample": neur_d,
        "compact_neuron_updates_per_sample": neur_s,
        "time_ratio": time_ratio,
        "op_ratio": op_ratio,
        "neuron_update_ratio": neur_s / neur_d,
        "time_over_op_ratio": time_ratio / op_ratio,
        "target_met": time_ratio <= 1.25 * op_ratio,
        "energy_dense_arch_pj": rep_d.dense_energy_pj,
        "energy_masked_pj": rep_d.energy_pj,
        "energy_compact_pj": rep_s.energy_pj,
        "sops_masked": rep_d.sops,
        "sops_compact": rep_s.sops,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--widths", default="32,64,128", help="base conv widths to try (comma-separated)")
    ap.add_argument("--fc-width", type=int, default=256)
    ap.add_argument("--prunes", default="0.5,0.7", help="fractions of hidden neurons pruned per layer")
    ap.add_argument("--time-steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "compaction.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    cases = []
    for w in [int(v) for v in a.widths.split(",")]:
        for p in [float(v) for v in a.prunes.split(",")]:
            r = run_case(w, p, a)
            cases.append(r)
            print(
                f"compaction width {w} prune {p:.0%}: widths {r['dense_widths']} -> {r['compact_widths']}; "
                f"time {r['dense_time_s'] * 1e3:.0f} -> {r['compact_time_s'] * 1e3:.0f} ms (ratio {r['time_ratio']:.3f}); "
                f"MAC ratio {r['op_ratio']:.3f}; neuron-update ratio {r['neuron_update_ratio']:.3f}; "
                f"time/op {r['time_over_op_ratio']:.2f} ({'met' if r['target_met'] else 'NOT met'}); "
                f"outputs equal {r['outputs_equal']}",
                flush=True,
            )
    result = {
        "benchmark": "compaction",
        "command": "benchmarks/bench_compaction.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": "time_ratio <= 1.25 * op_ratio (op = executed MACs of the weight layers)",
        "input_shape": [1, 28, 28],
        "time_steps": a.time_steps,
        "batch": a.batch,
        "batches": a.batches,
        "repeats": a.repeats,
        "threads": a.threads,
        "cases": cases,
        "all_met": all(c["target_met"] for c in cases),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"compaction: target met in {sum(c['target_met'] for c in cases)}/{len(cases)} cases -> {out}")
    return result


if __name__ == "__main__":
    main()

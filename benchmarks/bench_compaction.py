"""Benchmark (b): does compaction turn pruned neurons into real inference speed?

Two kinds of case, each timed as the masked full-size network against its compacted copy on the
same batches (eval mode, no grad, fixed torch threads, interleaved repeats):

- trained: the SD-SNN models of finished runs (``--run-dir``, default the MNIST benchmark's
  ``results/bench-mnist/sdsnn`` when it exists; run ``benchmarks/bench_mnist.py`` first), with
  the pruning SD-SNN actually produced;
- synthetic: a convnet for MNIST-shaped input (1x28x28, direct encoding) with a fixed fraction of
  every hidden layer's neurons pruned at random (their input groups masked too, as SD-SNN does),
  for a sweep of widths and pruning levels.

Operation counts: ``exec_macs``, the multiply-accumulates the weight layers execute on this
hardware (weights x output positions x rows; the static first layer runs once for all T), and
for reference the SD-SNN energy figures of :func:`sdsnn.count_operations`.  The time ratio is
the median over repeats of (compact time / dense time) measured back to back.

Target (issue 3): time ratio (compact / dense) within 1.25x of the exec-MAC ratio.
Writes results/benchmarks/compaction.json and prints one line per case.  Inputs are random
images: timing and operation counts do not depend on the input values.

``--pad-to 8,16`` also times, per case, a compaction whose hidden widths are rounded up to a
multiple of 8 or 16 (dead channels kept, never wider than the original), the block sizes of
oneDNN's AVX-512 kernels, to see whether aligned widths buy speed; the target is still judged on
the unpadded compaction, and the padded time ratios are compared with the same (unpadded) MAC ratio.

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

from sdsnn import build_model, compact, count_operations, native  # noqa: E402
from sdsnn.config import EnergyConfig, ModelConfig  # noqa: E402
from sdsnn.models import SpikingBlock, SpikingNet  # noqa: E402
from sdsnn.structure import LayerMask, apply_masks  # noqa: E402

DEFAULT_RUN = ROOT / "results" / "bench-mnist" / "sdsnn"


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


def padded_masks(model, masks, multiple: int) -> dict[str, LayerMask]:
    """``masks`` with enough pruned neurons of each hidden layer marked live again (they stay dead:
    zero weights, bias and BN affine) for its width to be a multiple of ``multiple``."""
    out = {}
    for li in model.prunable_layers():
        m = masks[li.name]
        neuron = m.neuron.clone()
        if not li.is_output:
            k = int(neuron.sum())
            target = min(neuron.numel(), -(-k // multiple) * multiple)
            neuron[torch.nonzero(~neuron).flatten()[: target - k]] = True
        out[li.name] = LayerMask(m.group, neuron)
    return out


def _use_engine(e: str) -> None:
    """native: the C neuron kernels, convolutions with padded output channels where that is
    faster (SpikingBlock.conv_pad_policy auto); native-unpadded: the same without the padding;
    torch: torch's element-wise neuron route (no padding either)."""
    native.set_enabled(e != "torch")
    SpikingBlock.conv_pad_policy = "never" if e == "native-unpadded" else "auto"


def time_model(model, batches) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            model.predict(x)
    return time.perf_counter() - t0


def measure(dense, masks, input_shape, time_steps: int, a: argparse.Namespace) -> dict:
    """Time the masked network ``dense`` against its compacted copy; op counts and output check."""
    small = compact(dense, masks).eval()
    dense.eval()
    batches = [torch.rand(1, a.batch, *input_shape).expand(time_steps, -1, -1, -1, -1)
               for _ in range(a.batches)]

    # sanity: same outputs (the test suite checks every layer's spikes exactly).  A rate readout
    # is compared exactly; a potential readout (analog) can differ in the last float bits, since
    # the compact FC layers sum fewer (zero) terms, so there predictions must agree exactly.
    with torch.no_grad():
        same, same_pred, max_diff = True, True, 0.0
        for x in batches:
            yd, ys = dense.predict(x), small.predict(x)
            same &= torch.equal(yd, ys)
            same_pred &= torch.equal(yd.argmax(1), ys.argmax(1))
            max_diff = max(max_diff, float((yd - ys).abs().max()))

    padded = {m: compact(dense, padded_masks(dense, masks, m)).eval() for m in a.pad_to}
    for p in padded.values():
        with torch.no_grad():
            assert torch.equal(p.predict(batches[0]).argmax(1), dense.predict(batches[0]).argmax(1))

    # the routes (see _use_engine): native kernels (the default where they build) and torch's give
    # the same spikes
    engines = ["native", "native-unpadded", "torch"] if a.native_available else ["torch"]
    if a.native_available:
        with torch.no_grad():
            native.set_enabled(False)
            ref = [dense.predict(x) for x in batches]
            native.set_enabled(True)
            assert all(torch.equal(r, dense.predict(x)) for r, x in zip(ref, batches)), \
                "native and torch neuron kernels disagree"

    # warm-up, then interleaved repeats so that background load hits all alike
    t_dense, t_small = {e: [] for e in engines}, {e: [] for e in engines}
    t_pad = {m: [] for m in padded}
    for rep in range(a.repeats + 1):
        for e in engines:
            _use_engine(e)
            for net, acc in ((dense, t_dense[e]), (small, t_small[e])):
                t = time_model(net, batches[:1] if rep == 0 else batches)
                if rep:
                    acc.append(t)
        _use_engine(engines[0])
        for m, p in padded.items():
            t = time_model(p, batches[:1] if rep == 0 else batches)
            if rep:
                t_pad[m].append(t)
    per_engine = {}
    for e in engines:
        r = statistics.median(s_ / d_ for s_, d_ in zip(t_small[e], t_dense[e]))
        per_engine[e] = {"dense_time_s": statistics.median(t_dense[e]),
                         "compact_time_s": statistics.median(t_small[e]), "time_ratio": r}
    e0 = engines[0]
    t_dense, t_small = t_dense[e0], t_small[e0]
    td, ts, time_ratio = (per_engine[e0][k] for k in ("dense_time_s", "compact_time_s", "time_ratio"))

    macs_d, neur_d = exec_counts(dense, batches[0])
    macs_s, neur_s = exec_counts(small, batches[0])
    e = EnergyConfig(batches=a.batches)
    rep_d = count_operations(dense, masks, batches, e)
    rep_s = count_operations(small, None, batches, e)
    op_ratio = macs_s / macs_d
    return {
        "dense_widths": dense.widths,
        "compact_widths": small.widths,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "compact_params": sum(p.numel() for p in small.parameters()),
        "outputs_equal": bool(same),
        "predictions_equal": bool(same_pred),
        "outputs_max_abs_diff": max_diff,
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
        "neuron_kernels": e0,
        "engines": {e: {**v, "time_over_op_ratio": v["time_ratio"] / op_ratio,
                        "target_met": v["time_ratio"] <= 1.25 * op_ratio} for e, v in per_engine.items()},
        "energy_dense_arch_pj": rep_d.dense_energy_pj,
        "energy_masked_pj": rep_d.energy_pj,
        "energy_compact_pj": rep_s.energy_pj,
        "sops_masked": rep_d.sops,
        "sops_compact": rep_s.sops,
        "padded": {str(m): {"widths": p.widths, "time_ratio": r, "time_over_op_ratio": r / op_ratio}
                   for m, p in padded.items()
                   for r in [statistics.median(s_ / d_ for s_, d_ in zip(t_pad[m], t_dense))]},
    }


def run_synthetic(width: int, prune: float, a: argparse.Namespace) -> dict:
    """Convnet of base ``width`` with ``prune`` of every hidden layer's neurons removed at random."""
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = ModelConfig(name="convnet", depth=a.depth, width=width, fc_width=a.fc_width, pool_every=2)
    dense = build_model(cfg, (1, 28, 28), 10, static_input=True).eval()
    masks = random_neuron_masks(dense, prune, gen)
    apply_masks(dense.prunable_layers(), masks)
    r = measure(dense, masks, (1, 28, 28), a.time_steps, a)
    return {"case": f"synthetic width {width} prune {prune:.0%}", "kind": "synthetic",
            "model": cfg.model_dump(mode="json"), "prune_fraction": prune, "time_steps": a.time_steps, **r}


def run_trained(run_dir: Path, a: argparse.Namespace) -> dict:
    """The SD-SNN model of a finished run, with the masks its development produced."""
    from sdsnn.train import restore

    rest = restore(run_dir)
    model = rest.model
    masks = rest.masks
    apply_masks(model.prunable_layers(), masks)
    t = rest.config.data.time_steps
    r = measure(model, masks, tuple(model.input_shape), t, a)
    return {"case": f"trained {run_dir}", "kind": "trained", "run_dir": str(run_dir),
            "model": rest.config.model.model_dump(mode="json"), "prune_fraction": rest.metrics["neuron_prune_rate"],
            "time_steps": t, **r}


def _line(r: dict) -> str:
    return (
        f"compaction {r['case']}: widths {r['dense_widths']} -> {r['compact_widths']}; "
        f"time {r['dense_time_s'] * 1e3:.0f} -> {r['compact_time_s'] * 1e3:.0f} ms (ratio {r['time_ratio']:.3f}); "
        f"MAC ratio {r['op_ratio']:.3f}; neuron-update ratio {r['neuron_update_ratio']:.3f}; "
        f"time/op {r['time_over_op_ratio']:.2f} ({'met' if r['target_met'] else 'NOT met'}, "
        f"{r['neuron_kernels']} neuron kernels"
        + "".join(f"; {e} kernels: {v['dense_time_s'] * 1e3:.0f} -> {v['compact_time_s'] * 1e3:.0f} ms, "
                  f"time/op {v['time_over_op_ratio']:.2f}" for e, v in r["engines"].items() if e != r["neuron_kernels"])
        + "); "
        f"outputs equal {r['outputs_equal']} (max diff {r['outputs_max_abs_diff']:.1e}, predictions equal "
        f"{r['predictions_equal']})"
        + "".join(f"; padded to x{m}: widths {p['widths']}, time ratio {p['time_ratio']:.3f}, "
                  f"time/op {p['time_over_op_ratio']:.2f}" for m, p in r["padded"].items())
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", action="append", default=None,
                    help=f"finished SD-SNN run to compact (repeatable; default {DEFAULT_RUN} if present)")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--widths", default="32,64,128", help="base conv widths to try (comma-separated)")
    ap.add_argument("--fc-width", type=int, default=256)
    ap.add_argument("--prunes", default="0.5,0.7", help="fractions of hidden neurons pruned per layer")
    ap.add_argument("--time-steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256, help="inference batch (the configs' eval_batch_size)")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk-mib", type=float, default=None,
                    help="SpikingNet.inference_chunk_bytes in MiB (0: one pass per batch; default: the library's)")
    ap.add_argument("--pad-to", default="",
                    help="also time compactions with widths rounded up to these multiples (e.g. 8,16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "compaction.json"))
    a = ap.parse_args(argv)
    a.pad_to = [int(v) for v in a.pad_to.split(",") if v]
    if any(m < 1 for m in a.pad_to):
        ap.error("--pad-to: multiples must be whole numbers >= 1")
    torch.set_num_threads(a.threads)
    a.native_available = native.load() is not None
    print(f"compaction: native neuron kernels: {native.status()}", flush=True)
    if a.chunk_mib is not None:
        SpikingNet.inference_chunk_bytes = int(a.chunk_mib * (1 << 20))

    cases = []
    run_dirs = [Path(d) for d in a.run_dir] if a.run_dir is not None else (
        [DEFAULT_RUN] if (DEFAULT_RUN / "checkpoint.pt").exists() else [])
    if not run_dirs:
        print(f"compaction: no trained run ({DEFAULT_RUN} absent; run benchmarks/bench_mnist.py first "
              "or pass --run-dir); synthetic cases only", flush=True)
    for d in run_dirs:
        cases.append(run_trained(d, a))
        print(_line(cases[-1]), flush=True)
    for w in [int(v) for v in a.widths.split(",") if v]:
        for p in [float(v) for v in a.prunes.split(",") if v]:
            cases.append(run_synthetic(w, p, a))
            print(_line(cases[-1]), flush=True)
    result = {
        "benchmark": "compaction",
        "command": "benchmarks/bench_compaction.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "target": "time_ratio <= 1.25 * op_ratio (op = executed MACs of the weight layers)",
        "input_shape": [1, 28, 28],
        "time_steps_synthetic": a.time_steps,
        "batch": a.batch,
        "batches": a.batches,
        "repeats": a.repeats,
        "threads": a.threads,
        "inference_chunk_bytes": SpikingNet.inference_chunk_bytes,
        "native_kernels": native.status(),
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

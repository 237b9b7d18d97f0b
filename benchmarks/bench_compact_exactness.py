"""How exactly does a compacted network reproduce the masked one on real data?

For each finished SD-SNN run (``--run-dir``, default the MNIST benchmark's
``results/bench-mnist/sdsnn``; run ``benchmarks/bench_mnist.py`` first), the masked full-size
network and its compacted copy (:func:`sdsnn.compact`) run ``predict`` over the whole test set
(CPU, eval mode, the inference route users get).  Every block's output spikes are compared, the
full-size network's restricted to the neurons that survive compaction (its pruned neurons must
never spike: counted too), and so are the outputs and the predictions.

Why this is a measurement and not a test: neurons, pooling and a 1-channel first layer are summed
in a fixed order and agree bit for bit by construction, but oneDNN convolutions and MKL GEMMs pick
their kernels by width, so a layer with fewer live inputs or outputs may round a potential
differently in the last bit (about 1e-7 relative); a spike flips only where a potential lies that
close to the threshold.  The figures say how often that happens on real inputs.

    .venv/bin/python benchmarks/bench_compact_exactness.py --data-root ../shared/datasets

Writes results/benchmarks/compaction_exactness.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdsnn import compact, native  # noqa: E402
from sdsnn.data import build_loaders  # noqa: E402
from sdsnn.structure import apply_masks  # noqa: E402
from sdsnn.train import restore  # noqa: E402

DEFAULT_RUN = ROOT / "results" / "bench-mnist" / "sdsnn"


def _record(model) -> tuple[dict, list]:
    """Forward hooks on the blocks (not on their weight layers or neurons, whose hooks would send
    inference down the plain module route): each block's outputs, by name, one copy per call
    (``predict`` runs large batches in chunks and reuses the buffers of the previous chunk)."""
    seen: dict[str, list] = {}
    hooks = [b.register_forward_hook(lambda m, i, o, name=b.spec.name: seen.setdefault(name, []).append(o.clone()))
             for b in model.blocks]
    return seen, hooks


def compare(run_dir: Path, limit: int | None, data_root: str | None) -> dict:
    rest = restore(run_dir)
    model, masks, cfg = rest.model, rest.masks, rest.config
    if data_root is not None:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_root": data_root})})
    apply_masks(model.prunable_layers(), masks)
    small = compact(model, masks).eval()
    model.eval()
    keep = {name: torch.nonzero(m.neuron.flatten()).flatten() for name, m in masks.items()}
    bundle = build_loaders(cfg.data, cfg.seed, progress=False)

    seen_d, hooks_d = _record(model)
    seen_s, hooks_s = _record(small)
    spiking = {b.spec.name: b.spec.neuron != "none" for b in small.blocks}  # a potential readout is analog
    layers = {b.spec.name: {"spikes": 0, "differing": 0, "pruned_spikes": 0} if spiking[b.spec.name]
              else {"values_differing": 0, "max_abs_diff": 0.0} for b in small.blocks}
    samples = same_pred = correct = 0
    out_max_diff = 0.0
    outputs_equal = True
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in bundle.test:
            if limit is not None and samples >= limit:
                break
            seen_d.clear()
            seen_s.clear()
            yd, ys = model.predict(x), small.predict(x)
            for name, acc in layers.items():
                d, s = torch.cat(seen_d[name], 1), torch.cat(seen_s[name], 1)  # chunks: along the batch
                if d.shape[2] != s.shape[2]:  # a hidden layer that lost neurons: its live ones
                    idx = keep[name].to(d.device)
                    pruned = torch.ones(d.shape[2], dtype=torch.bool)
                    pruned[idx] = False
                    acc["pruned_spikes"] += int(d[:, :, pruned].count_nonzero())
                    d = d.index_select(2, idx)
                if spiking[name]:
                    acc["spikes"] += int(d.count_nonzero())
                    acc["differing"] += int((d != s).sum())
                else:
                    acc["values_differing"] += int((d != s).sum())
                    acc["max_abs_diff"] = max(acc["max_abs_diff"], float((d - s).abs().max()))
            outputs_equal &= bool(torch.equal(yd, ys))
            out_max_diff = max(out_max_diff, float((yd - ys).abs().max()))
            same_pred += int((yd.argmax(1) == ys.argmax(1)).sum())
            correct += int((ys.argmax(1) == y).sum())
            samples += x.shape[1]
    for h in hooks_d + hooks_s:
        h.remove()
    return {
        "run_dir": str(run_dir),
        "dataset": cfg.data.dataset,
        "readout": cfg.model.readout,
        "dense_widths": model.widths,
        "compact_widths": small.widths,
        "test_samples": samples,
        "layers": layers,
        "differing_spikes": sum(v.get("differing", 0) for v in layers.values()),
        "spikes": sum(v.get("spikes", 0) for v in layers.values()),
        "pruned_neuron_spikes": sum(v.get("pruned_spikes", 0) for v in layers.values()),
        "outputs_equal": outputs_equal,
        "outputs_max_abs_diff": out_max_diff,
        "predictions_differing": samples - same_pred,
        "compact_test_acc": correct / max(samples, 1),
        "seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", action="append", default=None,
                    help=f"finished SD-SNN run (repeatable; default {DEFAULT_RUN})")
    ap.add_argument("--data-root", default=None,
                    help="where the datasets are (default: as for training: $SDSNN_DATA_ROOT, else the cache)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many test samples")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "compaction_exactness.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = [Path(d) for d in a.run_dir] if a.run_dir else [DEFAULT_RUN]
    for d in runs:
        if not (d / "checkpoint.pt").exists():
            ap.error(f"--run-dir {d}: no checkpoint.pt there (run benchmarks/bench_mnist.py first)")
    cases = []
    for d in runs:
        r = compare(d, a.limit, a.data_root)
        cases.append(r)
        per_layer = ", ".join(f"{k} {v['differing']}" if "differing" in v else
                              f"{k} (analog) {v['values_differing']} values, max diff {v['max_abs_diff']:.1e}"
                              for k, v in r["layers"].items())
        print(f"compaction exactness {d}: {r['test_samples']} test samples; {r['differing_spikes']} of "
              f"{r['spikes']} spikes differ ({per_layer}); "
              f"pruned neurons spiked {r['pruned_neuron_spikes']} times; outputs equal {r['outputs_equal']} "
              f"(max diff {r['outputs_max_abs_diff']:.1e}); predictions differing {r['predictions_differing']}; "
              f"test accuracy of the compacted model {r['compact_test_acc']:.4f}",
              flush=True)
    result = {"benchmark": "compaction_exactness",
              "command": "benchmarks/bench_compact_exactness.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "native_kernels": native.status(), "torch": torch.__version__, "cases": cases,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    return result


if __name__ == "__main__":
    main()

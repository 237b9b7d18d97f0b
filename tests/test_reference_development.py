"""Differential test: sdsnn.plasticity.StructuralDevelopment against the independent reference
tests/_reference_development.py (written from docs/sd-snn.md alone, NumPy, no shared code).

Tiny networks (an MLP with 2 and a conv net with 3 prunable layers) develop for 16 steps with
N = 2, so steps 0 (init), 1..2 (adaptation only), 3..4 (+ constraint) and 5..15 (+ regeneration,
pruning, trophic rates) are all visited. Each step, both get the same inputs: a weight trajectory
and per-weight accumulated gradients drawn from a seeded RNG and steered by the reference's state
so that every rule fires (weights pushed above r_hi / below r_lo for several steps, decaying
weights, log-normal regrowth signals on masked groups that persist for a few steps and change).
After every step the test compares group and neuron masks, weights (after the constraint and
masks), r_hi, r_lo, x_hi, x_lo, c_hi, c_lo, c_shrink, the weight history, the above/below flags,
c_grow, the candidate sets, rho per layer, the regrown groups and the pruned / regrown / revived
counts, and checks that pruned neurons' bias and BN affine are 0. At the end it checks that
every rule fired (counts in `_events`), so the comparison cannot pass vacuously.

Readings: the reference runs with two switches that match the implementation's documented choices
(sdsnn/plasticity/development.py module docstring, docs/internals.md "Readings of sd-snn.md"):
- growth_prev="flag": "w >= r_hi now and at the previous step" uses the test as it held at the
  previous step (spec-compatible reading of 5.1; the reference's literal default compares the
  previous weight with the current range; the two differ at the step after a range change);
- revival="documented": a revived neuron is not pruned in the same step and lowers rho by 100 / C.
  This one is a deliberate deviation from the literal spec (documented, with its reason).
`test_literal_spec_differs_only_by_documented_choices` shows what changes without them.

Exactness: per-weight arithmetic (clamp, excess sums, x / N, * shrink_factor) is the same float32
IEEE arithmetic in both, so weights, ranges, excesses, counters and masks must be bit-identical.
Tolerances only where the order of float operations legitimately differs: the neuron scores (a
float32 torch sum vs a float64 NumPy sum) and the regrowth percentile (torch kthvalue + float32
interpolation vs np.percentile in float64). For those the test asserts that the inputs keep clear
margins (score gap at the pruning boundary > 1e-4; no masked group's g within 1e-6 relative, about
8 float32 ulps, of the threshold; C * rho / 100 not just below an integer, where our 1e-9 guard in
num_to_prune would round up), so the discrete decisions are well defined and must agree exactly.
rho is compared to 1e-9 (the same Python-float formula in both). Runs in about 1.5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdsnn.config import PlasticityConfig
from sdsnn.plasticity import StructuralDevelopment
from sdsnn.structure import LayerInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference_development import RefConfig, ReferenceDevelopment  # noqa: E402

N = 2
STEPS = 16  # s = 0 .. 15; pruning from 2N + 1 = 5


def _mlp():
    torch.manual_seed(0)
    fc1, fc2, out = nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 4)
    return [
        LayerInfo("fc1", fc1, "fc", spiking_input=False),
        LayerInfo("fc2", fc2, "fc"),
        LayerInfo("out", out, "fc", is_output=True),
    ]


def _convnet():
    """conv1 (2->6, 3x3, no bias) + BN, conv2 (6->8, 3x3, bias), fc1 (8*2*2 -> 10), out (10 -> 3)."""
    torch.manual_seed(1)
    conv1, bn1 = nn.Conv2d(2, 6, 3, bias=False), nn.BatchNorm2d(6)
    conv2, fc1, out = nn.Conv2d(6, 8, 3), nn.Linear(32, 10), nn.Linear(10, 3)
    return [
        LayerInfo("conv1", conv1, "conv", bn1, spiking_input=False),
        LayerInfo("conv2", conv2, "conv"),
        LayerInfo("fc1", fc1, "fc"),
        LayerInfo("out", out, "fc", is_output=True),
    ]


def _configs(regrow_window, min_range=0.0, **extra):
    """Constants chosen so that K > 0 from the first pruning step on these small layers, rho
    moves every step and reaches the cap, and min_live_fraction separates revived neurons."""
    common = dict(
        spine_window=N,
        shrink_factor=0.75,
        min_range=min_range,
        regrow_window=regrow_window,
        rho_max=35.0,
        min_live_fraction=0.3,
        regrow_b=1.1,
        regrow_p_max=99.0,
    )
    kinds = dict(
        rho_init_conv=20.0, rho_init_fc=20.0,
        trophic_a_conv=3.0, trophic_tau_conv=5.0, trophic_floor_conv=0.0,
        trophic_a_fc=4.0, trophic_tau_fc=3.0, trophic_floor_fc=0.0005,
        regrow_p0_conv=65.0, regrow_p0_fc=60.0,
    )
    ours = PlasticityConfig(constrain="step", **common, **kinds)
    ref = RefConfig(
        spine_window=N, shrink_factor=0.75, min_range=min_range, regrow_window=regrow_window,
        p0={"conv": 65.0, "fc": 60.0}, p_base=1.1, p_max=99.0,
        rho_init={"conv": 20.0, "fc": 20.0}, rho_max=35.0,
        trophic_a={"conv": 3.0, "fc": 4.0}, trophic_tau={"conv": 5.0, "fc": 3.0},
        trophic_floor={"conv": 0.0, "fc": 0.0005}, min_live_fraction=0.3,
        **extra,
    )
    return ours, ref


class _Driver:
    """Generates each step's inputs from a seeded RNG, steered by the reference's state."""

    UP, DOWN, DECAY, NOISE = range(4)

    def __init__(self, ref: ReferenceDevelopment, seed: int):
        self.ref = ref
        self.rng = np.random.default_rng(seed)
        self.roles = [self.rng.integers(0, 4, L.w.shape) for L in ref.layers]
        self.pull = [self._draw_pull(L.m.shape) for L in ref.layers]

    def _draw_pull(self, shape):
        return np.exp(self.rng.normal(0.3, 1.0, shape))

    def weights(self, s: int):
        out = []
        for i, L in enumerate(self.ref.layers):
            if s == 0:
                out.append(L.w.copy())
                continue
            redraw = self.rng.random(L.w.shape) < 0.3
            self.roles[i] = np.where(redraw, self.rng.integers(0, 4, L.w.shape), self.roles[i])
            role, prev = self.roles[i], L.w.astype(np.float64)
            exc = self.rng.uniform(0.002, 0.1, L.w.shape)
            w = np.select(
                [role == self.UP, role == self.DOWN, role == self.DECAY],
                [L.r_hi + exc, L.r_lo - exc, prev * self.rng.uniform(0.5, 0.95, L.w.shape)],
                prev + self.rng.normal(0.0, 0.05, L.w.shape),
            ).astype(np.float32)
            out.append(np.where(L.weight_mask(), w, np.float32(0)))  # hard masks (10)
        return out

    def grads(self):
        """Per-weight accumulated gradients: N(0, 1) times a per-group scale, 1 for live groups
        and, for masked groups, a log-normal "pull" that persists (redrawn with probability 0.15
        per step), so masked groups spread across the threshold and stay candidates for a few
        steps, or drop out of candidacy."""
        out = []
        for i, L in enumerate(self.ref.layers):
            redraw = self.rng.random(L.m.shape) < 0.15
            self.pull[i] = np.where(redraw, self._draw_pull(L.m.shape), self.pull[i])
            scale = np.where(L.m, 1.0, self.pull[i])
            scale = scale.reshape(scale.shape + (1,) * (L.w.ndim - 2))
            out.append((self.rng.normal(0.0, 1.0, L.w.shape) * scale).astype(np.float32))
        return out

    def neuron_params(self, li: LayerInfo, alive: np.ndarray):
        """Random bias / BN affine for alive neurons, 0 for pruned ones (hard masks)."""
        with torch.no_grad():
            ps = [li.module.bias] + ([li.norm.weight, li.norm.bias] if li.norm is not None else [])
            for p in ps:
                if p is not None:
                    v = self.rng.normal(0.5, 0.2, p.shape).astype(np.float32) * alive
                    p.copy_(torch.from_numpy(v))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _run(build, seed, regrow_window, ref_extra, min_range=0.0):
    layers = build()
    hidden = [li for li in layers if not li.is_output]
    ours_cfg, ref_cfg = _configs(regrow_window, min_range, **ref_extra)
    sd = StructuralDevelopment(layers, ours_cfg, num_outputs=layers[-1].num_neurons)
    ref = ReferenceDevelopment([_np(li.weight) for li in hidden], [li.kind for li in hidden],
                               layers[-1].num_neurons, ref_cfg)
    drv = _Driver(ref, seed)
    return layers, hidden, sd, ref, drv


def _step(layers, hidden, sd, ref, drv, s):
    ws = drv.weights(s)
    gs = drv.grads() if s > 2 * N else [np.zeros_like(w) for w in ws]
    before = sd.masks()  # copies, keyed by layer name
    for li, w, g, L in zip(hidden, ws, gs, ref.layers):
        with torch.no_grad():
            li.weight.copy_(torch.from_numpy(w))
        drv.neuron_params(li, L.neuron_alive())
        li.weight.grad = torch.from_numpy(g.copy())
    layers[-1].weight.grad = None
    sd.after_backward()  # accumulates the regrowth signal (read from s > 2N on)
    out = sd.develop(None)
    rep = ref.step(ws, gs)
    return before, out, rep


def _compare(s, layers, hidden, sd, ref, before, out, rep):
    masks = sd.masks()
    tot = {"pruned": 0, "regrown": 0, "revived": 0}
    for i, (li, L, r) in enumerate(zip(hidden, ref.layers, rep["layers"])):
        ctx = f"step {s}, layer {li.name}"
        m = masks[li.name]
        mine = sd._layers[i]
        st = mine.spine
        assert np.array_equal(_np(m.group), L.m), f"{ctx}: group mask"
        assert np.array_equal(_np(m.neuron), L.neuron_alive()), f"{ctx}: neuron mask"
        assert np.array_equal(_np(m.neuron), _np(m.group.any(dim=1))), f"{ctx}: alive == any live group"
        assert np.array_equal(_np(li.weight), L.w), f"{ctx}: weights after the step"
        for k in ("r_hi", "r_lo", "x_hi", "x_lo", "c_hi", "c_lo", "c_shrink"):
            a, b = _np(st[k]), getattr(L, k)
            where = np.argwhere(a != b)[:5].tolist()
            assert np.array_equal(a.astype(b.dtype), b), f"{ctx}: spine {k} differs at {where}"
        assert np.array_equal(_np(st["w_prev1"]), L.w_prev1), f"{ctx}: w_prev1"
        if L.w_prev2 is not None:
            assert np.array_equal(_np(st["w_prev2"]), L.w_prev2), f"{ctx}: w_prev2"
        if ref.cfg.growth_prev == "flag":
            assert np.array_equal(_np(st["above_prev"]), L.above_prev), f"{ctx}: above flags"
            assert np.array_equal(_np(st["below_prev"]), L.below_prev), f"{ctx}: below flags"
        assert np.array_equal(_np(mine.c_grow), L.c_grow), f"{ctx}: c_grow"
        assert np.array_equal(_np(mine.cand_prev), L.cand_prev), f"{ctx}: candidates"
        assert mine.rho == pytest.approx(L.rho, rel=0, abs=1e-9), f"{ctx}: rho {mine.rho} vs {L.rho}"
        # pruned neurons: bias and BN affine exactly 0 (8)
        dead = ~_np(m.neuron)
        for p in [li.module.bias] + ([li.norm.weight, li.norm.bias] if li.norm is not None else []):
            if p is not None:
                assert np.all(_np(p)[dead] == 0), f"{ctx}: bias/BN of pruned neuron not zero"
        if s > 2 * N:
            newly_live = _np(m.group & ~before[li.name].group)
            # a group regrown into an alive neuron that the same step then prunes ends masked
            assert np.array_equal(newly_live, r["regrown"] & L.m), f"{ctx}: regrown groups"
            tot["regrown"] += int(r["regrown"].sum())
            tot["revived"] += int(r["revived"].sum())
            tot["pruned"] += int(r["pruned_new"].sum())
            # margins that make the discrete decisions independent of float summation order
            thr = r["threshold"]
            gm = r["g"][r["masked_before"]]  # only masked groups can be candidates
            if gm.size:
                d = np.abs(gm - thr)
                d = d[d > 0]  # a threshold that is exactly one of the g values is exact in both
                assert d.size == 0 or d.min() > 1e-6 * max(1.0, abs(thr)), f"{ctx}: g of a masked group near threshold"
            if r["score_gap"] is not None:
                assert r["score_gap"] > 1e-4, f"{ctx}: near-tie at the pruning boundary ({r['score_gap']})"
            kf = r["k_frac"]
            # our num_to_prune adds 1e-9 before the floor: only values just below an integer differ
            assert not (0 < round(kf) - kf < 1e-6), f"{ctx}: C * rho / 100 = {kf!r} just below an integer"
    for k in tot:
        assert out[k] == tot[k], f"step {s}: {k} count {out[k]} vs reference {tot[k]}"
    # the output layer is never pruned
    assert masks[layers[-1].name].group.all() and masks[layers[-1].name].neuron.all()


def _events(s, ref, rep, rho_before, ev, pruned_per_layer):
    """Count, per rule, how often it fired at this step (summed over layers)."""
    for i, (L, r) in enumerate(zip(ref.layers, rep["layers"])):
        for k in ("grow_hi", "grow_lo", "shrink", "floored", "clamped", "streak_broken"):
            ev[k] += int(r.get(k, 0))
        if s > 2 * N:
            ev["candidates"] += int(r["candidates"].sum())
            ev["c_grow_counting"] += int((L.c_grow > 0).sum())
            ev["regrown"] += int(r["regrown"].sum())
            ev["revived"] += int(r["revived"].sum())
            ev["pruned"] += int(r["pruned_new"].sum())
            pruned_per_layer[i] += int(r["pruned_new"].sum())
            ev["rho_up"] += int(r["rho_delta"] > 0)
            ev["rho_capped"] += int(r["rho_capped"])
            # the documented revival rule lowered rho (rho_after = rho_before - drop + rho_delta)
            dropped = L.rho < rho_before[i] + r["rho_delta"] - 1e-12
            ev["rho_down_by_revival"] += int(bool(r["revived"].any()) and dropped)
            # alive but below min_live_fraction * fan_in: S_l < alive neurons
            ev["alive_not_surviving"] += int(L.neuron_alive().sum()) - r["S"]


CASES = [
    pytest.param(_mlp, 11, None, 0.0, id="mlp-regrow_window=N"),
    pytest.param(_convnet, 5, 1, 0.0, id="convnet-regrow_window=1"),
    # min_range below every initial range (max|w| ~ 0.29 here): the floor stops shrinks. Above
    # an initial range the readings differ (see the reference's A6), so that case is not run.
    pytest.param(_mlp, 12, 1, 0.1, id="mlp-min_range=0.1"),
]


@pytest.mark.parametrize("build,seed,regrow_window,min_range", CASES)
def test_development_matches_reference(build, seed, regrow_window, min_range):
    layers, hidden, sd, ref, drv = _run(build, seed, regrow_window,
                                        dict(growth_prev="flag", revival="documented"), min_range)
    ev = dict.fromkeys(("grow_hi", "grow_lo", "shrink", "floored", "clamped", "candidates", "c_grow_counting",
                        "streak_broken", "regrown", "revived", "pruned", "rho_up", "rho_capped",
                        "rho_down_by_revival", "alive_not_surviving"), 0)
    pruned_per_layer = [0] * len(hidden)
    for s in range(STEPS):
        rho_before = [L.rho for L in ref.layers]
        before, out, rep = _step(layers, hidden, sd, ref, drv, s)
        _compare(s, layers, hidden, sd, ref, before, out, rep)
        _events(s, ref, rep, rho_before, ev, pruned_per_layer)
    # every rule fired, so the comparisons above are not vacuous
    if min_range == 0:
        del ev["floored"]
    missing = [k for k, v in ev.items() if v <= 0]
    assert not missing, f"rules that never fired: {missing} (events: {ev})"
    assert all(n > 0 for n in pruned_per_layer), f"a layer never pruned a neuron: {pruned_per_layer}"


def test_literal_spec_differs_only_by_documented_choices():
    """Switching either documented choice back to the literal reading changes the outcome on the
    MLP trajectory (so the choices are exercised, not dead code), and only where expected:
    - growth_prev: first at a spine step before any pruning (the step after a range changed);
    - revival: first at a step with a revival, where the literal rule re-prunes every revived
      neuron at once (docs/internals.md: "Read literally, 8 would re-prune the revived neuron")."""
    documented = dict(growth_prev="flag", revival="documented")
    first = {}
    for opt, literal in (("growth_prev", "weight"), ("revival", "spec")):
        layers, hidden, sd, ref_lit, drv = _run(_mlp, 11, None, {**documented, opt: literal})
        ref_doc = ReferenceDevelopment([L.w.copy() for L in ref_lit.layers], [L.kind for L in ref_lit.layers],
                                       ref_lit.n_outputs, _configs(None, **documented)[1])
        for s in range(STEPS):
            ws = drv.weights(s)
            gs = drv.grads() if s > 2 * N else [np.zeros_like(w) for w in ws]
            rep_lit = ref_lit.step(ws, gs)
            ref_doc.step(ws, gs)
            keys = ("w", "r_hi", "r_lo", "c_hi", "c_lo", "m")
            same = all(all(np.array_equal(getattr(a, k), getattr(b, k)) for k in keys) and a.rho == b.rho
                       for a, b in zip(ref_lit.layers, ref_doc.layers))
            if not same:
                first[opt] = (s, rep_lit)
                break
    assert set(first) == {"growth_prev", "revival"}, first
    assert N < first["growth_prev"][0] < 2 * N + 1
    s, rep = first["revival"]
    assert s > 2 * N + 1
    revived = [r["revived"] for r in rep["layers"]]
    assert any(v.any() for v in revived)
    for r, v in zip(rep["layers"], revived):
        assert np.array_equal(r["pruned_new"] & v, v)  # literal rule: revived and re-pruned at once

"""Independent reference for one SD-SNN development step, written from docs/sd-snn.md only.

Plain NumPy, float32 for everything that is per weight (so that elementwise arithmetic is
bit-identical to a float32 torch implementation), float64 only for the per-layer scalars (P(s),
alpha(s), rho). Slow and obvious on purpose; it is only ever run on tiny networks.

Section numbers below refer to docs/sd-snn.md.

Ambiguities in the spec and the reading picked here (each also marked "AMBIGUITY" at its place):

A1 (5.1) "if w >= r_hi now and at the previous step": the previous step's weight is compared
    with the *current* r_hi (the state list of section 3 keeps the previous weights, no flags).
A2 (3, 5.3) "the weight at the previous two steps" is the weight the network held at the end of
    that step, i.e. after the constraint and the masks. Because the clamp of step s-1 uses the r_hi
    that is current at step s, A1+A2 make "w_prev >= r_hi" mean "w_prev was clamped to r_hi".
A3 (5.3) at step 1 only one previous weight exists, so the shrink condition is false there.
A4 (5) the three sub-rules are applied in the order listed: upward growth, downward growth, then
    shrinkage multiplies the (possibly just grown) ranges. The shrink condition does not read
    the ranges, so only the order of the range updates matters.
A5 (5.2) x_lo is stored as a positive excess (r_lo - w), r_lo -= x_lo / N. The sign convention of
    the stored x_lo is not specified; compare |x_lo|.
A6 (5.3) the floor min_range: r_hi = max(r_hi * f, min_range), r_lo = min(r_lo * f, -min_range).
A7 (7) g = sum over the group's weights of |accumulated gradient of each weight| (abs first,
    then sum). For FC groups (one weight) the two possible readings coincide.
A8 (7) percentile with linear interpolation (numpy's default), over all groups of the layer,
    live and masked; "above" is strict (>).
A9 (7) "c_grow increments if it was also a candidate at the previous step, else resets": resets
    to 0 (also for non-candidates); candidacy is only evaluated at s > 2N, so at s = 2N+1 nobody
    was a candidate "at the previous step". Unmask when c_grow > regrow_window, in the same step.
A10 (7) a regrown group keeps its spine state (ranges, counters, previous weights); only the
    weight is set to 0 (and c_grow to 0).
A11 (8) "the layer's live weights" for the min-max normalisation are the weights of live groups
    after this step's regeneration (regrown weights included).
A12 (8) ties in the neuron score: the spec claims pruned neurons (score 0) are "always among"
    the K lowest, which requires breaking ties in favour of already pruned neurons; remaining
    ties by neuron index. A live neuron can score exactly 0 (all its live weights at the minimum z).
A13 (8) the cap: K = floor(C * min(rho, rho_max) / 100) (see A15 for the stored rho). Neurons
    already pruned stay pruned even if not selected (cannot happen while A12 holds, since their
    number never exceeds the previous K).
A14 (9) "live input weights" counts individual weights of live groups (a conv group has k*k),
    fan_in = in_channels * k * k; "at least" is >=. All layers are pruned first, then all rho are
    updated from the post-pruning survivor counts (phase by phase across layers, not layer by
    layer). S_next of the last prunable layer is the output layer's size. If S_next is 0 the
    update is skipped (division by zero; cannot happen for the last layer).
A15 (8, 9) whether the stored rho is capped or only K: the reference caps rho itself (initial
    value and every update: rho = min(rho + delta, rho_max)). Under the literal rules both readings
    give the same K; they differ only if something else lowers rho (see OPTION B below).
A16 (4) step 0 only sets the spines (from the weights of the first interval) and remembers the
    weights; no adaptation, no constraint.
A17 (8) "floor" is taken literally (no epsilon guard against rounding of C * rho / 100).

Switchable readings (the defaults are the literal readings above; the differential test turns
on the ones the implementation documents as its deliberate choice, see its module docstring):

OPTION A `growth_prev="flag"` instead of "weight" (A1): "at the previous step" means the test
    w >= r_hi held at the previous step against the range of then (a stored bool per weight).
    Both are literal readings of 5.1; they differ only at the step after a range changed.
OPTION B `revival="documented"` instead of "spec": NOT in the spec. A neuron revived by
    regeneration is excluded from this step's pruning and lowers its layer's rho by 100 / C
    (floored at 0); K is at most C minus the protected neurons. Literally (revival="spec"), 8
    re-prunes the revived neuron at once or prunes another in its place (same K).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

F32 = np.float32


@dataclass
class RefConfig:
    spine_window: int = 18                 # N
    shrink_factor: float = 0.75
    min_range: float = 0.0
    regrow_window: int | None = None       # default N
    p0: dict = field(default_factory=lambda: {"conv": 65.0, "fc": 60.0})
    p_base: float = 1.1                    # b
    p_max: float = 99.0
    rho_init: dict = field(default_factory=lambda: {"conv": 0.5, "fc": 2.0})
    rho_max: float = 95.0
    trophic_a: dict = field(default_factory=lambda: {"conv": 1.0, "fc": 0.5})
    trophic_tau: dict = field(default_factory=lambda: {"conv": 5.0, "fc": 1.0})
    trophic_floor: dict = field(default_factory=lambda: {"conv": 0.0, "fc": 0.0005})
    min_live_fraction: float = 0.01
    growth_prev: str = "weight"            # OPTION A: "weight" | "flag"
    revival: str = "spec"                  # OPTION B: "spec" | "documented"

    @property
    def N(self) -> int:
        return self.spine_window

    @property
    def R(self) -> int:
        return self.spine_window if self.regrow_window is None else self.regrow_window


class RefLayer:
    """State of one prunable layer (section 3)."""

    def __init__(self, w: np.ndarray, kind: str, cfg: RefConfig):
        assert kind in ("conv", "fc")
        self.kind = kind
        self.w = np.array(w, dtype=F32)                        # (out, in) or (out, in, k, k)
        self.out, self.inp = self.w.shape[:2]
        self.group_size = int(np.prod(self.w.shape[2:])) if self.w.ndim > 2 else 1
        self.fan_in = self.inp * self.group_size
        self.m = np.ones((self.out, self.inp), dtype=bool)     # synapse-group mask
        z = np.zeros_like(self.w)
        self.r_hi, self.r_lo = z.copy(), z.copy()
        self.c_hi = np.zeros(self.w.shape, np.int64)
        self.c_lo = np.zeros(self.w.shape, np.int64)
        self.c_shrink = np.zeros(self.w.shape, np.int64)
        self.x_hi, self.x_lo = z.copy(), z.copy()
        self.w_prev1 = None                                    # weight at step s-1 (A2)
        self.w_prev2 = None                                    # weight at step s-2
        self.c_grow = np.zeros((self.out, self.inp), np.int64)
        self.cand_prev = np.zeros((self.out, self.inp), dtype=bool)
        self.above_prev = np.zeros(self.w.shape, bool)         # OPTION A only
        self.below_prev = np.zeros(self.w.shape, bool)
        self.rho = min(float(cfg.rho_init[kind]), cfg.rho_max)  # percent, cumulative target (A15)
        self.protect = np.zeros(self.out, bool)                # OPTION B only

    # -- helpers -------------------------------------------------------------------------------
    def weight_mask(self) -> np.ndarray:
        """Group mask broadcast to the weight shape."""
        return self.m.reshape(self.m.shape + (1,) * (self.w.ndim - 2)) & np.ones(self.w.shape, bool)

    def neuron_alive(self) -> np.ndarray:
        # Sec 3: "a neuron is alive while any of its input groups is live".
        return self.m.any(axis=1)

    def live_weight_count(self) -> np.ndarray:
        return self.m.sum(axis=1) * self.group_size


class ReferenceDevelopment:
    """Drives development steps s = 0, 1, 2, ... on a stack of prunable layers.

    `n_outputs`: number of neurons of the (unpruned) output layer, for S_next of the last layer.
    """

    def __init__(self, weights, kinds, n_outputs: int, cfg: RefConfig):
        self.cfg = cfg
        self.layers = [RefLayer(w, k, cfg) for w, k in zip(weights, kinds)]
        self.n_outputs = int(n_outputs)
        self.s = 0

    # -- schedules ------------------------------------------------------------------------------
    def percentile(self, kind: str, s: int) -> float:
        # Sec 7: "P(s) = min(P_max, P0 + b ** (s - 2N - 1))"
        c = self.cfg
        return min(c.p_max, c.p0[kind] + c.p_base ** (s - 2 * c.N - 1))

    def alpha(self, kind: str, s: int) -> float:
        # Sec 9: "alpha(s) = max(a * exp(-(s - 2N - 1) / tau), alpha_floor)"
        c = self.cfg
        return max(c.trophic_a[kind] * math.exp(-(s - 2 * c.N - 1) / c.trophic_tau[kind]),
                   c.trophic_floor[kind])

    # -- one development step -----------------------------------------------------------------
    def step(self, trained_weights, acc_grads) -> dict:
        """One development step.

        trained_weights[l]: the layer's weights read after the interval's training (masked
        entries must already be 0: hard masks, sec 10).
        acc_grads[l]: per weight, the gradient of the loss w.r.t. the effective weight summed
        since the last step (sec 7), same shape as the weights.
        Returns a report of what happened (events per layer).
        """
        c, N, s = self.cfg, self.cfg.N, self.s
        rep = {"s": s, "layers": [dict() for _ in self.layers]}
        for L, w_new in zip(self.layers, trained_weights):
            w_new = np.array(w_new, dtype=F32)
            assert w_new.shape == L.w.shape
            assert np.all(w_new[~L.weight_mask()] == 0), "hard mask violated in the input"
            L.w = w_new

        if s == 0:
            # Sec 4: "r_hi = max|w|, r_lo = -max|w| (per layer, then tracked per weight)". (A16)
            for L in self.layers:
                mx = np.abs(L.w).max()
                L.r_hi[...] = mx
                L.r_lo[...] = -mx
                L.w_prev2 = None
                L.w_prev1 = L.w.copy()
                L.above_prev = L.w >= L.r_hi
                L.below_prev = L.w <= L.r_lo
            self.s += 1
            return rep

        for L, r in zip(self.layers, rep["layers"]):
            self._adapt_spines(L, r)
            if s > N:
                # Sec 6: "w = clamp(w, r_lo, r_hi) at each development step (constrain: step)"
                before = L.w
                L.w = np.minimum(np.maximum(L.w, L.r_lo), L.r_hi)
                r["clamped"] = int((L.w != before).sum())

        if s > 2 * N:
            for L, g, r in zip(self.layers, acc_grads, rep["layers"]):
                self._regenerate(L, np.asarray(g, dtype=F32), s, r)    # Sec 7: before pruning
            for L, r in zip(self.layers, rep["layers"]):
                self._prune_neurons(L, r)                              # Sec 8: after regeneration
            self._trophic(s, rep)                                      # Sec 9: after pruning

        # A2: remember the weight the network holds at the end of this step.
        for L in self.layers:
            L.w = np.where(L.weight_mask(), L.w, F32(0))   # sec 10: masked weights exactly 0
            L.w_prev2 = L.w_prev1
            L.w_prev1 = L.w.copy()
        self.s += 1
        return rep

    # -- section 5 ----------------------------------------------------------------------------
    def _adapt_spines(self, L: RefLayer, r: dict) -> None:
        N = self.cfg.N
        w, p1, p2 = L.w, L.w_prev1, L.w_prev2

        # 5.1 "if w >= r_hi now and at the previous step, c_hi += 1 and x_hi += w - r_hi;
        #      otherwise both reset to 0."  (A1: the previous weight against the current r_hi)
        above_now, below_now = w >= L.r_hi, w <= L.r_lo
        if self.cfg.growth_prev == "flag":                     # OPTION A
            above_before, below_before = L.above_prev, L.below_prev
        else:                                                   # A1
            above_before, below_before = p1 >= L.r_hi, p1 <= L.r_lo
        L.above_prev, L.below_prev = above_now, below_now
        up = above_now & above_before
        L.c_hi = np.where(up, L.c_hi + 1, 0)
        L.x_hi = np.where(up, L.x_hi + (w - L.r_hi), F32(0)).astype(F32)
        # "When c_hi >= N: r_hi += x_hi / N, then reset."
        grow = L.c_hi >= N
        L.r_hi = np.where(grow, L.r_hi + L.x_hi / F32(N), L.r_hi).astype(F32)
        L.c_hi = np.where(grow, 0, L.c_hi)
        L.x_hi = np.where(grow, F32(0), L.x_hi).astype(F32)
        r["grow_hi"] = int(grow.sum())

        # 5.2 "the mirror image with w <= r_lo, r_lo moves outward by the mean excess." (A5)
        down = below_now & below_before
        L.c_lo = np.where(down, L.c_lo + 1, 0)
        L.x_lo = np.where(down, L.x_lo + (L.r_lo - w), F32(0)).astype(F32)
        grow = L.c_lo >= N
        L.r_lo = np.where(grow, L.r_lo - L.x_lo / F32(N), L.r_lo).astype(F32)
        L.c_lo = np.where(grow, 0, L.c_lo)
        L.x_lo = np.where(grow, F32(0), L.x_lo).astype(F32)
        r["grow_lo"] = int(grow.sum())

        # 5.3 "if |w| fell compared with the previous step and also at the step before,
        #      c_shrink += 1, else it resets." (A3: false while only one previous step exists)
        if p2 is None:
            fell = np.zeros(w.shape, bool)
        else:
            fell = (np.abs(w) < np.abs(p1)) & (np.abs(p1) < np.abs(p2))
        L.c_shrink = np.where(fell, L.c_shrink + 1, 0)
        # "When c_shrink >= N: r_hi *= shrink_factor, r_lo *= shrink_factor, reset."
        # "Optional floor min_range (default 0)." (A6)
        shrink = L.c_shrink >= N
        f, mr = F32(self.cfg.shrink_factor), F32(self.cfg.min_range)
        r["floored"] = int((shrink & ((L.r_hi * f < mr) | (L.r_lo * f > -mr))).sum())
        L.r_hi = np.where(shrink, np.maximum(L.r_hi * f, mr), L.r_hi).astype(F32)
        L.r_lo = np.where(shrink, np.minimum(L.r_lo * f, -mr), L.r_lo).astype(F32)
        L.c_shrink = np.where(shrink, 0, L.c_shrink)
        r["shrink"] = int(shrink.sum())

    # -- section 7 ----------------------------------------------------------------------------
    def _regenerate(self, L: RefLayer, grad: np.ndarray, s: int, r: dict) -> None:
        # "g = the absolute value of that accumulated sum, summed over the group" (A7)
        a = np.abs(grad)
        g = a.reshape(L.out, L.inp, -1).sum(axis=2)
        # "the P(s)-th percentile of g over all groups of the layer" (A8)
        P = self.percentile(L.kind, s)
        thr = np.percentile(g.astype(np.float64), P)
        # "A masked group whose g is above the threshold is a candidate."
        masked_before = ~L.m
        cand = masked_before & (g > thr)
        # "Its c_grow increments if it was also a candidate at the previous step, else resets." (A9)
        streak_broken = L.cand_prev & ~cand & ~L.m & (L.c_grow > 0)
        L.c_grow = np.where(cand & L.cand_prev, L.c_grow + 1, 0)
        L.cand_prev = cand
        # "When c_grow > regrow_window the group is unmasked: weights start at 0, ... c_grow resets"
        regrow = L.c_grow > self.cfg.R
        dead_before = ~L.neuron_alive()
        L.m = L.m | regrow
        wm = regrow.reshape(regrow.shape + (1,) * (L.w.ndim - 2)) & np.ones(L.w.shape, bool)
        L.w = np.where(wm, F32(0), L.w).astype(F32)
        L.c_grow = np.where(regrow, 0, L.c_grow)
        # "A neuron that had been pruned comes back to life when one of its groups regrows."
        revived = dead_before & L.neuron_alive()
        L.protect = np.zeros(L.out, bool)
        if self.cfg.revival == "documented" and revived.any():     # OPTION B (not in the spec)
            L.protect = revived.copy()
            L.rho = max(0.0, L.rho - 100.0 * int(revived.sum()) / L.out)
        r.update(masked_before=masked_before, threshold=thr, percentile=P, g=g, candidates=cand.copy(),
                 regrown=regrow.copy(), revived=revived,
                 streak_broken=int(streak_broken.sum()))

    # -- section 8 ----------------------------------------------------------------------------
    def _prune_neurons(self, L: RefLayer, r: dict) -> None:
        wm = L.weight_mask()
        # "z = r_hi + |r_lo|, min-max normalised over the layer's live weights to [0, 1]
        #  (0.5 everywhere if they are all equal)" (A11)
        z = (L.r_hi + np.abs(L.r_lo)).astype(F32)
        live = z[wm]
        zmin, zmax = live.min(), live.max()
        if zmax == zmin:
            zn = np.full_like(z, F32(0.5))
        else:
            zn = ((z - zmin) / (zmax - zmin)).astype(F32)
        # "Neuron score: the sum of z over its live input weights."
        score = np.where(wm, zn, F32(0)).reshape(L.out, -1).astype(np.float64).sum(axis=1)
        # "K = floor(C * rho / 100) ... Cap: rho_max" (A13, A15)
        K = int(math.floor(L.out * min(L.rho, self.cfg.rho_max) / 100.0))   # A17
        alive = L.neuron_alive()
        # "K neurons with the lowest scores are pruned"; ties: pruned first, then index (A12)
        order = np.lexsort((np.arange(L.out), alive.astype(int), score))
        if self.cfg.revival == "documented":                   # OPTION B: protected never selected
            order = np.array([j for j in order if not L.protect[j]], dtype=int)
            K = min(K, len(order))
        selected = np.zeros(L.out, bool)
        selected[order[:K]] = True
        n = len(order)
        tie_at_boundary = 0 < K < n and score[order[K - 1]] == score[order[K]]
        # "only newly selected neurons change"
        newly = selected & alive
        # "Pruning a neuron masks all its input groups AND its bias / BatchNorm output"
        # (biases / BN are not modelled here; the differential test checks them on the model)
        L.m[newly, :] = False
        L.w = np.where(L.weight_mask(), L.w, F32(0)).astype(F32)
        r.update(score=score, K=K, pruned_new=newly.copy(), tie_at_boundary=bool(tie_at_boundary),
                 score_gap=(float(score[order[K]] - score[order[K - 1]]) if 0 < K < n else None),
                 k_frac=L.out * min(L.rho, self.cfg.rho_max) / 100.0)

    # -- section 9 ----------------------------------------------------------------------------
    def surviving(self, L: RefLayer) -> int:
        # "neurons of layer l with at least min_live_fraction * fan_in live input weights" (A14)
        return int((L.live_weight_count() >= self.cfg.min_live_fraction * L.fan_in).sum())

    def _trophic(self, s: int, rep: dict) -> None:
        S = [self.surviving(L) for L in self.layers] + [self.n_outputs]
        for i, (L, r) in enumerate(zip(self.layers, rep["layers"])):
            r["S"], r["S_next"] = S[i], S[i + 1]
            before = L.rho
            r["rho_capped"] = False
            if S[i + 1] > 0:
                # "rho_l += alpha_l(s) * S_l / S_next", capped at rho_max (A15)
                new = L.rho + self.alpha(L.kind, s) * S[i] / S[i + 1]
                r["rho_capped"] = new > self.cfg.rho_max
                L.rho = min(new, self.cfg.rho_max)
            r["rho_delta"] = L.rho - before

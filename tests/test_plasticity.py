"""SD-SNN structural development (sdsnn/plasticity): rules on hand-made values and invariants.

All networks here are a few hand-built nn.Linear / nn.Conv2d layers wrapped in LayerInfo.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from sdsnn.config import PlasticityConfig
from sdsnn.errors import ConfigError
from sdsnn.plasticity import (
    StructuralDevelopment,
    adapt_spines,
    init_spines,
    percentile,
    regrow_percentile,
    reset_optimizer_state,
    select_pruned,
    spine_size,
    surviving_neurons,
    trophic_alpha,
    update_regrowth,
)
from sdsnn.structure import LayerInfo, expand_group_mask


def _conv_net(seed: int = 0):
    """conv(2->6, 3x3, no bias) + BN -> FC(6*4*4 -> 10) -> FC out(10 -> 3); input [B, 2, 6, 6]."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(2, 6, 3, bias=False)
    bn = nn.BatchNorm2d(6)
    fc = nn.Linear(6 * 4 * 4, 10)
    out = nn.Linear(10, 3)
    layers = [
        LayerInfo("conv1", conv, "conv", bn, spiking_input=False),
        LayerInfo("fc1", fc, "fc"),
        LayerInfo("out", out, "fc", is_output=True),
    ]
    mods = nn.ModuleList([conv, bn, fc, out])

    def forward(x):
        h = torch.tanh(bn(conv(x))).flatten(1)
        return out(torch.tanh(fc(h)))

    return layers, mods, forward


def _train_steps(sd, mods, forward, opt, steps, gen):
    for _ in range(steps):
        x = torch.randn(8, 2, 6, 6, generator=gen)
        y = forward(x)
        loss = ((y - torch.tensor([1.0, -1.0, 0.5])) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        sd.after_backward()
        opt.step()
        sd.after_optimizer_step(opt)


def _live_count(layer: LayerInfo, mask) -> int:
    return int(expand_group_mask(mask.group, layer.weight).sum())


def test_dense_mode_is_refused():
    layers, _, _ = _conv_net()
    with pytest.raises(ConfigError, match="dense"):
        StructuralDevelopment(layers, PlasticityConfig(mode="dense"), 3)


def test_masked_weights_stay_exactly_zero_under_adamw_with_weight_decay():
    layers, mods, forward = _conv_net()
    # N = 1: pruning from step 3; no regrowth in this test so live weights stay nonzero
    cfg = PlasticityConfig(spine_window=1, rho_init_conv=50, rho_init_fc=30, regrow_window=1000)
    sd = StructuralDevelopment(layers, cfg, num_outputs=3)
    opt = torch.optim.AdamW(mods.parameters(), lr=1e-2, weight_decay=0.5)
    gen = torch.Generator().manual_seed(1)
    total_pruned = 0
    for _ in range(7):
        _train_steps(sd, mods, forward, opt, 5, gen)
        total_pruned += sd.develop(opt)["pruned"]
    # 50 % of 6 channels, >= 30 % of 10 units
    assert total_pruned >= 3 + 3
    _train_steps(sd, mods, forward, opt, 30, gen)  # many steps after the last pruning
    masks = sd.masks()
    for li in layers:
        m = masks[li.name]
        w = li.weight.detach()
        live = expand_group_mask(m.group, w)
        assert int(torch.count_nonzero(w)) == _live_count(li, m)
        assert torch.all(w[~live] == 0)
        st = opt.state[li.weight]
        assert torch.all(st["exp_avg"][~live] == 0) and torch.all(st["exp_avg_sq"][~live] == 0)
        dead = ~m.neuron
        if li.module.bias is not None:
            assert torch.all(li.module.bias.detach()[dead] == 0)
        if li.norm is not None:
            assert torch.all(li.norm.weight.detach()[dead] == 0)
            assert torch.all(li.norm.bias.detach()[dead] == 0)
    assert (~masks["conv1"].neuron).sum() == 3  # K = floor(6 * rho / 100) with rho just above 50
    assert masks["out"].group.all() and masks["out"].neuron.all()  # output layer untouched
    st = sd.stats()
    # effective live weights: fc1 columns reading from a pruned conv1 channel (16 per channel) are dead
    src = masks["conv1"].neuron.repeat_interleave(16)
    live_w = _live_count(layers[0], masks["conv1"]) + int((masks["fc1"].group & src[None, :]).sum())
    all_w = sum(li.weight.numel() for li in layers[:2])
    assert st["syn_prune_rate"] == pytest.approx(1 - live_w / all_w)
    assert live_w < sum(_live_count(li, masks[li.name]) for li in layers[:2])
    assert st["neuron_prune/conv1"] == pytest.approx(0.5)


@pytest.mark.parametrize("train_mode", [True, False])
def test_pruned_neuron_outputs_exactly_zero(train_mode):
    layers, mods, forward = _conv_net(seed=3)
    cfg = PlasticityConfig(spine_window=1, rho_init_conv=50, rho_init_fc=40, regrow_window=1000)
    sd = StructuralDevelopment(layers, cfg, num_outputs=3)
    opt = torch.optim.AdamW(mods.parameters(), lr=1e-2, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):  # steps 0..3; pruning at step 3
        _train_steps(sd, mods, forward, opt, 3, gen)
        sd.develop(opt)
    m = sd.masks()
    dead_c = ~m["conv1"].neuron
    dead_f = ~m["fc1"].neuron
    assert dead_c.sum() == 3 and dead_f.sum() == 4
    conv, bn, fc = layers[0].module, layers[0].norm, layers[1].module
    assert torch.all(bn.running_mean[dead_c] != 0)  # stale statistics must not leak through
    mods.train(train_mode)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(16, 2, 6, 6, generator=gen) * 5 + 2
            pre_c = bn(conv(x))
            assert torch.all(pre_c[:, dead_c] == 0)
            assert torch.any(pre_c[:, ~dead_c] != 0)
            h = torch.randn(16, 96, generator=gen) * 3
            pre_f = fc(h)
            assert torch.all(pre_f[:, dead_f] == 0)


def test_spine_rules_on_hand_made_trajectory():
    """One FC layer with 3 weights, N = 2, shrink 0.75. Values worked out by hand:

    step 0: w = [0.5, -0.2, 0.1] -> r_hi = 0.5, r_lo = -0.5 for all; above_prev = [T, F, F]
    step 1: w = [0.7, -0.6, 0.08]: w0 above now and before -> c_hi0 = 1, x_hi0 = 0.2.
            w1 below now only (below_prev F) -> c_lo1 = 0. No shrink (history of 1).
            s = 1 <= N: no clamp.
    step 2: w = [0.9, -0.7, 0.05]: c_hi0 = 2 >= N -> r_hi0 = 0.5 + 0.6 / 2 = 0.8, reset.
            w1 below now and before -> c_lo1 = 1, x_lo1 = 0.2.
            |w2|: 0.05 < 0.08 < 0.1 -> c_shrink2 = 1. No clamp (s = 2 = N).
    step 3: w = [0.85, -0.8, 0.04]: 0.85 >= 0.8 and before -> c_hi0 = 1, x_hi0 = 0.05.
            c_lo1 = 2, x_lo1 = 0.2 + 0.3 = 0.5 -> r_lo1 = -0.5 - 0.25 = -0.75, reset.
            0.04 < 0.05 < 0.08 -> c_shrink2 = 2 -> r2 = [-0.375, 0.375], reset.
            s = 3 > N: clamp -> w = [0.8, -0.75, 0.04].
    step 4: w = [0.82, -0.74, 0.5]: c_hi0 = 2, x_hi0 = 0.07 -> r_hi0 = 0.835, reset.
            -0.74 > r_lo1 = -0.75 -> c_lo1 = 0. w2 above r_hi2 now, not before -> c_hi2 = 0.
            |w1| 0.74 < 0.75 (previous, clamped) but 0.75 > 0.7 (step 2) -> no shrink.
            clamp -> w = [0.82, -0.74, 0.375].
    """
    fc = nn.Linear(3, 1, bias=False)
    layers = [LayerInfo("fc", fc, "fc")]
    cfg = PlasticityConfig(spine_window=2, shrink_factor=0.75)
    sd = StructuralDevelopment(layers, cfg, num_outputs=1)
    sp = lambda k: sd._layers[0].spine[k].reshape(-1).tolist()  # noqa: E731
    approx = lambda v: pytest.approx(v, abs=1e-6)  # noqa: E731

    def at(values):
        with torch.no_grad():
            fc.weight.copy_(torch.tensor([values]))
        sd.develop(None)
        return fc.weight.detach().reshape(-1).tolist()

    assert at([0.5, -0.2, 0.1]) == approx([0.5, -0.2, 0.1])
    assert sp("r_hi") == approx([0.5] * 3) and sp("r_lo") == approx([-0.5] * 3)

    assert at([0.7, -0.6, 0.08]) == approx([0.7, -0.6, 0.08])  # no clamp yet
    assert sp("c_hi") == [1, 0, 0] and sp("x_hi") == approx([0.2, 0, 0])
    assert sp("c_lo") == [0, 0, 0] and sp("c_shrink") == [0, 0, 0]
    assert sp("r_hi") == approx([0.5] * 3)

    assert at([0.9, -0.7, 0.05]) == approx([0.9, -0.7, 0.05])  # s = N: still no clamp
    assert sp("r_hi") == approx([0.8, 0.5, 0.5])
    assert sp("c_hi") == [0, 0, 0] and sp("x_hi") == approx([0, 0, 0])
    assert sp("c_lo") == [0, 1, 0] and sp("x_lo") == approx([0, 0.2, 0])
    assert sp("c_shrink") == [0, 0, 1]

    assert at([0.85, -0.8, 0.04]) == approx([0.8, -0.75, 0.04])  # constraint from step N + 1
    assert sp("r_hi") == approx([0.8, 0.5, 0.375])
    assert sp("r_lo") == approx([-0.5, -0.75, -0.375])
    assert sp("c_hi") == [1, 0, 0] and sp("x_hi") == approx([0.05, 0, 0])
    assert sp("c_lo") == [0, 0, 0] and sp("x_lo") == approx([0, 0, 0])
    assert sp("c_shrink") == [0, 0, 0]

    assert at([0.82, -0.74, 0.5]) == approx([0.82, -0.74, 0.375])
    assert sp("r_hi") == approx([0.835, 0.5, 0.375])
    assert sp("r_lo") == approx([-0.5, -0.75, -0.375])
    assert sp("c_hi") == [0, 0, 0] and sp("c_lo") == [0, 0, 0] and sp("c_shrink") == [0, 0, 0]
    assert sd.stats()["syn_prune_rate"] == 0.0  # a single neuron and s <= 2N: nothing pruned


def test_constrain_always_clamps_after_every_optimizer_step_from_step_n_plus_1():
    fc = nn.Linear(2, 2, bias=False)
    sd = StructuralDevelopment([LayerInfo("fc", fc, "fc")], PlasticityConfig(spine_window=1, constrain="always"), 2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.5, -0.25], [0.1, 0.2]]))
    sd.develop(None)  # s = 0: ranges +-0.5
    with torch.no_grad():
        fc.weight.fill_(0.3)  # inside the range: no growth, no shrink
    sd.develop(None)  # s = 1 = N: constraint not yet active
    with torch.no_grad():
        fc.weight.fill_(2.0)
    sd.after_optimizer_step(None)
    assert torch.all(fc.weight == 2.0)
    with torch.no_grad():
        fc.weight.fill_(0.3)
    sd.develop(None)  # s = 2 > N: from now on every optimizer step clamps
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[2.0, -3.0], [0.125, -0.6]]))
    sd.after_optimizer_step(None)
    assert fc.weight.tolist() == [[0.5, -0.5], [0.125, -0.5]]


def test_min_range_stops_a_shrink_but_never_widens_a_range():
    """Shrinkage fires for all three weights (|w| fell twice, N = 1): ranges 0.4, 0.12 and 0.05
    with shrink factor 0.75 and floor 0.1 become 0.3, 0.1 (stopped at the floor) and 0.05 (already
    inside the floor: left alone, not widened to 0.1)."""
    w = torch.tensor([0.01, 0.01, 0.01])
    st = init_spines(w)
    st["r_hi"] = torch.tensor([0.4, 0.12, 0.05])
    st["r_lo"] = -st["r_hi"]
    st["w_prev1"] = torch.full((3,), 0.02)
    st["w_prev2"] = torch.full((3,), 0.03)
    live = torch.ones(3, dtype=torch.bool)
    counts = adapt_spines(st, w, live, history=2, window=1, shrink_factor=0.75, min_range=0.1)
    assert counts["shrunk"] == 3
    assert st["r_hi"].tolist() == pytest.approx([0.3, 0.1, 0.05])
    assert st["r_lo"].tolist() == pytest.approx([-0.3, -0.1, -0.05])


def test_constrain_always_still_lets_spines_grow_by_the_clipped_excess():
    """A weight pushed up by 0.01 per optimizer step, 5 steps per interval, N = 2. With the clamp
    after every step the spine must still grow by the mean excess (5.1), the excess being what the
    clamps took off. Worked by hand: s=0 r_hi=0.55 (w 0.55); s=1 w 0.60, c=1, x=0.05; s=2 w 0.65,
    x=0.15 -> r_hi 0.625. s=3 (> N) reads w 0.70, c=1, x=0.075, and clamps w to 0.625; after every
    optimizer step from then on the clamp cuts 0.01: s=4 cut 0.05, x=0.125
    -> r_hi 0.6875; s=5 w climbs 0.625 -> 0.675 unclipped (below r_hi): reset; s=6 cut 0.0325,
    above but not at s=5: c stays 0; s=7 cut 0.05, c=1; s=8 cut 0.05, x=0.1 -> r_hi 0.7375."""
    fc = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[0.5, 0.3]]))
    sd = StructuralDevelopment([LayerInfo("fc", fc, "fc")], PlasticityConfig(spine_window=2, constrain="always"), 1)
    opt = torch.optim.SGD(fc.parameters(), lr=0.1)
    r_hi = []
    for _ in range(9):
        for _ in range(5):
            opt.zero_grad()
            fc.weight.grad = torch.tensor([[-0.1, 0.0]])
            sd.after_backward()
            opt.step()
            sd.after_optimizer_step(opt)
            if sd.step > 3:  # after step N+1: the weight never leaves its range
                assert float(fc.weight.detach()[0, 0]) <= float(sd._layers[0].spine["r_hi"][0, 0])
        sd.develop(opt)
        r_hi.append(float(sd._layers[0].spine["r_hi"][0, 0]))
        assert float(sd._layers[0].spine["cut"].abs().sum()) == 0.0  # consumed by the step
    assert r_hi == pytest.approx([0.55, 0.55, 0.625, 0.625, 0.6875, 0.6875, 0.6875, 0.6875, 0.7375], abs=1e-6)


def test_regeneration_only_revives_masked_groups_with_zero_weight_and_state():
    """FC(4 -> 5) hidden layer, N = 1 (regrow_window 1): pruning from step 3, regrowth needs a group
    to be a candidate at 3 consecutive steps (c_grow 0, 1, 2 > 1)."""
    torch.manual_seed(0)
    fc = nn.Linear(4, 5)
    out = nn.Linear(5, 2)
    layers = [LayerInfo("fc", fc, "fc"), LayerInfo("out", out, "fc", is_output=True)]
    cfg = PlasticityConfig(spine_window=1, rho_init_fc=40)
    sd = StructuralDevelopment(layers, cfg, num_outputs=2)
    opt = torch.optim.AdamW(list(fc.parameters()), lr=1e-2, weight_decay=0.1)

    def set_rows(v01, v_rest):
        with torch.no_grad():
            fc.weight[:2] = v01
            fc.weight[2:] = v_rest

    # rows 0, 1 decay twice in a row -> their spines shrink at step 2 -> lowest scores at step 3
    for s, v in enumerate([0.5, 0.4, 0.3]):
        set_rows(v, 0.5)
        sd.develop(opt)
    set_rows(0.3, 0.5)
    r = sd.develop(opt)  # s = 3: K = floor(5 * 40 / 100) = 2
    assert r["pruned"] == 2 and r["regrown"] == 0
    m = sd.masks()["fc"]
    assert m.neuron.tolist() == [False, False, True, True, True]

    # gradient signal: live groups 1, masked group (0, 2) 10, other masked groups 0.
    g = torch.ones(5, 4)
    g[:2] = 0
    g[0, 2] = 10.0
    history = []
    for s in (4, 5, 6):
        before = sd.masks()["fc"]
        opt.zero_grad()
        fc.weight.grad = g.clone()
        fc.bias.grad = torch.ones(5)
        sd.after_backward()
        assert torch.all(fc.weight.grad[~before.group] == 0)  # masked entries never move
        assert torch.all(fc.bias.grad[~before.neuron] == 0)
        opt.step()
        sd.after_optimizer_step(opt)
        r = sd.develop(opt)
        history.append(r["regrown"])
        after = sd.masks()["fc"]
        # only previously masked groups can become live, and only the one with a strong signal
        newly_live = after.group & ~before.group
        assert int(newly_live.sum()) == r["regrown"]
        if r["regrown"]:
            assert newly_live.nonzero().tolist() == [[0, 2]]
        if s < 6:
            assert r["regrown"] == 0
    assert history == [0, 0, 1]  # candidate at 4 (c=0), 5 (c=1), 6 (c=2 > 1): regrown at 6
    assert r["revived"] == 1
    after = sd.masks()["fc"]
    assert bool(after.group[0, 2]) and int(after.group[0].sum()) == 1
    assert bool(after.neuron[0])  # the pruned neuron came back to life
    assert fc.weight[0, 2].item() == 0.0  # starts at exactly 0
    assert fc.bias[0].item() == 0.0
    st = opt.state[fc.weight]
    assert st["exp_avg"][0, 2].item() == 0.0 and st["exp_avg_sq"][0, 2].item() == 0.0
    assert opt.state[fc.bias]["exp_avg"][0].item() == 0.0
    # the revival lowers the cumulative target by one neuron: the revived neuron is not re-pruned
    # and no healthy neuron is pruned in its place
    assert r["pruned"] == 0
    assert int((~after.neuron).sum()) == 1
    assert after.neuron.tolist() == [True, False, True, True, True]


def test_update_regrowth_counter_rules():
    group = torch.tensor([[True, False, False, False]])
    g = torch.tensor([[5.0, 4.0, 0.0, 3.0]])
    c = torch.tensor([[0, 0, 0, 1]], dtype=torch.int32)
    prev = torch.tensor([[False, True, True, False]])
    # 25th percentile of [0, 3, 4, 5] = 0 + 0.75 * 3 = 2.25: candidates: masked and g > 2.25 -> cols 1, 3
    regrow, c2, cand = update_regrowth(g, group, c, prev, 25.0, regrow_window=0)
    assert cand.tolist() == [[False, True, False, True]]
    # col 1: candidate now and before -> c = 1 > 0 -> regrow and reset; col 3: not before -> reset to 0
    assert c2.tolist() == [[0, 0, 0, 0]]
    assert regrow.tolist() == [[False, True, False, False]]


def test_percentile_matches_torch_quantile():
    x = torch.randn(7, 13, generator=torch.Generator().manual_seed(0))
    for p in (0, 12.5, 60, 61.1, 99, 100):
        assert percentile(x, p).item() == pytest.approx(torch.quantile(x.flatten(), p / 100).item(), abs=1e-5)


def test_schedules_match_formulas():
    n = 3  # 2N + 1 = 7
    assert regrow_percentile(7, n, 60, 1.1, 99) == pytest.approx(61.0)
    assert regrow_percentile(9, n, 65, 1.1, 99) == pytest.approx(65 + 1.21)
    assert regrow_percentile(7 + 40, n, 60, 1.1, 99) == 99.0  # 60 + 1.1**40 = 105.3 -> capped
    assert regrow_percentile(10**6, n, 60, 1.1, 99) == 99.0  # no overflow
    assert trophic_alpha(7, n, 1.0, 5.0, 0.0) == pytest.approx(1.0)
    assert trophic_alpha(12, n, 1.0, 5.0, 0.0) == pytest.approx(math.exp(-1))
    assert trophic_alpha(8, n, 0.5, 1.0, 0.0005) == pytest.approx(0.5 * math.exp(-1))
    assert trophic_alpha(30, n, 0.5, 1.0, 0.0005) == 0.0005  # floor


def test_trophic_update_uses_surviving_over_next_layer():
    """fc1 (4 -> 10) -> fc2 (10 -> 6) -> out (6 -> 3), N = 1, rho 20 %: at step 3 K1 = 2, K2 = 1, so
    S1 = 8, S2 = 5, S_next(fc2) = 3 outputs; alpha(3) = 0.5:
    rho1 = 20 + 0.5 * 8 / 5 = 20.8, rho2 = 20 + 0.5 * 5 / 3."""
    torch.manual_seed(0)
    f1, f2, out = nn.Linear(4, 10), nn.Linear(10, 6), nn.Linear(6, 3)
    layers = [LayerInfo("fc1", f1, "fc"), LayerInfo("fc2", f2, "fc"), LayerInfo("out", out, "fc", is_output=True)]
    sd = StructuralDevelopment(layers, PlasticityConfig(spine_window=1, rho_init_fc=20), num_outputs=3)
    for _ in range(3):
        sd.develop(None)
    assert sd.rho() == {"fc1": 20.0, "fc2": 20.0}  # no trophic update before step 2N + 1
    r = sd.develop(None)
    assert r["pruned"] == 3
    assert sd.rho()["fc1"] == pytest.approx(20.8)
    assert sd.rho()["fc2"] == pytest.approx(20 + 0.5 * 5 / 3)
    st = sd.stats()
    assert st["rho/fc1"] == pytest.approx(20.8) and st["neuron_prune_rate"] == pytest.approx(3 / 16)
    sd.develop(None)  # s = 4: alpha = 0.5 / e, K1 = floor(10 * 0.208) = 2 again
    assert sd.rho()["fc1"] == pytest.approx(20.8 + 0.5 * math.exp(-1) * 8 / 5)


def test_surviving_neurons_counts_live_weight_fraction():
    # conv layer, in = 4, k = 3x3: fan_in = 36 weights; min_live_fraction 0.25 -> >= 9 live weights (1 kernel)
    group = torch.tensor([[True, True, False, False], [True, False, False, False], [False] * 4, [True] * 4])
    neuron = torch.tensor([True, True, False, True])
    assert surviving_neurons(group, neuron, 9, 0.25) == 3
    assert surviving_neurons(group, neuron, 9, 0.5) == 2  # >= 18 weights: rows 0 and 3
    assert surviving_neurons(group, neuron, 9, 0.0) == 3  # a pruned neuron never survives


def test_rho_never_exceeds_cap():
    torch.manual_seed(0)
    f1, f2, out = nn.Linear(5, 20), nn.Linear(20, 7), nn.Linear(7, 2)
    layers = [LayerInfo("fc1", f1, "fc"), LayerInfo("fc2", f2, "fc"), LayerInfo("out", out, "fc", is_output=True)]
    cfg = PlasticityConfig(spine_window=1, rho_init_fc=25, rho_max=60, trophic_a_fc=50, trophic_floor_fc=5)
    sd = StructuralDevelopment(layers, cfg, num_outputs=2)
    reached = False
    for _ in range(30):
        sd.develop(None)
        for name, rho in sd.rho().items():
            assert rho <= 60.0
            c = 20 if name == "fc1" else 7
            assert int((~sd.masks()[name].neuron).sum()) <= math.floor(c * 60 / 100)
        reached = reached or all(v == 60.0 for v in sd.rho().values())
    assert reached
    assert int((~sd.masks()["fc1"].neuron).sum()) == 12 and int((~sd.masks()["fc2"].neuron).sum()) == 4


def test_select_pruned_counts_pruned_neurons_first_and_respects_protection():
    scores = torch.tensor([0.0, 3.0, 0.0, 1.0, 5.0])
    alive = torch.tensor([True, True, False, True, True])
    # K = 2: the pruned neuron 2 is ranked first even though neuron 0 ties at 0 -> only neuron 0 is new
    assert select_pruned(scores, alive, 2).tolist() == [True, False, False, False, False]
    # protecting neuron 0: next lowest alive is neuron 3
    prot = torch.tensor([True, False, False, False, False])
    assert select_pruned(scores, alive, 2, protect=prot).tolist() == [False, False, False, True, False]


def test_spine_size_normalisation():
    r_hi = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    r_lo = -torch.tensor([[1.0, 1.0], [1.0, 9.0]])
    live = torch.tensor([[True, True], [True, False]])
    # z = [2, 3, 4, (18 masked)] -> live min 2, max 4 -> [0, 0.5, 1, 0]
    assert spine_size(r_hi, r_lo, live).tolist() == [[0.0, 0.5], [1.0, 0.0]]
    # all live equal -> 0.5
    assert spine_size(torch.ones(2, 2), -torch.ones(2, 2), live).tolist() == [[0.5, 0.5], [0.5, 0.0]]


def test_reset_optimizer_state_zeroes_selected_entries():
    p = nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(2, 3)
    opt.step()
    where = torch.tensor([[True, False, True], [False, False, False]])
    reset_optimizer_state(opt, p, where)
    st = opt.state[p]
    assert torch.all(st["exp_avg"][where] == 0) and torch.all(st["exp_avg"][~where] != 0)
    assert torch.all(st["exp_avg_sq"][where] == 0) and torch.all(st["exp_avg_sq"][~where] != 0)
    q = nn.Parameter(torch.ones(2))
    reset_optimizer_state(opt, q, torch.tensor([True, False]))  # no state yet: nothing to do


def test_state_dict_round_trip_reproduces_development():
    def make():
        layers, mods, forward = _conv_net(seed=5)
        cfg = PlasticityConfig(spine_window=1, rho_init_conv=30, rho_init_fc=20)
        sd = StructuralDevelopment(layers, cfg, num_outputs=3)
        opt = torch.optim.AdamW(mods.parameters(), lr=1e-2, weight_decay=0.05)
        return layers, mods, forward, sd, opt

    layers, mods, forward, sd, opt = make()
    gen = torch.Generator().manual_seed(7)
    for _ in range(4):
        _train_steps(sd, mods, forward, opt, 3, gen)
        sd.develop(opt)
    _train_steps(sd, mods, forward, opt, 2, gen)  # mid-interval: regrowth signal pending
    buf = io.BytesIO()
    torch.save({"dev": sd.state_dict(), "model": mods.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    gen_state = gen.get_state()

    layers2, mods2, forward2, sd2, opt2 = make()
    mods2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    sd2.load_state_dict(ck["dev"])
    gen2 = torch.Generator()
    gen2.set_state(gen_state)

    for _ in range(4):
        _train_steps(sd, mods, forward, opt, 3, gen)
        r1 = sd.develop(opt)
        _train_steps(sd2, mods2, forward2, opt2, 3, gen2)
        r2 = sd2.develop(opt2)
        assert r1 == r2
    assert sd.stats() == sd2.stats()
    for a, b in zip(mods.parameters(), mods2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = sd.state_dict(), sd2.state_dict()
    for name in s1["layers"]:
        for k, v in s1["layers"][name].items():
            v2 = s2["layers"][name][k]
            assert torch.equal(v, v2) if torch.is_tensor(v) else v == v2, (name, k)


def test_prune_output_layer_develops_output_weights_but_keeps_its_neurons():
    torch.manual_seed(0)
    f1, out = nn.Linear(4, 10), nn.Linear(10, 3)
    layers = [LayerInfo("fc1", f1, "fc"), LayerInfo("out", out, "fc", is_output=True)]
    cfg = PlasticityConfig(spine_window=1, rho_init_fc=50, prune_output_layer=True)
    sd = StructuralDevelopment(layers, cfg, num_outputs=3)
    for _ in range(3):
        sd.develop(None)
    with torch.no_grad():
        out.weight.fill_(5.0)  # far outside its spine: clamped from step N + 1 on
    sd.develop(None)  # s = 3: prunes 5 of fc1's neurons
    assert torch.all(out.weight <= sd.state_dict()["layers"]["out"]["r_hi"])
    m = sd.masks()
    assert m["out"].neuron.all() and int((~m["fc1"].neuron).sum()) == 5
    st = sd.stats()
    assert "syn_prune/out" in st and "rho/out" not in st and "neuron_prune/out" not in st
    # fc1: 5 pruned rows of 4 weights; out: the 5 columns of 3 weights reading from them
    assert st["syn_prune_rate"] == pytest.approx((5 * 4 + 5 * 3) / (40 + 30))
    assert st["syn_prune/out"] == pytest.approx(0.5)


# ---------------------------------------------------------------- effective synaptic pruning rate
def test_syn_prune_rate_counts_weights_from_pruned_neurons_as_dead():
    """conv1 (1 -> 2 ch, 3x3 on 4x4 -> 2x2) -> fc1 (8 -> 3) -> out (3 -> 2), masks set by hand.

    conv1 channel 1 pruned: conv1 keeps 9 of 18 weights (rate 1/2). fc1 reads the flattened
    [2, 2, 2] map, so channel 1 feeds columns 4..7: 3 * 4 = 12 weights dead; fc1 neuron 0 pruned
    masks its row (8 weights, 4 of them already dead): live 24 - 12 - 4 = 8 (rate 16/24).
    Overall: 1 - (9 + 8) / (18 + 24) = 25/42. With prune_output_layer, out loses the column of
    fc1 neuron 0: 2 of 6 weights, and the overall rate is 1 - (9 + 8 + 4) / 48 = 27/48.
    """
    for prune_out in (False, True):
        torch.manual_seed(0)
        conv, fc, out = nn.Conv2d(1, 2, 3), nn.Linear(8, 3), nn.Linear(3, 2)
        layers = [
            LayerInfo("conv1", conv, "conv", spiking_input=False),
            LayerInfo("fc1", fc, "fc"),
            LayerInfo("out", out, "fc", is_output=True),
        ]
        sd = StructuralDevelopment(layers, PlasticityConfig(prune_output_layer=prune_out), num_outputs=2)
        assert sd.stats()["syn_prune_rate"] == 0.0
        state = sd.state_dict()
        c, f = state["layers"]["conv1"], state["layers"]["fc1"]
        c["neuron"][1] = False
        c["group"][1] = False
        f["neuron"][0] = False
        f["group"][0] = False
        sd.load_state_dict(state)
        st = sd.stats()
        assert st["syn_prune/conv1"] == pytest.approx(0.5)
        assert st["syn_prune/fc1"] == pytest.approx(16 / 24)
        assert st["neuron_prune_rate"] == pytest.approx(2 / 5)
        if prune_out:
            assert st["syn_prune/out"] == pytest.approx(2 / 6)
            assert st["syn_prune_rate"] == pytest.approx(27 / 48)
        else:
            assert "syn_prune/out" not in st
            assert st["syn_prune_rate"] == pytest.approx(25 / 42)
        # the masks themselves are unchanged: only the pruned neurons' own groups are masked
        m = sd.masks()
        assert int(m["fc1"].group.sum()) == 16 and bool(m["fc1"].group[1:, 4:].all())
        assert bool(m["out"].group.all())


# ---------------------------------------------------------------- regrowth signal behind BatchNorm
def _prune_one_behind_bn(layer: nn.Module, norm: nn.Module, kind: str, x_fn, loss_fn, opt_params):
    """Develop steps 0..3 with N = 1 and rho 25 % on a 4-neuron layer behind BN: one neuron pruned
    at step 3, so the regrowth signal (and the BN-bypass probe) is on from step 4."""
    out = nn.Linear(4, 2)
    layers = [LayerInfo("l1", layer, kind, norm, spiking_input=False), LayerInfo("out", out, "fc", is_output=True)]
    cfg = PlasticityConfig(spine_window=1, rho_init_conv=25, rho_init_fc=25, regrow_window=1000)
    sd = StructuralDevelopment(layers, cfg, num_outputs=2)
    opt = torch.optim.SGD(opt_params, lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        for _ in range(2):
            x = x_fn(gen)
            opt.zero_grad()
            loss_fn(norm(layer(x))).backward()
            sd.after_backward()
            opt.step()
            sd.after_optimizer_step(opt)
        sd.develop(opt)
    dead = ~sd.masks()["l1"].neuron
    assert int(dead.sum()) == 1
    return sd, dead


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_regrowth_signal_behind_batchnorm_matches_identity_bn_autograd(kind):
    """After pruning, the signal of the pruned neuron's groups is the weight gradient with that
    channel's BN replaced by the identity (autograd on the same layer), and nonzero; live rows keep
    their ordinary gradient."""
    torch.manual_seed(1)
    if kind == "conv":
        layer, norm = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4)

        def x_fn(gen):
            return torch.randn(6, 3, 7, 7, generator=gen)

        def fwd(w, x, norm_fn):
            return norm_fn(F.conv2d(x, w, None, stride=2, padding=1))
    else:
        layer, norm = nn.Linear(6, 4, bias=False), nn.BatchNorm1d(4)

        def x_fn(gen):
            return torch.randn(10, 6, generator=gen)

        def fwd(w, x, norm_fn):
            return norm_fn(F.linear(x, w))

    target = torch.randn(4, generator=torch.Generator().manual_seed(9))

    def loss_fn(y):  # nonlinear, like a spiking neuron's surrogate: nonzero gradient at y = 0
        t = target.reshape((1, 4) + (1,) * (y.dim() - 2))
        return (torch.tanh(y + 0.3) * t).sum()

    sd, dead = _prune_one_behind_bn(layer, norm, kind, x_fn, loss_fn, list(layer.parameters()) + list(norm.parameters()))
    assert torch.all(layer.weight.detach()[dead] == 0) and torch.all(norm.weight.detach()[dead] == 0)

    x = x_fn(torch.Generator().manual_seed(11)).requires_grad_(True)
    layer.zero_grad()
    loss_fn(norm(layer(x))).backward()
    seen = layer.weight.grad.clone()
    sd.after_backward()
    acc = sd.state_dict()["layers"]["l1"]["grad_acc"]
    assert torch.all(layer.weight.grad[dead] == 0)  # masked entries still never move

    # autograd reference: the same layer, BN acting as the identity for the pruned channel only
    dmask = dead.reshape((1, 4) + (1,) * (x.dim() - 2))

    def bn_fn(z):
        return F.batch_norm(z, None, None, norm.weight.detach(), norm.bias.detach(), training=True, eps=norm.eps)

    def identity_for_dead(z):
        return torch.where(dmask, z, bn_fn(z))

    w = layer.weight.detach().clone().requires_grad_(True)
    loss_fn(fwd(w, x.detach(), identity_for_dead)).backward()
    ref = w.grad
    assert float(ref[dead].abs().sum()) > 0
    torch.testing.assert_close(acc[dead], ref[dead], rtol=1e-5, atol=1e-6)
    # live rows and the gradient sent upstream are those of the unmodified network
    w0 = layer.weight.detach().clone().requires_grad_(True)
    x0 = x.detach().clone().requires_grad_(True)
    loss_fn(fwd(w0, x0, bn_fn)).backward()
    assert torch.all(w0.grad[dead] == 0)  # what the BN with weight 0 lets through
    torch.testing.assert_close(acc[~dead], w0.grad[~dead])
    torch.testing.assert_close(seen[~dead], w0.grad[~dead])
    torch.testing.assert_close(x.grad, x0.grad)


def test_probe_only_while_accumulating_and_with_pruned_neurons():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
    out = nn.Linear(4, 2)
    layers = [LayerInfo("c", conv, "conv", bn, spiking_input=False), LayerInfo("out", out, "fc", is_output=True)]
    sd = StructuralDevelopment(layers, PlasticityConfig(spine_window=1, rho_init_conv=25), num_outputs=2)
    for _ in range(3):
        sd.develop(None)
        assert not bn._forward_hooks  # nothing pruned yet
    sd.develop(None)  # s = 3 prunes one channel
    assert len(bn._forward_hooks) == 1
    sd.develop(None)  # same pruned set: the same hooks stay
    assert len(bn._forward_hooks) == 1
    state = sd.state_dict()
    sd.remove_hooks()
    assert not bn._forward_hooks
    sd.load_state_dict(state)  # restored structure re-installs them
    assert len(bn._forward_hooks) == 1


def test_static_input_first_layer_signal_is_summed_over_time():
    """A SpikingNet (convnet + BN + LIF, static input: conv1 runs once on x[0] and is broadcast
    over T). The signal of a pruned conv1 channel equals autograd on a twin network whose conv1 BN
    is the identity for that channel."""
    from sdsnn.config import ModelConfig
    from sdsnn.models import build_model

    mcfg = ModelConfig(name="convnet", depth=1, width=4, fc_width=0, batch_norm=True)

    def make():
        torch.manual_seed(4)
        return build_model(mcfg, (1, 6, 6), 3, static_input=True)

    net = make()
    layers = net.prunable_layers()
    sd = StructuralDevelopment(layers, PlasticityConfig(spine_window=1), num_outputs=3)
    state = sd.state_dict()
    state["step"] = 3  # signal phase (s > 2N) with channel 2 pruned
    state["layers"]["conv1"]["neuron"][2] = False
    state["layers"]["conv1"]["group"][2] = False
    sd.load_state_dict(state)
    from sdsnn.structure import apply_masks

    apply_masks(layers, sd.masks())
    twin = make()
    twin.load_state_dict(net.state_dict())
    dead = ~sd.masks()["conv1"].neuron
    bn = twin.blocks[0].norm

    class IdentityFor(nn.Module):
        def forward(self, z):
            return torch.where(dead.reshape(1, -1, 1, 1), z, bn(z))

    twin.blocks[0].norm = IdentityFor()
    x = (torch.rand(1, 5, 1, 6, 6, generator=torch.Generator().manual_seed(0)) * 3).expand(4, 5, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    for model in (net, twin):
        model.train()
        F.cross_entropy(model(x) * 4, y).backward()
        model.reset()
    sd.after_backward()
    acc = sd.state_dict()["layers"]["conv1"]["grad_acc"]
    ref = twin.blocks[0].layer.weight.grad
    assert float(ref[dead].abs().sum()) > 0
    torch.testing.assert_close(acc[dead], ref[dead], rtol=1e-4, atol=1e-7)


def test_regrowth_revives_a_neuron_behind_batchnorm():
    """An mlp with BatchNorm (LIF neurons) trained with development: neurons pruned behind BN get
    a regrowth signal, so regeneration brings some back (impossible when the BN blocks it)."""
    from sdsnn.config import ModelConfig
    from sdsnn.models import build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(name="mlp", depth=1, width=16, batch_norm=True), (1, 4, 4), 3)
    layers = net.prunable_layers()
    assert layers[0].norm is not None
    cfg = PlasticityConfig(spine_window=1, regrow_window=1, rho_init_fc=25, regrow_p0_fc=0.0, regrow_p_max=50.0)
    sd = StructuralDevelopment(layers, cfg, num_outputs=3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    protos = torch.rand(3, 1, 4, 4, generator=gen)
    revived = 0
    for _ in range(8):
        for _ in range(4):
            y = torch.randint(0, 3, (16,), generator=gen)
            x = (torch.rand(4, 16, 1, 4, 4, generator=gen) < protos[y] * 0.8).float()
            opt.zero_grad()
            F.cross_entropy(net(x) * 4, y).backward()
            net.reset()
            sd.after_backward()
            opt.step()
            sd.after_optimizer_step(opt)
        revived += sd.develop(opt)["revived"]
    assert revived >= 1
    m = sd.masks()["fc1"]
    bnw = layers[0].norm.weight.detach()
    assert torch.all(bnw[~m.neuron] == 0)  # still-pruned neurons stay silenced



def test_revived_neuron_behind_batchnorm_starts_fresh():
    """The scenario of the regeneration test with BN after the layer: while pruned, the neuron's
    BN scale and shift are 0 (its output is exactly 0); when a group regrows it comes back with
    BN weight 1, bias 0 and running statistics (0, 1), whatever they were before."""
    torch.manual_seed(0)
    fc, bn, out = nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)
    layers = [LayerInfo("fc", fc, "fc", norm=bn), LayerInfo("out", out, "fc", is_output=True)]
    sd = StructuralDevelopment(layers, PlasticityConfig(spine_window=1, rho_init_fc=40), num_outputs=2)
    opt = torch.optim.AdamW(list(fc.parameters()) + list(bn.parameters()), lr=1e-2)
    for v in (0.5, 0.4, 0.3, 0.3):  # rows 0, 1 decay -> pruned at step 3
        with torch.no_grad():
            fc.weight[:2], fc.weight[2:] = v, 0.5
        sd.develop(opt)
    assert sd.masks()["fc"].neuron.tolist() == [False, False, True, True, True]
    assert bn.weight[0].item() == 0.0 and bn.bias[0].item() == 0.0
    with torch.no_grad():
        bn.running_mean[0], bn.running_var[0] = 3.0, 7.0  # stale statistics of the pruned neuron
    g = torch.ones(5, 4)
    g[:2] = 0
    g[0, 2] = 10.0
    revived = 0
    for _ in range(3):
        opt.zero_grad()
        fc.weight.grad = g.clone()
        bn.weight.grad, bn.bias.grad = torch.ones(5), torch.ones(5)  # live neurons' BN trains
        sd.after_backward()
        opt.step()
        sd.after_optimizer_step(opt)
        revived += sd.develop(opt)["revived"]
    assert revived == 1 and sd.masks()["fc"].neuron.tolist() == [True, False, True, True, True]
    assert bn.weight[0].item() == 1.0 and bn.bias[0].item() == 0.0
    assert bn.running_mean[0].item() == 0.0 and bn.running_var[0].item() == 1.0
    assert bn.weight[1].item() == 0.0 and bn.bias[1].item() == 0.0  # the other one stays pruned
    for p in (bn.weight, bn.bias):
        st = opt.state[p]
        assert st["exp_avg"][0].item() == 0.0 and st["exp_avg_sq"][0].item() == 0.0  # fresh state
        assert st["exp_avg"][2].item() != 0.0  # a live neuron's state is kept


def test_reference_preset_has_the_published_constants():
    """The numbers of sd-snn.md sections 2, 5, 7, 8, 9 and 12, typed in from the document (not
    read back from the code's own table)."""
    from sdsnn.config import REFERENCE_PLASTICITY

    ref = PlasticityConfig(**REFERENCE_PLASTICITY)
    assert (ref.develop_every, ref.spine_window, ref.shrink_factor) == ("epoch", 18, 0.75)
    assert (ref.regrow_p0_fc, ref.regrow_p0_conv, ref.regrow_b, ref.regrow_p_max) == (60, 65, 1.1, 99)
    assert ref.effective_regrow_window == 18
    assert (ref.rho_init_conv, ref.rho_init_fc, ref.rho_max) == (0.5, 2.0, 95)
    assert (ref.trophic_a_conv, ref.trophic_tau_conv, ref.trophic_floor_conv) == (1.0, 5, 0)
    assert (ref.trophic_a_fc, ref.trophic_tau_fc, ref.trophic_floor_fc) == (0.5, 1, 0.0005)
    assert ref.min_live_fraction == 0.01 and ref.min_range == 0 and ref.prune_output_layer is False


def test_reference_preset_fills_what_the_given_plasticity_leaves_unset():
    """Fields given explicitly win over the preset, as a dict or as a PlasticityConfig object (an
    object's defaults used to override the whole preset: spine_window 3 instead of 18)."""
    from sdsnn.config import ExperimentConfig

    for given in ({"constrain": "always"}, PlasticityConfig(constrain="always")):
        cfg = ExperimentConfig(preset="reference", plasticity=given)
        assert cfg.plasticity.constrain == "always"
        assert (cfg.plasticity.spine_window, cfg.plasticity.develop_every, cfg.plasticity.regrow_p0_conv) == (18, "epoch", 65)
    assert ExperimentConfig(preset="reference", plasticity=PlasticityConfig(spine_window=5)).plasticity.spine_window == 5

"""Compaction preserves the masked network's spikes and predictions; export round-trips without pickle."""

import copy
import json

import pytest
import torch

from sdsnn import build_model, load_model
from sdsnn.compact import compact, count_parameters, save_model
from sdsnn.config import ModelConfig
from sdsnn.errors import UserError
from sdsnn.structure import LayerMask, apply_masks


def _random_masks(model, gen, p_group=0.7, p_neuron=0.5):
    masks = {}
    for li in model.prunable_layers():
        out, inn = li.weight.shape[:2]
        neuron = torch.rand(out, generator=gen) < p_neuron
        if li.is_output:
            neuron[:] = True
        # as in sd-snn.md section 8: a pruned neuron's input groups are masked too
        group = (torch.rand(out, inn, generator=gen) < p_group) & neuron.reshape(-1, 1)
        masks[li.name] = LayerMask(group, neuron)
    return masks


def _warm_bn(model, x):
    """Scale weights up and give BatchNorm running statistics, so the untrained net is active."""
    model.train()
    with torch.no_grad():
        for li in model.prunable_layers():
            li.weight.mul_(3.0)
        for _ in range(3):
            model(x)
            model.reset()


def _spikes(model, x):
    """Output spikes of every block's neuron layer (before pooling) and the output rates."""
    rec = {}
    hooks = [b.neuron.register_forward_hook(lambda m, i, o, n=b.spec.name: rec.__setitem__(n, o.detach()))
             for b in model.blocks]
    with torch.no_grad():
        rates = model(x)
    model.reset()
    for h in hooks:
        h.remove()
    return rec, rates


CASES = {
    "convnet": (dict(depth=3, width=8, fc_width=16, pool_every=2, neuron="plif", v_threshold=0.25), (1, 12, 12), True),
    "mlp": (dict(depth=2, width=24, v_threshold=0.25), (1, 6, 6), True),
    "dvs_convnet": (dict(depth=2, width=6, fc_width=0, v_threshold=0.25), (2, 8, 8), False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_compaction_preserves_spikes_and_predictions(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    kw, shape, static = CASES[name]
    model = build_model(ModelConfig(name=name, **kw), shape, 5, static_input=static,
                        spiking_input_first=not static)
    if static:
        x = (torch.rand(1, 32, *shape) * 2).expand(4, -1, -1, -1, -1)
    else:
        x = (torch.rand(4, 32, *shape) < 0.4).float()
    _warm_bn(model, x)
    masks = _random_masks(model, gen)
    masked = copy.deepcopy(model)
    apply_masks(masked.prunable_layers(), masks)
    small = compact(model, masks)  # compact applies the masks itself; model stays untouched
    masked.eval()
    small.eval()
    assert small.widths == [int(masks[li.name].neuron.sum()) for li in model.prunable_layers()[:-1]]
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert count_parameters(model, masks) == {
        "compact": sum(p.numel() for p in small.parameters()),
        "dense": sum(p.numel() for p in model.parameters()),
    }

    s_masked, r_masked = _spikes(masked, x)
    s_small, r_small = _spikes(small, x)
    # Spikes must be identical. Membrane potentials may differ in the last float bits only: the
    # removed inputs contribute exact zeros, but a shorter reduction is summed in another order.
    active_layers = 0
    for li in model.prunable_layers():
        keep = masks[li.name].neuron.nonzero().flatten()
        a, b = s_masked[li.name], s_small[li.name]
        assert torch.equal(a.index_select(2, keep), b), li.name
        dead = (~masks[li.name].neuron).nonzero().flatten()
        assert a.index_select(2, dead).sum() == 0  # pruned neurons never spike
        active_layers += int(b.sum() > 0)
    assert active_layers >= len(masks) - 1  # the comparison is not between silent networks
    assert torch.equal(r_masked, r_small)
    assert torch.equal(r_masked.argmax(1), r_small.argmax(1))


def test_layer_with_every_neuron_pruned_stays_silent():
    torch.manual_seed(2)
    model = build_model(ModelConfig(name="mlp", depth=2, width=6), (1, 3, 3), 3)
    masks = {li.name: LayerMask(torch.ones(li.weight.shape[:2], dtype=torch.bool),
                                torch.ones(li.num_neurons, dtype=torch.bool)) for li in model.prunable_layers()}
    masks["fc2"].neuron[:] = False
    small = compact(model, masks).eval()
    assert small.widths == [6, 1]
    s, rates = _spikes(small, torch.rand(4, 8, 1, 3, 3) * 3)
    assert s["fc2"].sum() == 0 and rates.sum() == 0  # nothing reaches the output


def test_save_and_load_round_trip_without_pickle(tmp_path):
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    kw, shape, _ = CASES["convnet"]
    model = build_model(ModelConfig(name="convnet", **kw), shape, 5, static_input=True)
    x = torch.rand(1, 8, *shape).expand(3, -1, -1, -1, -1) * 2
    _warm_bn(model, x)
    masks = _random_masks(model, gen)
    out = save_model(model, tmp_path / "export", {"val_acc": 0.5}, masks=masks)
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    doc = json.loads((out / "model.json").read_text())
    assert doc["architecture"]["family"] == "convnet" and doc["meta"] == {"val_acc": 0.5}
    assert (out / "model.safetensors").read_bytes()[:8] != b"\x80\x02\x8a\n"  # not a pickle

    loaded = load_model(out)
    assert not loaded.training and loaded.meta == {"val_acc": 0.5}
    small = compact(model, masks).eval()
    assert loaded.widths == small.widths
    with torch.no_grad():
        a = loaded(x)
        loaded.reset()
        b = small(x)
    assert torch.equal(a, b)
    assert load_model(out / "model.json").widths == small.widths


def test_saved_masks_reproduce_the_masked_networks_operation_counts(tmp_path):
    """The saved folder alone gives the masked network's SOPs, MACs and energy: the masked groups
    of kept neurons are stored (their weights are zero, but a weight that is zero is not a mask)
    and ``load_model(...).masks`` hands them back; a model saved without masks has none."""
    from sdsnn import count_operations
    from sdsnn.compact import compact_with_masks

    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    kw, shape, _ = CASES["convnet"]
    model = build_model(ModelConfig(name="convnet", **kw), shape, 5, static_input=True)
    x = torch.rand(1, 8, *shape).expand(3, -1, -1, -1, -1) * 2
    _warm_bn(model, x)
    model.eval()
    masks = _random_masks(model, gen)
    apply_masks(model.prunable_layers(), masks)
    batches = [torch.rand(1, 8, *shape).expand(3, -1, -1, -1, -1) * 2 for _ in range(2)]
    ref = count_operations(model, masks, batches)
    loaded = load_model(save_model(model, tmp_path / "m", masks=masks))
    assert set(loaded.masks) == {li.name for li in loaded.prunable_layers()}
    assert all(m.neuron.all() for m in loaded.masks.values())
    # some kept neurons keep masked groups (else this test would not test anything), all zero
    assert any(not m.group.all() for m in loaded.masks.values())
    for li in loaded.prunable_layers():
        from sdsnn.structure import expand_group_mask
        assert not li.weight[~expand_group_mask(loaded.masks[li.name].group, li.weight)].any()
    got = count_operations(loaded, loaded.masks, batches)
    assert got.sops == pytest.approx(ref.sops, rel=1e-6) and got.macs == pytest.approx(ref.macs, rel=1e-6)
    assert got.energy_pj == pytest.approx(ref.energy_pj, rel=1e-6)
    # without the masks the zero weights of masked groups count as live connections
    assert count_operations(loaded, None, batches).macs > ref.macs
    _, small_masks = compact_with_masks(model, masks)
    assert all(torch.equal(small_masks[k].group, loaded.masks[k].group) for k in small_masks)
    assert load_model(save_model(model, tmp_path / "plain")).masks is None


def test_load_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no saved model"):
        load_model(tmp_path)
    model = build_model(ModelConfig(name="mlp", depth=1, width=4), (1, 2, 2), 2)
    save_model(model, tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text('{"format": "other"}')
    with pytest.raises(UserError, match="not a valid sdsnn model") as e:
        load_model(tmp_path / "m")
    assert "\n" not in str(e.value)


def test_package_level_compact_works_whichever_import_came_first():
    import sdsnn
    import sdsnn.compact as mod  # makes the package attribute the module

    model = build_model(ModelConfig(name="mlp", depth=1, width=4), (1, 2, 2), 2)
    masks = {li.name: LayerMask(torch.ones(li.weight.shape[:2], dtype=torch.bool),
                                torch.tensor([True] * li.num_neurons)) for li in model.prunable_layers()}
    masks["fc1"].neuron[1:] = False
    for fn in (sdsnn.compact, mod.compact):
        assert fn(model, masks).widths == [1]

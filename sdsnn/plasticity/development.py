"""The SD-SNN structural development process and its training-loop hooks.

:class:`StructuralDevelopment` owns the structural state of a network (masks, spines, regrowth
counters, neuron pruning rates) and applies docs/sd-snn.md sections 4-10 to its layers:

    loss.backward()
    dev.after_backward()              # regrowth signal += grad; grads of masked entries -> 0
    optimizer.step()
    dev.after_optimizer_step(opt)     # hard masks (+ spine clamp when constrain: always)
    ...
    dev.develop(opt)                  # once per development interval (epoch or K steps)

A development step ``s`` (counted here, from 0) runs, in order: spine initialisation (s = 0) or
adaptation (s >= 1), the synaptic constraint (s > N), regeneration (s > 2N), neuronal pruning
(s > 2N) and the neurotrophic rate update (s > 2N). Every rule is a few tensor passes over a
layer's weights; the only Python loop is over layers.

Interpretations where docs/sd-snn.md leaves a choice (each is documented at its rule):

- the weight history used by shrinkage holds the weights as each step left them (after the
  constraint and the masks); the "at the previous step" test of spine growth uses a flag stored
  at that step (``w >= r_hi`` then, against the range of then);
- masked synapses have no spine dynamics (their counters stay 0, their ranges are frozen);
- a neuron revived by regeneration lowers its layer's cumulative target: ``rho -= 100 / C`` per
  revived neuron, so that K = floor(C * rho / 100) neither re-prunes it at once (which would
  undo every revival) nor prunes a healthy neuron in its place (which would let regeneration
  swap healthy neurons for sparse revived ones, step after step, until a layer is hollowed
  out; seen on MNIST before this rule). It also cannot be selected by the pruning of the same
  step. Revived neurons restart with bias 0, BatchNorm weight 1, bias 0 and running statistics
  (0, 1);
- pruned neurons rank below every alive neuron (not just "score 0"), so ties at 0 never let an
  alive neuron take a pruned neuron's place in the K lowest;
- the regrowth signal is only accumulated from step 2N + 1 on (it is reset at every step and
  not read before);
- behind a BatchNorm, a pruned neuron's zeroed BN weight blocks the gradient to its input
  weights. For such neurons the signal is the gradient their weights would get with the neuron
  alive and its BN acting as the identity (scale 1, shift 0): the gradient at the BN output
  (the spiking neuron's input) times the layer's input
  (:class:`~sdsnn.plasticity.regeneration.NormBypassProbe`). Hooks for it exist only on BN
  layers with pruned neurons during the regeneration phase, and cost work proportional to the
  pruned channels (no extra convolution: the ordinary backward computes it);
- the synaptic pruning rate counts a weight as live only when its group is live and its source
  neuron (previous layer) is alive; see :meth:`StructuralDevelopment.stats`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from ..config import PlasticityConfig
from ..errors import ConfigError
from ..structure import LayerInfo, LayerMask, expand_group_mask
from .pruning import neuron_scores, num_to_prune, select_pruned, spine_size
from .regeneration import NormBypassProbe, group_signal, regrow_percentile, update_regrowth
from .spines import SPINE_KEYS, adapt_spines, constrain_, init_spines, record_history
from .trophic import surviving_neurons, trophic_alpha, update_rho

__all__ = ["StructuralDevelopment", "reset_optimizer_state"]

_STATE_VERSION = 1


@torch.no_grad()
def reset_optimizer_state(optimizer: Optional[torch.optim.Optimizer], param: Optional[torch.Tensor], where: torch.Tensor) -> None:
    """Zero the optimizer's per-element state of ``param`` where ``where`` (bool, broadcastable) is True.

    Works for any optimizer whose per-element state tensors have the parameter's shape (AdamW
    ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, SGD ``momentum_buffer``, ...). Scalars such
    as Adam's ``step`` are shared by the whole tensor and left alone. A parameter without state
    yet is skipped.
    """
    if optimizer is None or param is None:
        return
    st = optimizer.state.get(param)
    if not st:
        return
    for v in st.values():
        if torch.is_tensor(v) and v.shape == param.shape:
            v.masked_fill_(where.to(v.device), 0)


def _neuron_params(li: LayerInfo) -> list[torch.Tensor]:
    """Per-neuron parameters of a layer: its bias and its BatchNorm affine parameters."""
    out = []
    bias = getattr(li.module, "bias", None)
    if isinstance(bias, torch.Tensor):
        out.append(bias)
    if li.norm is not None:
        for name in ("weight", "bias"):
            p = getattr(li.norm, name, None)
            if isinstance(p, torch.Tensor):
                out.append(p)
    return out


class _Layer:
    """Structural state of one layer (all tensors on the layer's device)."""

    def __init__(self, li: LayerInfo, develops: bool, prunes_neurons: bool, rho: float):
        w = li.weight
        self.li = li
        self.develops = develops  # spines, constraint, regeneration, counted in the pruning rates
        self.prunes_neurons = prunes_neurons  # hidden layers: neuron pruning and trophic rate
        self.group = torch.ones(w.shape[0], w.shape[1], dtype=torch.bool, device=w.device)
        self.neuron = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        self.rho = float(rho)
        self.spine: Optional[dict[str, torch.Tensor]] = None
        self.probe: Optional[NormBypassProbe] = None  # regrowth signal of pruned neurons behind BN
        if develops:
            self.grad_acc = torch.zeros_like(w, memory_format=torch.contiguous_format).detach()
            self.c_grow = torch.zeros(self.group.shape, dtype=torch.int32, device=w.device)
            self.cand_prev = torch.zeros_like(self.group)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the cached float masks used by the per-step hooks."""
        w = self.li.weight
        self.all_live = bool(self.group.all())
        self.wmask = expand_group_mask(self.group, w).to(w.dtype).contiguous()
        self.all_alive = bool(self.neuron.all())
        self.nmask = self.neuron.to(w.dtype)

    @torch.no_grad()
    def impose(self) -> None:
        """Hard masks: masked weights, and bias / BN affine of pruned neurons, exactly zero."""
        if not self.all_live:
            self.li.weight.mul_(self.wmask)
        if not self.all_alive:
            for p in _neuron_params(self.li):
                p.mul_(self.nmask.to(p.dtype))


class StructuralDevelopment:
    """SD-SNN structural development of a network's layers (docs/sd-snn.md sections 3-10).

    Args:
        layers: the network's weight layers in forward order (``SpikingNet.prunable_layers()``);
            ``is_output`` layers keep all their neurons.
        cfg: the plasticity constants. ``mode: dense`` is refused (the training loop simply does
            not create this object for the dense baseline).
        num_outputs: the number of output neurons; ``S_next`` of the last hidden layer.

    Layers that develop: every non-output layer, plus the output layer when
    ``cfg.prune_output_layer`` (it then gets spines, the constraint and regeneration and counts
    in the synaptic pruning rate, but its neurons are never pruned).
    """

    def __init__(self, layers: list[LayerInfo], cfg: PlasticityConfig, num_outputs: int):
        if cfg.mode == "dense":
            raise ConfigError(
                "plasticity.mode is 'dense': structural development is off, so do not create "
                "StructuralDevelopment (set plasticity.mode: sdsnn to enable it)"
            )
        if not layers:
            raise ValueError("StructuralDevelopment needs at least one layer")
        names = [li.name for li in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")
        self.cfg = cfg
        self.num_outputs = int(num_outputs)
        self.step = 0  # index of the next development step
        self.history = 0  # weights recorded in the spine history (0, 1 or 2)
        self.last: dict[str, int] = {"pruned": 0, "regrown": 0, "pruned_groups": 0, "revived": 0}
        self.totals: dict[str, int] = dict(self.last)  # the same counts summed over every step
        self._layers: list[_Layer] = []
        for li in layers:
            if li.norm is not None and not isinstance(getattr(li.norm, "weight", None), torch.Tensor):
                raise ValueError(
                    f"layer {li.name}: its BatchNorm has no affine parameters, so a pruned neuron's "
                    "output could not be silenced; build it with affine=True"
                )
            hidden = not li.is_output
            develops = hidden or cfg.prune_output_layer
            rho0 = cfg.rho_init_conv if li.kind == "conv" else cfg.rho_init_fc
            self._layers.append(_Layer(li, develops, hidden, min(rho0, cfg.rho_max) if hidden else 0.0))

    # ------------------------------------------------------------------ helpers
    @property
    def window(self) -> int:
        return int(self.cfg.spine_window)

    def _dev(self) -> Iterable[_Layer]:
        return (L for L in self._layers if L.develops)

    def _hidden(self) -> list[_Layer]:
        return [L for L in self._layers if L.prunes_neurons]

    def _kind_const(self, L: _Layer, name: str) -> float:
        return float(getattr(self.cfg, f"{name}_{'conv' if L.li.kind == 'conv' else 'fc'}"))

    @property
    def constraint_active(self) -> bool:
        """True once a development step s > N has run (the constraint phase)."""
        return self.step - 1 > self.window

    # ------------------------------------------------------------------ training-loop hooks
    @torch.no_grad()
    def after_backward(self) -> None:
        """After ``loss.backward()``: accumulate the regrowth signal, then zero masked gradients.

        The weight's gradient is the gradient with respect to the effective (masked) weight,
        since masked entries hold exactly 0. For pruned neurons behind a BatchNorm, the BN-bypass
        probe has put the gradient with the BN as identity into their rows of ``weight.grad``
        during the backward pass; it is accumulated here and zeroed with the other masked entries. Gradients of masked weights and of the bias / BN
        parameters of pruned neurons are zeroed so the optimizer never moves them.
        """
        # the signal is only read from step 2N + 1 on (and reset at every step)
        accumulate = self.step > 2 * self.window
        for L in self._layers:
            w = L.li.weight
            if w.grad is not None and accumulate and L.develops:
                L.grad_acc.add_(w.grad)
            if w.grad is not None and not L.all_live:
                w.grad.mul_(L.wmask)
            if not L.all_alive:
                for p in _neuron_params(L.li):
                    if p.grad is not None:
                        p.grad.mul_(L.nmask.to(p.grad.dtype))

    @torch.no_grad()
    def after_optimizer_step(self, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """After ``optimizer.step()``: re-impose the hard masks (the same effect as
        :func:`sdsnn.structure.apply_masks`, with cached masks), and clamp the weights into their
        spines when ``constrain: always`` and the constraint phase is on."""
        clamp = self.cfg.constrain == "always" and self.constraint_active
        for L in self._layers:
            if clamp and L.develops and L.spine is not None:
                constrain_(L.li.weight.data, L.spine, record_cut=True)
            L.impose()

    @torch.no_grad()
    def develop(self, optimizer: Optional[torch.optim.Optimizer] = None) -> dict[str, Any]:
        """One development step (sd-snn.md 4-9). Returns counts for logging.

        ``pruned``: neurons pruned at this step; ``pruned_groups``: synapse groups masked by it;
        ``regrown``: synapse groups regrown; ``revived``: pruned neurons brought back to life.
        Newly masked and regrown entries get their optimizer state zeroed (also the bias / BN
        entries of pruned and revived neurons).
        """
        s = self.step
        n = self.window
        cfg = self.cfg
        out: dict[str, Any] = {"step": s, "pruned": 0, "pruned_groups": 0, "regrown": 0, "revived": 0}
        dev = list(self._dev())

        # 4-5. spines: initialise at s = 0, adapt at s >= 1
        for L in dev:
            w = L.li.weight.data
            if s == 0 or L.spine is None:
                L.spine = init_spines(w)
            else:
                live = expand_group_mask(L.group, w)
                # constrain: always -> read the weight as the interval left it before the clamps
                seen = w + L.spine["cut"] if cfg.constrain == "always" else w
                adapt_spines(L.spine, seen, live, self.history, n, cfg.shrink_factor, cfg.min_range)

        # 6. synaptic constraint
        if s > n:
            for L in dev:
                constrain_(L.li.weight.data, L.spine)

        revived_by_layer: dict[int, torch.Tensor] = {}
        if s > 2 * n:
            # 7. regeneration, before pruning
            for i, L in enumerate(self._layers):
                if not L.develops:
                    continue
                w = L.li.weight
                p = regrow_percentile(
                    s, n, self._kind_const(L, "regrow_p0"), cfg.regrow_b, cfg.regrow_p_max
                )
                regrow, L.c_grow, L.cand_prev = update_regrowth(
                    group_signal(L.grad_acc), L.group, L.c_grow, L.cand_prev, p, cfg.effective_regrow_window
                )
                nreg = int(regrow.sum())
                if nreg == 0:
                    continue
                out["regrown"] += nreg
                L.group |= regrow
                wsel = expand_group_mask(regrow, w)
                w.data.masked_fill_(wsel, 0.0)  # regrown weights start at exactly 0
                reset_optimizer_state(optimizer, w, wsel)
                if L.prunes_neurons:
                    revived = regrow.any(dim=1) & ~L.neuron
                    if bool(revived.any()):
                        nrev = int(revived.sum())
                        L.neuron |= revived
                        revived_by_layer[i] = revived
                        out["revived"] += nrev
                        self._revive_neuron_params(L, revived, optimizer)
                        # Regeneration repairs over-pruning: the cumulative target drops by the
                        # revived neurons, so K = floor(C * rho / 100) does not prune healthy
                        # neurons in their place.
                        L.rho = max(0.0, L.rho - 100.0 * nrev / L.li.num_neurons)

            # 8. neuronal pruning, after regeneration
            for i, L in enumerate(self._layers):
                if not L.prunes_neurons:
                    continue
                w = L.li.weight
                live = expand_group_mask(L.group, w)
                z = spine_size(L.spine["r_hi"], L.spine["r_lo"], live)
                k = num_to_prune(L.li.num_neurons, L.rho)
                newly = select_pruned(neuron_scores(z), L.neuron, k, protect=revived_by_layer.get(i))
                if not bool(newly.any()):
                    continue
                rows = newly[:, None] & L.group
                out["pruned"] += int(newly.sum())
                out["pruned_groups"] += int(rows.sum())
                L.neuron &= ~newly
                L.group &= ~newly[:, None]
                reset_optimizer_state(optimizer, w, expand_group_mask(rows, w))
                for q in _neuron_params(L.li):
                    reset_optimizer_state(optimizer, q, newly)

            # 9. neurotrophic rate update, after pruning
            hidden = self._hidden()
            surv = [
                surviving_neurons(L.group, L.neuron, L.li.group_size, cfg.min_live_fraction) for L in hidden
            ]
            for j, L in enumerate(hidden):
                s_next = surv[j + 1] if j + 1 < len(hidden) else self.num_outputs
                alpha = trophic_alpha(
                    s,
                    n,
                    self._kind_const(L, "trophic_a"),
                    self._kind_const(L, "trophic_tau"),
                    self._kind_const(L, "trophic_floor"),
                )
                L.rho = update_rho(L.rho, alpha, surv[j], s_next, cfg.rho_max)

        # 10. hard masks; bookkeeping for the next step
        for L in self._layers:
            L.refresh()
            L.impose()
            if L.develops:
                record_history(L.spine, L.li.weight.data)
                L.spine["cut"].zero_()
                L.grad_acc.zero_()
        self.history = min(self.history + 1, 2)
        self.step = s + 1
        self._sync_probes()
        self.last = {k: int(out[k]) for k in ("pruned", "regrown", "pruned_groups", "revived")}
        for k, v in self.last.items():
            self.totals[k] = self.totals.get(k, 0) + v
        return out

    def _sync_probes(self) -> None:
        """(Re)install the BN-bypass probes: one per BN layer with pruned neurons, only while the
        regrowth signal is accumulated (step > 2N); removed everywhere else."""
        accumulate = self.step > 2 * self.window
        for L in self._layers:
            want = accumulate and L.develops and L.li.norm is not None and not L.all_alive
            if want:
                rows = (~L.neuron).nonzero().reshape(-1)
                if L.probe is not None and torch.equal(L.probe.rows, rows):
                    continue
                if L.probe is not None:
                    L.probe.remove()
                L.probe = NormBypassProbe(L.li.norm, rows)
            elif L.probe is not None:
                L.probe.remove()
                L.probe = None

    def remove_hooks(self) -> None:
        """Unregister every hook this object put on the model (they come back at the next
        :meth:`develop` or :meth:`load_state_dict`)."""
        for L in self._layers:
            if L.probe is not None:
                L.probe.remove()
                L.probe = None

    @torch.no_grad()
    def _revive_neuron_params(self, L: _Layer, revived: torch.Tensor, optimizer) -> None:
        """A revived neuron starts like a fresh one: bias 0, BN weight 1 and bias 0, BN running
        statistics (0, 1), no optimizer state."""
        bias = getattr(L.li.module, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.data.masked_fill_(revived, 0.0)
        norm = L.li.norm
        if norm is not None:
            if isinstance(getattr(norm, "weight", None), torch.Tensor):
                norm.weight.data.masked_fill_(revived, 1.0)
            if isinstance(getattr(norm, "bias", None), torch.Tensor):
                norm.bias.data.masked_fill_(revived, 0.0)
            rm, rv = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
            if isinstance(rm, torch.Tensor):
                rm.masked_fill_(revived, 0.0)
            if isinstance(rv, torch.Tensor):
                rv.masked_fill_(revived, 1.0)
        for q in _neuron_params(L.li):
            reset_optimizer_state(optimizer, q, revived)

    # ------------------------------------------------------------------ reading the state
    def masks(self) -> dict[str, LayerMask]:
        """Current masks of every layer (copies); non-developing layers are all alive."""
        return {L.li.name: LayerMask(L.group.clone(), L.neuron.clone()) for L in self._layers}

    def rho(self) -> dict[str, float]:
        """Neuron pruning rate (percent) per hidden layer."""
        return {L.li.name: L.rho for L in self._hidden()}

    def _source_alive(self, i: int) -> Optional[torch.Tensor]:
        """bool [in] per input group of layer ``i``: is its source neuron alive? None: all alive.

        The first layer's sources are the inputs (always alive). Layers are a chain in forward
        order; an FC layer after a conv layer reads the flattened [C, H, W] map, so each source
        channel covers ``in_features / C`` consecutive columns.
        """
        if i == 0:
            return None
        prev = self._layers[i - 1]
        if prev.all_alive:
            return None
        fan_in = self._layers[i].group.shape[1]
        c = prev.neuron.numel()
        if fan_in == c:
            return prev.neuron
        if fan_in % c == 0:
            return prev.neuron.repeat_interleave(fan_in // c)
        raise ValueError(
            f"layer {self._layers[i].li.name}: fan-in {fan_in} is not a multiple of the "
            f"{c} neurons of layer {prev.li.name}; the layers must be given in forward order"
        )

    def stats(self) -> dict[str, float]:
        """Flat metrics: overall and per-layer synaptic / neuron pruning rates, rho, step counts.

        ``syn_prune_rate`` / ``syn_prune/<layer>``: 1 - effective live weights / all weights over
        the developing layers (the output layer only with ``prune_output_layer``). A weight is
        effectively live when its synapse group is live AND its source neuron (in the previous
        layer) is alive: a weight reading from a pruned neuron can never carry a spike and
        compaction removes it, although the masks keep it. The first layer's sources are the
        inputs (always alive); for an FC layer after a conv layer, each channel of the conv covers
        ``in_features / channels`` consecutive columns. The masks themselves are not changed.
        ``syn_prune_rate_masks``: the same over the masks alone (1 - live mask entries / all), which
        does not count the weights that read from pruned neurons as pruned.

        ``pruned`` / ``regrown``: neurons pruned and groups regrown by the last step;
        ``pruned_total`` / ``regrown_total``: summed over every step so far (the training loop
        reports per-epoch counts as differences of these).
        """
        out: dict[str, float] = {}
        live_w = all_w = mask_w = 0
        dead_n = all_n = 0
        for i, L in enumerate(self._layers):
            if not L.develops:
                continue
            gs = L.li.group_size
            src = self._source_alive(i)
            live = L.group if src is None else L.group & src[None, :]
            lw = int(live.sum()) * gs
            aw = L.group.numel() * gs
            live_w += lw
            all_w += aw
            mask_w += int(L.group.sum()) * gs
            out[f"syn_prune/{L.li.name}"] = 1.0 - lw / aw if aw else 0.0
            if L.prunes_neurons:
                d = int((~L.neuron).sum())
                c = L.neuron.numel()
                dead_n += d
                all_n += c
                out[f"neuron_prune/{L.li.name}"] = d / c if c else 0.0
                out[f"rho/{L.li.name}"] = L.rho
        out["syn_prune_rate"] = 1.0 - live_w / all_w if all_w else 0.0
        out["syn_prune_rate_masks"] = 1.0 - mask_w / all_w if all_w else 0.0
        out["neuron_prune_rate"] = dead_n / all_n if all_n else 0.0
        out["pruned"] = float(self.last["pruned"])
        out["regrown"] = float(self.last["regrown"])
        out["dev_steps"] = float(self.step)
        out["pruned_total"] = float(self.totals["pruned"])
        out["regrown_total"] = float(self.totals["regrown"])
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers only (loadable with ``torch.load(weights_only=True)``), as CPU
        copies: on a GPU the spine state is several times the model's size, and a copy there would
        only be copied again to be saved."""

        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        layers: dict[str, Any] = {}
        for L in self._layers:
            d: dict[str, Any] = {"group": copy(L.group), "neuron": copy(L.neuron), "rho": L.rho}
            if L.develops:
                d["grad_acc"] = copy(L.grad_acc)
                d["c_grow"] = copy(L.c_grow)
                d["cand_prev"] = copy(L.cand_prev)
                if L.spine is not None:
                    for k in SPINE_KEYS:
                        d[k] = copy(L.spine[k])
            layers[L.li.name] = d
        return {
            "version": _STATE_VERSION,
            "step": self.step,
            "history": self.history,
            "last": dict(self.last),
            "totals": dict(self.totals),
            "layers": layers,
        }

    def load_state_dict(self, state: dict[str, Any], *, masks_only: bool = False) -> None:
        """Restore a :meth:`state_dict` (tensors are moved to each layer's device).

        Only the structural state is restored; the model's weights come from its own checkpoint.
        ``masks_only``: the state of a slim checkpoint (:func:`sdsnn.train.slim_checkpoint`) holds
        only each layer's masks and rho; the spines, counters and regrowth signal start empty, fit
        for inference and masks, not for further development.
        """
        if int(state.get("version", -1)) != _STATE_VERSION:
            raise ValueError(f"unsupported StructuralDevelopment state version {state.get('version')}")
        saved = state["layers"]
        mine = [L.li.name for L in self._layers]
        if sorted(saved) != sorted(mine):
            raise ValueError(f"state has layers {sorted(saved)}, this network has {sorted(mine)}")
        for L in self._layers:
            d = saved[L.li.name]
            dev = L.li.weight.device
            if tuple(d["group"].shape) != tuple(L.group.shape):
                raise ValueError(f"layer {L.li.name}: mask shape {tuple(d['group'].shape)} != {tuple(L.group.shape)}")
            L.group = d["group"].to(dev, torch.bool).clone()
            L.neuron = d["neuron"].to(dev, torch.bool).clone()
            L.rho = float(d["rho"])
            if L.develops and masks_only:
                L.grad_acc.zero_()
                L.c_grow.zero_()
                L.cand_prev.zero_()
                L.spine = None
            elif L.develops:
                L.grad_acc = d["grad_acc"].to(dev).clone()
                L.c_grow = d["c_grow"].to(dev, torch.int32).clone()
                L.cand_prev = d["cand_prev"].to(dev, torch.bool).clone()
                L.spine = None
                if "r_hi" in d:  # checkpoints written before "cut" existed resume with cut = 0
                    L.spine = {k: (d[k] if k in d else torch.zeros_like(d["r_hi"])).to(dev).clone()
                               for k in SPINE_KEYS}
            L.refresh()
        self.step = int(state["step"])
        self.history = int(state["history"])
        self.last = {k: int(v) for k, v in state["last"].items()}
        # checkpoints written before the totals existed: start them from the last step's counts
        self.totals = {k: int(v) for k, v in state.get("totals", state["last"]).items()}
        self._sync_probes()

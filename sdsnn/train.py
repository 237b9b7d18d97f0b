"""The one training loop: learning while developing structure (SD-SNN).

:func:`train` runs one :class:`~sdsnn.config.ExperimentConfig`: surrogate-gradient BPTT with
AdamW and a cosine schedule, SD-SNN development steps (every epoch or every K optimizer steps),
validation every epoch, energy accounting, an atomic checkpoint every epoch and exact resume
(on the CPU; cuDNN is not deterministic by default).
Both ``sdsnn-search train`` and every search trial call it.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .compact import count_parameters
from .config import ExperimentConfig
from .data import build_loaders
from .energy import count_operations
from .errors import ConfigError, UserError
from .models import build_model
from .plasticity import StructuralDevelopment
from .structure import LayerMask, full_masks

__all__ = [
    "train",
    "TrainResult",
    "Restored",
    "restore",
    "slim_checkpoint",
    "evaluate",
    "predict",
    "resolve_device",
    "to_device",
    "logit_scale",
    "CHECKPOINT_NAME",
]

CHECKPOINT_NAME = "checkpoint.pt"
_CKPT_VERSION = 1

EpochCallback = Callable[[dict, Optional[Path]], None]


@dataclass
class TrainResult:
    """What one run produced. ``status`` is ``completed`` or ``nan`` (the loss became NaN/inf)."""

    status: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    test: Optional[dict[str, float]] = None
    run_dir: Optional[Path] = None


@dataclass
class Restored:
    """A trained network rebuilt from its checkpoint, with its structural masks."""

    model: torch.nn.Module
    masks: dict[str, LayerMask]
    config: ExperimentConfig
    metrics: dict[str, float]
    epoch: int


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises :class:`ConfigError` (before anything is written) for a device this machine lacks.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"train.device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ConfigError(f"train.device: {name!r} asked for, but this machine has {n} CUDA device(s) "
                              f"(torch {torch.__version__}); use train.device: auto or cpu")
    elif dev.type != "cpu":
        raise ConfigError(f"train.device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return dev


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``. A batch that repeats one frame over T (direct encoding: an expanded
    view with stride 0 along T) travels once and is expanded again there, instead of T copies."""
    if x.device == device:
        return x
    if x.dim() > 1 and x.shape[0] > 1 and x.stride(0) == 0:
        return x[0].to(device, non_blocking=True).unsqueeze(0).expand(x.shape)
    return x.to(device, non_blocking=True)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _lr_factor(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Linear warm-up, then cosine from lr to min_lr; returned as a factor of lr."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    target = min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
    return target / lr


def _loss(out: torch.Tensor, y: torch.Tensor, kind: str, logit_scale: float) -> torch.Tensor:
    """MSE of the output against one-hot, or cross-entropy with ``out * logit_scale`` as logits.

    ``logit_scale`` is T for a spike-rate readout (the logits are then spike counts) and 1 for a
    membrane-potential readout.
    """
    if kind == "mse":
        return F.mse_loss(out, F.one_hot(y, out.shape[1]).to(out.dtype))
    return F.cross_entropy(out * logit_scale, y)


def logit_scale(cfg: ExperimentConfig) -> float:
    """The factor that turns the model output into logits for cross-entropy (see :func:`_loss`)."""
    return float(cfg.data.time_steps) if cfg.model.readout == "rate" else 1.0


@torch.no_grad()
def predict(model: torch.nn.Module, loader: Iterable, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and labels over a whole loader (argmax of output spike rates)."""
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        rates = model.predict(to_device(x, device))
        preds.append(rates.argmax(1).cpu())
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: Iterable, device: torch.device, loss_kind: str, logit_scale: float
) -> dict[str, float]:
    """Mean loss and accuracy over a loader."""
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    for x, y in loader:
        y = y.to(device)
        rates = model.predict(to_device(x, device))
        loss_sum += float(_loss(rates, y, loss_kind, logit_scale)) * y.numel()
        correct += int((rates.argmax(1) == y).sum())
        total += y.numel()
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """Read ``path`` (a checkpoint :func:`train` wrote) onto the CPU with ``weights_only=True``.

    A file that cannot be opened keeps its own ``OSError`` (it names the path). A file torch
    cannot read (cut short, a text written over it, another kind of file) or that is not an
    sdsnn checkpoint raises :class:`~sdsnn.errors.UserError` in one line that names it; torch's
    own message (dozens of lines, advising ``weights_only=False``) is not passed on.
    """
    why = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except OSError as e:  # torch's reader says "[Errno 22] Invalid argument" for some cut-short files
        if e.filename is not None:  # opening or reading the path failed: not the file's content
            raise
        why = _unreadable_why(path)
    except Exception:  # on a damaged file torch raises anything from UnpicklingError to IndexError
        why = _unreadable_why(path)
    else:
        if not isinstance(state, dict) or not {"config", "model"} <= state.keys():
            why = "a torch file, but not an sdsnn checkpoint (no config and model)"
    if why is not None:
        raise UserError(f"{path}: not a readable sdsnn checkpoint ({why}); re-run the trial or training "
                        f"run that wrote it from scratch (this file cannot be restored or resumed)") from None
    return state


def _unreadable_why(path: Path) -> str:
    """Why torch could not read ``path``, from its first bytes (a torch checkpoint is a zip archive)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return "unreadable"
    if not head:
        return "an empty file"
    if head == b"PK\x03\x04":
        return "a truncated or corrupt torch archive"
    return "corrupt: not a torch file; something else written over it?"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _build(cfg: ExperimentConfig, input_shape, num_classes: int, static_input: bool, device: torch.device):
    model = build_model(
        cfg.model,
        tuple(input_shape),
        num_classes,
        static_input=static_input,
        spiking_input_first=not static_input,
    ).to(device)
    dev = None
    if cfg.plasticity.mode == "sdsnn":
        dev = StructuralDevelopment(model.prunable_layers(), cfg.plasticity, num_classes)
    return model, dev


def _current_masks(model, dev) -> dict[str, LayerMask]:
    return dev.masks() if dev is not None else full_masks(model.prunable_layers())


def _energy_batches(loader: Iterable, n: int) -> list[torch.Tensor]:
    out = []
    for i, (x, _) in enumerate(loader):
        if i >= n:
            break
        out.append(x)
    return out


def _structure_metrics(model, dev, cfg: ExperimentConfig, energy_inputs, device,
                       previous: Optional[dict[str, float]] = None) -> dict[str, float]:
    """Pruning, energy and size figures after an epoch; ``pruned`` / ``regrown`` count the whole
    epoch (every development step in it), from the running totals and the ``previous`` epoch's."""
    masks = _current_masks(model, dev)
    m: dict[str, float] = {}
    if dev is not None:
        m.update(dev.stats())
        prev = previous or {}
        for k in ("pruned", "regrown"):
            if f"{k}_total" in prev or not prev:
                m[k] = m[f"{k}_total"] - prev.get(f"{k}_total", 0.0)
    else:
        m.update({"syn_prune_rate": 0.0, "syn_prune_rate_masks": 0.0, "neuron_prune_rate": 0.0,
                  "regrown": 0.0, "pruned": 0.0})
    report = count_operations(model, masks, [to_device(x, device) for x in energy_inputs], cfg.energy)
    m.update(report.to_metrics())
    m.update(report.firing_metrics())  # recorded during the same forward passes
    params = count_parameters(model, masks)
    m["params"] = float(params["compact"])
    m["dense_params"] = float(params["dense"])
    return m


def train(
    cfg: ExperimentConfig,
    run_dir: Optional[str | Path] = None,
    *,
    resume: bool = False,
    on_epoch: Optional[EpochCallback] = None,
    evaluate_test: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train one experiment. See docs/internals.md for the metrics and files it writes.

    With ``run_dir``, every epoch writes ``checkpoint.pt`` (atomically), ``metrics.jsonl`` and
    ``config.json``. With ``resume=True`` and a checkpoint present, training continues from it and
    gives the same numbers as an uninterrupted run (same machine, same seed).
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    bundle = build_loaders(cfg.data, cfg.seed)  # raises DatasetUnavailable before anything is written
    _seed_everything(cfg.seed)
    model, dev = _build(cfg, bundle.input_shape, bundle.num_classes, bundle.static_input, device)
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / CHECKPOINT_NAME if run_path is not None else None
    state = None
    if resume and ckpt_path is not None and ckpt_path.exists():
        # read onto the CPU: load_state_dict moves each tensor to its parameter's device, and the
        # random-number states must stay CPU byte tensors (set_rng_state refuses a CUDA one)
        state = _load_checkpoint(ckpt_path)
        if state.get("slim"):  # refused before anything in the run folder changes
            raise UserError(f"{ckpt_path}: holds only the final model and masks (slimmed with "
                            f"sdsnn.train.slim_checkpoint, as search trials are when they complete), not the "
                            f"training state; it cannot be resumed: train a new run")
    if run_path is not None:  # only now: a config the model registry rejects leaves nothing behind
        run_path.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(run_path / "config.json", json.dumps(cfg.to_dict(), indent=2))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    steps_per_epoch = len(bundle.train)
    total_steps = steps_per_epoch * cfg.train.epochs
    warmup_steps = steps_per_epoch * cfg.train.warmup_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, warmup_steps, cfg.train.lr, cfg.train.min_lr)
    )
    develop_k = cfg.plasticity.develop_every if isinstance(cfg.plasticity.develop_every, int) else None
    scale = logit_scale(cfg)

    start_epoch, global_step = 0, 0
    history: list[dict[str, float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if dev is not None and state.get("development") is not None:
            dev.load_state_dict(state["development"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:  # dropout draws on the GPU
            torch.cuda.set_rng_state(state["rng_cuda"], device)
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        history = list(state["history"])
        if state.get("status") == "nan":
            return TrainResult("nan", history[-1] if history else {}, history, None, run_path)
        state = None  # loaded: do not keep a CPU copy of the whole state through training

    energy_inputs = _energy_batches(bundle.val, cfg.energy.batches)
    status = "completed"
    epochs = range(start_epoch, cfg.train.epochs)
    bar = None
    # a terminal gets a progress bar; a log file (stderr not a terminal) one line per epoch, not a
    # bar redrawn with carriage returns into one ever longer line
    log_lines = progress and not sys.stderr.isatty()
    if progress and not log_lines:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.epochs, initial=start_epoch, desc=cfg.name, unit="epoch")

    for epoch in epochs:
        bundle.train.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        # running sums stay on the device: one host sync per step (the finiteness check), not three
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for x, y in bundle.train:
            x = to_device(x, device)
            y = y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            rates = model(x)
            loss = _loss(rates, y, cfg.train.loss, scale)
            loss.backward()
            if dev is not None:
                dev.after_backward()
            # Spike outputs are bounded, so a diverging network shows up in its gradients (or its
            # weights, once they are inf/NaN) before it shows up in the loss: check the grad norm
            # too. A non-finite step ends the run before the optimizer applies it.
            gnorm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
                if cfg.train.grad_clip
                else torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            )
            if not bool(torch.isfinite(loss.detach()) & torch.isfinite(gnorm)):
                model.reset()
                status = "nan"
                break
            optimizer.step()
            if dev is not None:
                dev.after_optimizer_step(optimizer)
            scheduler.step()
            model.reset()
            global_step += 1
            loss_sum += loss.detach().double() * y.numel()
            correct += (rates.detach().argmax(1) == y).sum()
            seen += y.numel()
            if dev is not None and develop_k is not None and global_step % develop_k == 0:
                dev.develop(optimizer)
        if status == "completed" and dev is not None and develop_k is None:
            dev.develop(optimizer)
        epoch_time = time.perf_counter() - t0

        metrics: dict[str, float] = {
            "epoch": float(epoch + 1),
            "train_loss": float(loss_sum) / seen if seen and status == "completed" else float("nan"),
            "train_acc": int(correct) / seen if seen else 0.0,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "epoch_time_s": epoch_time,
        }
        if status == "completed":
            val = evaluate(model, bundle.val, device, cfg.train.loss, scale)
            metrics["val_loss"], metrics["val_acc"] = val["loss"], val["acc"]
            previous = next((h for h in reversed(history) if "syn_prune_rate" in h), None)
            metrics.update(_structure_metrics(model, dev, cfg, energy_inputs, device, previous))
        history.append(metrics)
        if ckpt_path is not None:
            _atomic_torch_save(
                {
                    "version": _CKPT_VERSION,
                    "status": status,
                    "config": cfg.to_dict(),
                    "epoch": epoch + 1,
                    "global_step": global_step,
                    "input_shape": list(bundle.input_shape),
                    "num_classes": int(bundle.num_classes),
                    "static_input": bool(bundle.static_input),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "development": dev.state_dict() if dev is not None else None,
                    "history": history,
                    "rng": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                },
                ckpt_path,
            )
            _atomic_write_text(run_path / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        if bar is not None:
            bar.update(1)
            if status == "completed":
                bar.set_postfix(
                    loss=f"{metrics['train_loss']:.3f}",
                    val=f"{metrics['val_acc']:.3f}",
                    prune=f"{metrics['syn_prune_rate']:.2f}",
                )
        elif log_lines and status == "completed":
            print(f"{cfg.name}: epoch {epoch + 1}/{cfg.train.epochs}  loss {metrics['train_loss']:.3f}  "
                  f"val {metrics['val_acc']:.3f}  prune {metrics['syn_prune_rate']:.2f}  "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        if on_epoch is not None:
            on_epoch(metrics, run_path)
        if status != "completed":
            break
    if bar is not None:
        bar.close()

    test = None
    if evaluate_test and status == "completed":
        t = evaluate(model, bundle.test, device, cfg.train.loss, scale)
        test = {"test_loss": t["loss"], "test_acc": t["acc"]}
        if run_path is not None:
            _atomic_write_text(run_path / "test.json", json.dumps(test, indent=2))
    return TrainResult(status, history[-1] if history else {}, history, test, run_path)


#: What a slim checkpoint keeps: enough for :func:`restore` (model, masks, config, history).
_SLIM_KEYS = ("version", "status", "config", "epoch", "global_step", "input_shape", "num_classes",
              "static_input", "model", "history")


def slim_checkpoint(run_dir: str | Path) -> tuple[int, int]:
    """Rewrite ``run_dir/checkpoint.pt`` (atomically) with only what :func:`restore` needs: the
    model, the masks and rho of every layer, the config and the history. The optimizer, the
    scheduler, the random-number states and the development state (spines, counters, regrowth
    signal: for the reference CIFAR-10 network about 11x the model's size) are dropped, so the
    run can no longer be resumed (``train(resume=True)`` refuses it). Search trials do this when
    they complete. Returns the file's size in bytes before and after; a slim file is left as is.
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    before = path.stat().st_size
    state = _load_checkpoint(path)
    if state.get("slim"):
        return before, before
    out = {k: state[k] for k in _SLIM_KEYS if k in state}
    out["slim"] = True
    dev = state.get("development")
    if dev is not None:
        out["development"] = {
            **{k: v for k, v in dev.items() if k != "layers"},
            "layers": {name: {k: d[k] for k in ("group", "neuron", "rho")} for name, d in dev["layers"].items()},
        }
    _atomic_torch_save(out, path)
    return before, path.stat().st_size


def restore(run_dir: str | Path, device: str = "cpu") -> Restored:
    """Rebuild a trained model and its masks from ``run_dir/checkpoint.pt`` (no pickle)."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        raise UserError(f"{path}: no checkpoint found (was the trial run to completion with a run dir?)")
    state = _load_checkpoint(path)  # onto the CPU: building the model and loading its state move it
    cfg = ExperimentConfig.model_validate(state["config"])
    dev_t = torch.device(device)
    model, dev = _build(cfg, state["input_shape"], state["num_classes"], state["static_input"], dev_t)
    model.load_state_dict(state["model"])
    if dev is not None and state.get("development") is not None:
        dev.load_state_dict(state["development"], masks_only=bool(state.get("slim")))
    if dev is not None:  # the model goes out alone: no development hooks left on it
        dev.remove_hooks()
    model.eval()
    history = state.get("history") or []
    return Restored(model, _current_masks(model, dev), cfg, history[-1] if history else {}, int(state["epoch"]))

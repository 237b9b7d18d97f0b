"""Export Pareto-best trials as compact models with a model card, and register them in MLflow.

``export_study(study_dir, pick, out_dir)`` picks trials of the study's Pareto front
(``knee``, ``best-accuracy``, ``lowest-energy`` or ``all-pareto``) and, for each one:

1. restores the trial's trained network and masks from its checkpoint (``sdsnn.train.restore``);
2. compacts it (``sdsnn.compact``: pruned neurons physically removed) and saves it as
   ``model.safetensors`` + ``model.json`` (no pickle);
3. loads the saved folder back with ``sdsnn.load_model`` and checks, on the **whole test set**,
   that it predicts exactly what the checkpoint network predicts (the test set is touched here,
   at export, and nowhere in the search);
4. measures test metrics, parameter counts (of the saved and of the dense network), mask-aware
   energy on test inputs, and inference time of the compact and the dense (masked) network on the
   same test batches;
5. writes ``MODEL_CARD.md`` and ``card.json`` and renames the finished folder into place;
6. logs the folder as artifacts of the trial's MLflow run and registers it in the model registry
   (artifact-based model version: safetensors + JSON) with an alias (``knee``, ...).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from sdsnn.errors import UserError

from .pareto import ParetoResult, Study, analyze
from .studyfile import load_study_plugins, log_study_artifact, store_unreachable

__all__ = ["PICKS", "Exported", "pick_trials", "export_trial", "export_study"]

PICKS = ("knee", "best-accuracy", "lowest-energy", "all-pareto")


@dataclass
class Exported:
    """One exported model and what was measured at export."""

    trial_id: str
    alias: str
    folder: Path
    identical_predictions: bool
    test_samples: int
    card: dict
    registered: Optional[dict] = None  # {"name", "version", "alias", "source"}
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- picking


def _metric_of(res: ParetoResult, pattern: str, mode: str, fallback: str) -> str:
    for o in res.objectives:
        if o.mode == mode and pattern in o.metric:
            return o.metric
    if fallback in res.front.columns:
        return fallback
    raise UserError(f"study has no '{fallback}' metric to pick by; use --pick knee or all-pareto")


def _alias(text: str) -> str:
    a = re.sub(r"[^\w\-]", "-", text)
    return "t" + a if re.fullmatch(r"[vV]\d+", a) or a.lower() == "latest" else a


def pick_trials(res: ParetoResult, pick: str) -> list[tuple[str, pd.Series]]:
    """(alias, front row) pairs for ``pick``; ``all-pareto`` gives every front member (alias pareto-<id>)."""
    if pick not in PICKS:
        raise UserError(f"--pick {pick!r} is not one of {', '.join(PICKS)}")
    if pick == "knee":
        return [("knee", res.knee)]
    if pick == "best-accuracy":
        return [("best-accuracy", res.best(_metric_of(res, "acc", "max", "val_acc"), "max"))]
    if pick == "lowest-energy":
        return [("lowest-energy", res.best(_metric_of(res, "energy", "min", "energy_pj"), "min"))]
    return [(_alias(f"pareto-{r['trial_id']}"), r) for _, r in res.front.iterrows()]


# ----------------------------------------------------------------------------- measuring


def _outputs(model, loader) -> "Any":
    """Output spike rates of ``model`` over a whole loader, in loader order."""
    import torch

    model.eval()
    out, labels = [], []
    with torch.no_grad():
        for x, y in loader:
            out.append(model.predict(x).detach().cpu())
            labels.append(y)
    return torch.cat(out), torch.cat(labels)


def _tied_top(rates) -> int:
    """Samples whose highest output is shared by two or more classes (``argmax`` then picks the
    lowest class index): frequent with spike-count readouts at small T."""
    if rates.shape[1] < 2 or not len(rates):
        return 0
    top2 = rates.topk(2, dim=1).values
    return int((top2[:, 0] == top2[:, 1]).sum())


def _time_per_sample_ms(models: list, batches: list, repeats: int = 5, min_round_s: float = 0.1) -> list[float]:
    """Wall time per sample (ms) of a forward pass over ``batches``, for each model.

    Each timed round runs a model over ``batches`` enough times to last about ``min_round_s``
    (calibrated on a warm-up pass), so tiny networks are not timed at the clock's resolution;
    the models take turns within every round so that a busier moment of the machine affects them
    alike; the fastest of ``repeats`` rounds is reported (the least disturbed one).
    """
    import torch

    samples = sum(int(x.shape[1]) for x in batches)

    def one_pass(model) -> float:
        t0 = time.perf_counter()
        for x in batches:
            model.predict(x)
        return time.perf_counter() - t0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: tiny networks on a shared CPU time far more steadily
    try:
        return _timed_rounds(models, one_pass, samples, repeats, min_round_s)
    finally:
        torch.set_num_threads(threads)


def _timed_rounds(models, one_pass, samples, repeats, min_round_s) -> list[float]:
    import torch

    with torch.no_grad():
        warm = [one_pass(m) for m in models]
        loops = max(1, int(min_round_s / max(min(warm), 1e-6)))
        best = [math.inf] * len(models)
        for _ in range(repeats):
            for i, model in enumerate(models):
                t = sum(one_pass(model) for _ in range(loops)) / loops
                best[i] = min(best[i], t)
    return [1000.0 * b / max(samples, 1) for b in best]


def _n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _n_nonzero(model) -> int:
    return int(sum(int((p != 0).sum()) for p in model.parameters()))


def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------- card


def _card_md(card: dict) -> str:
    t, m, p, e, s = card["test"], card["trial_metrics"], card["parameters"], card["energy_test"], card["speed"]
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [
        f"# Model card: {card['name']}",
        "",
        (f"The dense baseline of study `{card['study']}` (the same backbone trained without structural "
         f"development), exported in the same format" if card.get("is_baseline") else
         "A spiking network trained with SD-SNN structural development and compacted (pruned neurons removed)")
        + (f". Exported by trial id as **{card['alias']}**, {'on' if card.get('on_front') else 'not on'} the "
           f"study's Pareto front" if card.get("picked_by") == "trial id" else
           f". Picked as **{card['alias']}** from the Pareto front of study `{card['study']}`")
        + f" (trial `{card['trial_id']}`) on dataset **{card['dataset']}**.",
        "",
        "## Test-set metrics (evaluated at export)",
        "",
        f"- accuracy: **{pct(t['acc'])}**, loss {t['loss']:.4f}, on {t['samples']} test samples",
        f"- predictions of the exported model loaded with `sdsnn.load_model` vs the trial's checkpoint "
        f"network: **{'identical' if t['identical_predictions'] else 'DIFFERENT'}** on all "
        f"{t['samples']} test samples (largest output-rate difference {t['max_abs_rate_diff']:.3g})",
        *([f"- {t['tied_top']} of {t['samples']} test samples have their highest output shared by two or more "
           f"classes (`argmax` then picks the lowest class index; more time steps or `readout: potential` "
           f"break such ties)"] if t.get("tied_top") else []),
        "",
        "## Structure and cost",
        "",
        f"- parameters: {p['compact']:,} stored (this trial's network before pruning: {p['dense']:,}, "
        f"{p['compact'] / max(p['dense'], 1):.3f}x); non-zero: {p['compact_nonzero']:,}",
        f"- synaptic pruning rate {pct(m.get('syn_prune_rate'))}, neuron pruning rate "
        f"{pct(m.get('neuron_prune_rate'))}; hidden widths {card['widths']['dense']} -> {card['widths']['compact']}",
        f"- energy per sample on test inputs: {e['energy_pj']:.4g} pJ (dense architecture: "
        f"{e['dense_energy_pj']:.4g} pJ, ratio {e['energy_ratio']:.3f}); {e['sops']:.4g} SOPs, {e['macs']:.4g} MACs",
        f"- inference time per sample ({s['device']}, {s['threads']} thread{'s' if s['threads'] != 1 else ''}, batch {s['batch_size']}, "
        f"{card['time_steps']} time steps, fastest of {s['repeats']} interleaved rounds over {s['samples']} test samples): "
        f"compact {s['compact_ms']:.4f} ms, dense {s['dense_ms']:.4f} ms (speed-up {s['speedup']:.2f}x)",
        "",
        "## Search-time metrics of the trial (validation set)",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for k, v in m.items():
        lines.append(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    deltas = card.get("vs_dense_baseline") or {}
    if deltas:
        lines += ["", "Against the study's dense baseline trial (the space's fixed backbone, trained without "
                  "development: a searched width or depth can make this trial's network larger than it): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in deltas.items() if v is not None) + "."]
    lines += [
        "",
        "## Trial configuration",
        "",
        "```json",
        json.dumps(card["config"], indent=2),
        "```",
        "",
        "## How to load",
        "",
        "```python",
        "import sdsnn",
        *(["import sdsnn.plugins",
            f"sdsnn.plugins.add_plugins({json.dumps(card['plugins'].split(','))})  # the study's plugins: "
            f"they register the backbone"] if card.get("plugins") else []),
        f"model = sdsnn.load_model({json.dumps(card['folder_name'])})  # the path of this folder; no pickle",
        "rates = model.predict(x)  # x: float32 [T, B, C, H, W] -> output rates [B, classes]; leaves the net at rest",
        "```",
        "",
        f"Inputs: float32 `[T, B, {', '.join(str(d) for d in card['input_shape'])}]` with T = {card['time_steps']}, "
        f"prepared as the trial's `data` settings say (`{card['config']['data'].get('encoding')}` encoding; see the "
        f"configuration above). For this dataset, `sdsnn.data.build_loaders(DataConfig(**card['config']['data']), "
        f"seed=0).test` yields the test split ready to use (`DataConfig` from `sdsnn.config`). The energy "
        f"figures above are `sdsnn.count_operations(model, model.masks, test_batches, "
        f"EnergyConfig(**card['config']['energy']))` (`model.masks`: the synapse groups this compact network "
        f"still has masked, stored with its weights).",
        "",
    ]
    if card.get("registered"):
        r = card["registered"]
        lines += [f"Registered in MLflow as `{r['name']}` version {r['version']}, alias `{r['alias']}` "
                  f"(`models:/{r['name']}@{r['alias']}`; the version's artifacts are this folder).", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- export


def export_trial(study: Study, row: pd.Series, alias: str, out_dir: Path, *,
                 baseline: Optional[pd.Series] = None, progress: bool = False, on_front: bool = True,
                 by_id: bool = False) -> Exported:
    """Export one trial (see module doc) into ``out_dir/<alias>/``; raise if predictions differ.
    ``on_front`` and ``by_id`` (picked by ``--trial``) only change what the card says."""
    import torch

    # the functions, by their module: ``sdsnn.compact`` is both a submodule and a function name
    from sdsnn.compact import compact, live_widths, load_model, save_model
    from sdsnn.data import build_loaders
    from sdsnn.energy import count_operations
    from sdsnn.train import CHECKPOINT_NAME, evaluate, logit_scale, restore

    trial_id = str(row["trial_id"])
    # the study folder's own trial folder (where the trainable writes it), not the absolute path
    # trials.csv recorded: a moved folder has none there, a copied one would read the original's
    run_dir = study.path / "trials" / trial_id
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise UserError(f"trial {trial_id} of {study.path} has no checkpoint at {run_dir / CHECKPOINT_NAME}; "
                        f"re-run or resume the study so the trial finishes")
    restored = restore(run_dir)
    cfg = restored.config
    dense_model, masks = restored.model, restored.masks
    bundle = build_loaders(cfg.data, cfg.seed, progress=progress)

    final = Path(out_dir) / alias
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=final.parent))
    try:
        meta = {"study": study.name, "trial_id": trial_id, "alias": alias, "dataset": cfg.data.dataset}
        if study.meta.get("plugins"):
            meta["plugins"] = study.meta["plugins"]  # for load_model's message where they are missing
        save_model(dense_model, work, meta=meta, masks=masks)  # compacts
        loaded = load_model(work)

        # round trip on the whole test set
        rates_ckpt, labels = _outputs(dense_model, bundle.test)
        rates_loaded, labels2 = _outputs(loaded, bundle.test)
        identical = bool(torch.equal(labels, labels2) and torch.equal(rates_ckpt.argmax(1), rates_loaded.argmax(1)))
        max_diff = float((rates_ckpt - rates_loaded).abs().max()) if len(rates_ckpt) else 0.0
        if not identical:
            n_diff = int((rates_ckpt.argmax(1) != rates_loaded.argmax(1)).sum())
            raise RuntimeError(f"export of trial {trial_id}: the loaded model predicts differently from the "
                               f"checkpoint on {n_diff} of {len(labels)} test samples; nothing was exported")
        test = evaluate(loaded, bundle.test, torch.device("cpu"), cfg.train.loss, logit_scale(cfg))

        # measured cost: parameters, energy on test inputs, inference time compact vs dense
        batches = []
        for x, _ in bundle.test:
            batches.append(x)
            if sum(int(b.shape[1]) for b in batches) >= 512:
                break
        energy = count_operations(dense_model, masks, batches, cfg.energy)
        # the dense reference: same weights (masked entries zero), full widths, no training hooks
        dense_ref = compact(dense_model, None).eval()
        t_compact, t_dense = _time_per_sample_ms([loaded, dense_ref], batches)

        metrics = {k: (_num(row.get(k)) if _num(row.get(k)) is not None else row.get(k))
                   for k in ("val_acc", "val_loss", "train_acc", "syn_prune_rate", "neuron_prune_rate",
                             "energy_pj", "dense_energy_pj", "energy_ratio", "params", "dense_params", "epochs")
                   if k in row.index and _num(row.get(k)) is not None}
        deltas = {}
        if baseline is not None:
            deltas = {"acc_gain": _num(row.get("acc_gain")), "energy_vs_dense": _num(row.get("energy_vs_dense")),
                      "params_vs_dense": _num(row.get("params_vs_dense"))}
        card = {
            "name": f"{study.name}-{alias}",
            "folder_name": alias,
            "alias": alias,
            "study": study.name,
            "study_dir": str(study.path),
            "trial_id": trial_id,
            "picked_by": "trial id" if by_id else "pareto pick",
            "on_front": bool(on_front),
            "is_baseline": bool(row.get("is_baseline")),
            "plugins": study.meta.get("plugins") or None,  # SDSNN_PLUGINS the study ran with (its backbone)
            "dataset": cfg.data.dataset,
            "time_steps": cfg.data.time_steps,
            "input_shape": [int(d) for d in loaded.input_shape],
            "test": {"acc": float(test["acc"]), "loss": float(test["loss"]), "samples": int(len(labels)),
                     "identical_predictions": identical, "max_abs_rate_diff": max_diff,
                     "tied_top": _tied_top(rates_loaded)},
            "parameters": {"compact": _n_params(loaded), "dense": _n_params(dense_ref),
                           "compact_nonzero": _n_nonzero(loaded), "dense_nonzero": _n_nonzero(dense_ref)},
            "widths": {"dense": live_widths(dense_model, None), "compact": live_widths(dense_model, masks)},
            "energy_test": {k: float(v) for k, v in energy.to_metrics().items()} | {"samples": int(energy.samples)},
            "speed": {"compact_ms": t_compact, "dense_ms": t_dense, "speedup": t_dense / t_compact if t_compact > 0 else None,
                      "device": "cpu", "threads": 1, "repeats": 5, "statistic": "fastest round",
                      "batch_size": int(batches[0].shape[1]), "samples": int(sum(int(b.shape[1]) for b in batches))},
            "trial_metrics": metrics,
            "vs_dense_baseline": deltas,
            "config": json.loads(cfg.model_dump_json()),
            "files": ["model.safetensors", "model.json", "MODEL_CARD.md", "card.json"],
        }
        _write_text(work / "card.json", json.dumps(card, indent=2) + "\n")
        _write_text(work / "MODEL_CARD.md", _card_md(card))
        os.chmod(work, 0o755)
        if final.exists():
            old = final.with_name(f".{alias}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(work, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return Exported(trial_id=trial_id, alias=alias, folder=final, identical_predictions=identical,
                    test_samples=int(len(labels)), card=card)


def _register(study: Study, exp: Exported, row: pd.Series) -> tuple[Optional[dict], Optional[str]]:
    """Log the exported folder to the trial's MLflow run and register it with an alias.

    Each export gets its own artifact folder (``export/<alias>/<UTC time to the microsecond>``), so an earlier
    version's files are never overwritten by a later export; the card files there are logged
    again once they name the version (as the local folder's do)."""
    uri = study.meta.get("tracking_uri")
    run_id = str(row.get("mlflow_run_id") or "")
    if run_id in ("", "nan", "None"):  # no child run recorded: log to the study's parent run
        run_id = study.meta.get("parent_run_id")
    if not uri or not run_id:
        return None, "study.json names no MLflow tracking URI / run; not registered"
    why = store_unreachable(uri)
    if why:
        return None, f"{why}; not registered"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = _alias(f"sdsnn-{study.name}")
    # microseconds: two exports in the same second (a script) must not share a folder
    art_path = f"export/{exp.alias}/{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S.%fZ')}"
    try:
        source = log_study_artifact(client, run_id, exp.folder, art_path, study.path, uri)
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description=f"SD-SNN compact models exported from study {study.name} ({study.dataset}); "
                                  f"safetensors + JSON, load with sdsnn.load_model")
        t = exp.card["test"]
        mv = client.create_model_version(
            name, source=source, run_id=run_id,
            tags={"trial_id": exp.trial_id, "alias": exp.alias, "dataset": study.dataset,
                  "format": "sdsnn-model (safetensors + JSON)", "test_acc": f"{t['acc']:.6f}",
                  "identical_predictions": str(exp.identical_predictions)},
            description=f"trial {exp.trial_id}, picked as {exp.alias}")
        client.set_registered_model_alias(name, exp.alias, mv.version)
        registered = {"name": name, "version": str(mv.version), "alias": exp.alias, "source": source,
                      "uri": f"models:/{name}@{exp.alias}"}
        exp.card["registered"] = registered
        _write_text(exp.folder / "card.json", json.dumps(exp.card, indent=2) + "\n")
        _write_text(exp.folder / "MODEL_CARD.md", _card_md(exp.card))
        for f in ("card.json", "MODEL_CARD.md"):
            log_study_artifact(client, run_id, exp.folder / f, art_path, study.path, uri)
    except (MlflowException, OSError) as e:
        why = getattr(e, "message", None) or str(e)
        return None, f"MLflow registration failed ({why.splitlines()[0] if why else type(e).__name__})"
    return registered, None


def pick_trial_by_id(study: Study, trial_id: str) -> tuple[str, pd.Series, Optional[pd.Series]]:
    """(alias ``trial-<id>``, row, the study's dense baseline row or None) for one completed trial
    of ``study``, on the Pareto front or not (no Pareto analysis needed: it works when no trial is
    feasible too). A searched trial's row gets the same comparison with the baseline as the front's
    rows; the baseline itself gets none."""
    from .pareto import _accuracy_metric, _add_deltas

    trials = study.trials.copy()
    trials.insert(0, "study", study.name)
    rows = trials[trials["trial_id"].astype(str) == str(trial_id)]
    if not len(rows):
        known = ", ".join(trials["trial_id"].astype(str).tolist()[:8])
        raise UserError(f"--trial {trial_id}: no such trial in the study (its trials: {known}"
                        f"{', ...' if len(trials) > 8 else ''}; see trials.csv)")
    if str(rows.iloc[0].get("status")) != "completed":
        raise UserError(f"--trial {trial_id}: the trial is '{rows.iloc[0].get('status')}', not completed; only a "
                        f"completed trial has a final checkpoint to export")
    is_base = trials["is_baseline"]  # bool: load_study parses the column
    baselines = trials[is_base & (trials["status"].astype(str) == "completed")].tail(1)
    if bool(is_base[rows.index[0]]):
        return _alias(f"trial-{trial_id}"), rows.iloc[0], None
    row = _add_deltas(rows.iloc[:1], baselines, _accuracy_metric(study.objectives, trials.columns)).iloc[0]
    return _alias(f"trial-{trial_id}"), row, baselines.iloc[0] if len(baselines) else None


def export_study(study_dir: str | Path, pick: str, out_dir: str | Path, *, register: bool = True,
                 overwrite: bool = False, progress: bool = False, trial: Optional[str] = None) -> list[Exported]:
    """Export the picked Pareto trials of one study folder (see module doc), or with ``trial``
    the one completed trial of that id (alias ``trial-<id>``), on the front or not.

    A pick folder that exists already is replaced only with ``overwrite`` (checked for every pick
    before anything is exported)."""
    from .pareto import load_study

    if pick not in PICKS:
        raise UserError(f"--pick {pick!r} is not one of {', '.join(PICKS)}")
    study = load_study(study_dir)
    load_study_plugins(Path(study_dir), study.meta)  # its backbones and datasets, as resume does
    if trial is not None:
        alias, row, baseline = pick_trial_by_id(study, trial)
        try:
            on_front = str(trial) in set(analyze([study]).front["trial_id"].astype(str))
        except UserError:  # no feasible trial: no front
            on_front = False
        picked = [(alias, row)]
    else:
        res = analyze([study])
        picked = pick_trials(res, pick)
        baseline = res.baselines.iloc[0] if len(res.baselines) else None
        on_front = True
    taken = [Path(out_dir) / alias for alias, _ in picked if (Path(out_dir) / alias).exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} exists already; replace it with --overwrite (the registry then gets a new "
                        f"version) or export to another --out")
    out: list[Exported] = []
    for alias, row in picked:
        exp = export_trial(study, row, alias, Path(out_dir), baseline=baseline, progress=progress,
                           on_front=on_front, by_id=trial is not None)
        if register:
            exp.registered, note = _register(study, exp, row)
            if note:
                exp.notes.append(note)
        out.append(exp)
    return out

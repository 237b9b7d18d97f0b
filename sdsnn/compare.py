"""One experiment against its dense baseline: what ``sdsnn-search train`` prints.

The SD-SNN run and a dense run of the same backbone and budget (development off) are trained
with the same seed; each reports its last epoch's validation accuracy (what a search selects
on) and is evaluated once on the test set at its end.

A run folder holds ``sdsnn/`` and, with the baseline, ``dense/`` (each: checkpoint.pt,
config.json, metrics.jsonl, test.json) and ``compare.json``, which records whether the run has a
baseline, so that ``--resume`` continues it as it was started.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import ExperimentConfig, flatten_dict
from .errors import UserError
from .train import CHECKPOINT_NAME, TrainResult, train

__all__ = ["Comparison", "train_against_dense", "check_run_folder", "resume_hint", "COMPARISON_ROWS"]

#: the files :func:`sdsnn.train.train` writes into a run folder (``--overwrite`` removes them)
RUN_FILES = (CHECKPOINT_NAME, "config.json", "metrics.jsonl", "test.json")
#: beside ``sdsnn/`` and ``dense/``: ``{"baseline": bool}``
COMPARE_FILE = "compare.json"

#: (label, metric key, format) rows of the final table.
COMPARISON_ROWS = [
    ("validation accuracy", "val_acc", "{:.2%}"),
    ("test accuracy", "test_acc", "{:.2%}"),
    ("synaptic pruning", "syn_prune_rate", "{:.2%}"),
    ("  by the masks alone", "syn_prune_rate_masks", "{:.2%}"),
    ("neuron pruning", "neuron_prune_rate", "{:.2%}"),
    ("SOPs / sample", "sops", "{:,.0f}"),
    ("MACs / sample", "macs", "{:,.0f}"),
    ("energy / sample (pJ)", "energy_pj", "{:,.1f}"),
    ("parameters (compacted)", "params", "{:,.0f}"),
]


@dataclass
class Comparison:
    run: TrainResult
    dense: Optional[TrainResult]
    config: Optional[ExperimentConfig] = None

    def notes(self) -> list[str]:
        """Plain-language remarks on the result (e.g. why nothing was pruned)."""
        cfg, m = self.config, self.run.metrics
        if cfg is None or cfg.plasticity.mode == "dense" or self.run.status != "completed":
            return []
        n = cfg.plasticity.spine_window
        steps = int(m.get("dev_steps", 0))
        if m.get("neuron_prune_rate", 0.0) == 0.0 and steps <= 2 * n:
            every = "epoch" if cfg.plasticity.develop_every == "epoch" else f"{cfg.plasticity.develop_every} optimizer steps"
            return [f"nothing was pruned yet: neuronal pruning starts at development step 2N+1 = {2 * n + 1} "
                    f"(spine_window N = {n}, one step per {every}) and this run made {steps}; train longer "
                    f"(--epochs), develop more often (--set plasticity.develop_every=K) or shorten the window "
                    f"(--set plasticity.spine_window=1)"]
        return []

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(label, SD-SNN value, dense value, delta) as display strings."""

        def get(res: Optional[TrainResult], key: str) -> Optional[float]:
            if res is None:
                return None
            if res.test and key in res.test:
                return res.test[key]
            return res.metrics.get(key)

        out = []
        for label, key, fmt in COMPARISON_ROWS:
            a, b = get(self.run, key), get(self.dense, key)
            sa = fmt.format(a) if a is not None else "-"
            sb = fmt.format(b) if b is not None else "-"
            if a is None or b is None:
                delta = "-"
            elif key in ("energy_pj", "sops", "macs", "params") and b:
                delta = f"x{a / b:.3f}"
            elif key in ("energy_pj", "sops", "macs", "params"):  # none in either (MACs of event data)
                delta = "-" if a == 0 else f"{a - b:+,.1f}"
            elif "{:.2%}" == fmt:
                delta = f"{(a - b) * 100:+.2f} pt"
            else:
                delta = f"{a - b:+,.1f}"
            out.append((label, sa, sb, delta))
        return out


#: Settings a resumed run may change: the schedule's length and where / how it runs.
RESUME_MAY_CHANGE = ("train.epochs", "train.threads", "train.device", "data.data_root", "data.num_workers")


def check_resumable(run_dir: Path, cfg: ExperimentConfig) -> None:
    """:class:`UserError` unless ``cfg`` equals the config the run in ``run_dir`` was trained with,
    apart from :data:`RESUME_MAY_CHANGE` (a resumed run continues *that* experiment; a different
    model would not load and different data or development would silently mix two experiments).
    A longer ``train.epochs`` extends the cosine schedule from where it stands: that is not the
    same as a fresh run of that length."""
    path = Path(run_dir) / "config.json"
    if not (Path(run_dir) / CHECKPOINT_NAME).is_file():
        return  # nothing trained here yet: the run starts this folder afresh
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        why = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
        raise UserError(f"--resume: {path} is {why}, so the settings {run_dir} was trained with are unknown; restore "
                        f"the file, or start the run afresh with --overwrite") from None
    try:  # a setting added since the run was saved counts with its default (what the run used)
        old = flatten_dict(ExperimentConfig.model_validate(raw).to_dict())
    except (ValueError, TypeError):  # a setting removed since: compare as saved
        old = flatten_dict(raw)
    new = flatten_dict(cfg.to_dict())
    diff = [k for k in sorted(set(old) | set(new)) if k not in RESUME_MAY_CHANGE and old.get(k) != new.get(k)]
    metrics = Path(run_dir) / "metrics.jsonl"
    done = len(metrics.read_text().splitlines()) if metrics.is_file() else 0
    if cfg.train.epochs < done:
        raise UserError(f"--resume: {run_dir.parent} has trained {done} epochs already; give --epochs {done} or more")
    if diff:
        shown = "; ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:3])
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        raise UserError(f"--resume: {run_dir.parent} was trained with other settings: {shown}{more}; resume it with "
                        f"its own settings (only {', '.join(RESUME_MAY_CHANGE)} may change) or use another --out")


def check_run_folder(cfg: ExperimentConfig, out: Optional[Path], *, baseline: Optional[bool] = None,
                     resume: bool = False, overwrite: bool = False) -> bool:
    """Check ``out`` for :func:`train_against_dense` before anything is read or written, and
    return whether to train the dense baseline: ``baseline``, else (None) the resumed run's own
    choice (``compare.json``; runs saved before it have a baseline) or True for a new run.

    A folder that already holds a run is continued only with ``resume`` (same settings as both
    parts were trained with, see :func:`check_resumable`) and replaced only with ``overwrite``;
    ``resume`` on a folder without a checkpoint is an error (one-line :class:`UserError`s).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if out is None:
        return True if baseline is None else baseline
    held = [p for p in (out / "sdsnn" / CHECKPOINT_NAME, out / "dense" / CHECKPOINT_NAME) if p.exists()]
    if resume and not (out / "sdsnn" / CHECKPOINT_NAME).exists():
        raise UserError(f"--resume: {out} has no checkpoint to continue ({out / 'sdsnn' / CHECKPOINT_NAME} "
                        f"is missing); drop --resume to start a new run there")
    if held and not resume and not overwrite:
        raise UserError(f"{out}: holds a run already ({held[0]}); continue it with --resume, replace it "
                        f"with --overwrite, or pick another --out")
    if baseline is None:
        baseline = True
        if resume and (out / COMPARE_FILE).is_file():
            try:
                baseline = bool(json.loads((out / COMPARE_FILE).read_text())["baseline"])
            except (OSError, ValueError, KeyError, TypeError):
                raise UserError(f"--resume: {out / COMPARE_FILE} is unreadable; give --baseline or --no-baseline "
                                f"to say whether the run has a dense baseline") from None
    if resume:
        check_resumable(out / "sdsnn", cfg)
        if baseline and cfg.plasticity.mode != "dense":
            check_resumable(out / "dense", cfg.dense_baseline())
    return baseline


def resume_hint(out: Path) -> str:
    """What to do after an interrupted :func:`train_against_dense` into ``out``."""
    if (out / "sdsnn" / CHECKPOINT_NAME).is_file():
        return f"continue with  sdsnn-search train --resume --out {out}"
    return f"no epoch had finished, so there is nothing to resume in {out}; start it again with --overwrite"


def _clear_run(run_dir: Path) -> None:
    """Remove what :func:`sdsnn.train.train` wrote into ``run_dir`` (other files stay)."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def train_against_dense(
    cfg: ExperimentConfig,
    out_dir: Optional[str | Path] = None,
    *,
    baseline: Optional[bool] = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Comparison:
    """Train ``cfg`` and (unless it is dense already or without a baseline) its dense baseline.

    ``baseline``: None continues a resumed run as it was started (else True); see
    :func:`check_run_folder` for the folder rules. ``overwrite`` replaces both parts of the old
    run (once the new run's first epoch is saved): a ``dense/`` run left from before never stands
    beside a new run without a baseline.
    """
    out = Path(out_dir) if out_dir is not None else None
    baseline = check_run_folder(cfg, out, baseline=baseline, resume=resume, overwrite=overwrite)
    settled: list[bool] = []

    def settle(metrics: dict, run_path: Optional[Path]) -> None:
        """After the first epoch is checkpointed (a config that fails to build leaves the old run
        as it was): record the baseline choice, and drop an old baseline this run replaces."""
        if settled or out is None:
            return
        settled.append(True)
        if overwrite and not baseline:
            _clear_run(out / "dense")  # with a baseline, its own training rewrites dense/
        (out / COMPARE_FILE).write_text(json.dumps({"baseline": baseline}) + "\n")

    run = train(cfg, out / "sdsnn" if out else None, resume=resume, on_epoch=settle, evaluate_test=True,
                progress=progress)
    dense = None
    if baseline and cfg.plasticity.mode != "dense":
        dcfg = cfg.dense_baseline()
        dense = train(dcfg, out / "dense" if out else None, resume=resume, evaluate_test=True, progress=progress)
    return Comparison(run, dense, cfg)

"""Live progress of a study (rich) and the final Pareto table.

On a terminal a live panel shows trials done / running / failed and the best value so far per
objective; elsewhere (logs, CI) one line is printed per finished trial. At the end
:meth:`ProgressView.final` prints the Pareto set (non-dominated completed trials, via
``moocore.is_nondominated``) and where everything was written.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .stop import cut_short

__all__ = ["ProgressView", "pareto_rows"]


def _feasible_rows(df: pd.DataFrame, constraints: Optional[list[dict[str, Any]]]) -> pd.DataFrame:
    """Completed, non-baseline trials that satisfy the space's constraints."""
    from .pareto import Constraint, feasible_mask

    ok = df[(df["status"] == "completed") & (~df["is_baseline"].astype(bool))]
    if constraints and len(ok):
        ok = ok[feasible_mask(ok, [Constraint.from_dict(c) for c in constraints])]
    return ok


def pareto_rows(df: pd.DataFrame, objectives: list[dict[str, Any]],
                constraints: Optional[list[dict[str, Any]]] = None) -> pd.DataFrame:
    """Completed, non-baseline trials that satisfy the space's constraints and that no other such
    trial dominates (the same front as ``sdsnn-search pareto`` for one study)."""
    import moocore

    if df is None or not len(df):
        return df
    metrics = [o["metric"] for o in objectives]
    ok = _feasible_rows(df, constraints)
    ok = ok.dropna(subset=[m for m in metrics if m in ok.columns])
    if not len(ok) or any(m not in ok.columns for m in metrics):
        return ok.iloc[0:0]
    pts = np.column_stack([
        ok[o["metric"]].astype(float).to_numpy() * (-1.0 if o["mode"] == "max" else 1.0) for o in objectives
    ])
    mask = moocore.is_nondominated(pts, maximise=False, keep_weakly=False)
    return ok[np.asarray(mask, dtype=bool)].sort_values(metrics[0], ascending=objectives[0]["mode"] == "min")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


class ProgressView(Callback):
    """Tune callback that renders study progress with rich (driver side)."""

    def __init__(self, spec, study_dir: Path, enabled: bool = True) -> None:
        self.objectives = [o.model_dump() for o in spec.objectives]
        self.constraints = [c.model_dump() for c in spec.constraints]
        self.total_epochs = spec.epochs
        self.total = spec.search.num_samples + (1 if spec.search.baseline else 0)
        self.study_dir = Path(study_dir)
        self.enabled = enabled
        self._state: dict[str, str] = {}
        self._best: dict[str, float] = {}
        self._live: Optional[Live] = None
        self._console: Optional[Console] = None
        self._last = 0.0
        self._t0 = time.time()

    def __getstate__(self):
        d = self.__dict__.copy()
        d["_live"] = None
        d["_console"] = None
        return d

    # context manager around Tuner.fit
    def __enter__(self):
        if self.enabled:
            self._console = Console()
            if self._console.is_terminal:
                self._live = Live(self._render(), console=self._console, refresh_per_second=2, transient=True)
                self._live.__enter__()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        return False

    def _counts(self) -> dict[str, int]:
        c = {"completed": 0, "running": 0, "failed": 0}
        for s in self._state.values():
            c[s] = c.get(s, 0) + 1
        return c

    def _render(self) -> Table:
        c = self._counts()
        t = Table(title=f"study {self.study_dir.name}", show_header=True)
        t.add_column("done")
        t.add_column("running")
        t.add_column("failed")
        t.add_column("elapsed")
        for o in self.objectives:
            t.add_column(f"best {o['metric']} ({o['mode']})")
        t.add_row(f"{c['completed']}/{self.total}", str(c["running"]), str(c["failed"]),
                  f"{time.time() - self._t0:.0f}s", *[_fmt(self._best.get(o["metric"])) for o in self.objectives])
        return t

    def _refresh(self, force: bool = False) -> None:
        if self._live is not None and (force or time.time() - self._last > 0.5):
            self._live.update(self._render())
            self._last = time.time()

    def _say(self, text: str) -> None:
        if self._console is not None and self._live is None:
            self._console.print(text, highlight=False)

    def setup(self, **info):
        """A resumed study counts the trials it finished before (from its trials table)."""
        path = self.study_dir / "trials.parquet"
        if not path.is_file():
            return
        try:
            df = pd.read_parquet(path)
        except Exception:  # an unreadable table only costs the head start of the counter
            return
        for _, r in df.iterrows():
            st = str(r.get("status"))
            if st in ("completed", "failed", "nan"):
                self._state[str(r["trial_id"])] = "completed" if st == "completed" else "failed"
            if st == "completed" and not bool(r.get("is_baseline", False)):
                self._note_best(r)

    def _note_best(self, values) -> None:
        for o in self.objectives:
            v = values.get(o["metric"])
            if isinstance(v, (int, float)) and math.isfinite(v):
                b = self._best.get(o["metric"])
                if b is None or (v > b if o["mode"] == "max" else v < b):
                    self._best[o["metric"]] = float(v)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._state[trial.trial_id] = "running"
        self._refresh(True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        baseline = bool(trial.config.get("is_baseline", False))
        if cut_short(last, getattr(self, "total_epochs", 0)):
            self._state[trial.trial_id] = "interrupted"
            self._say(f"{'baseline' if baseline else 'trial'} {trial.trial_id} interrupted after epoch "
                      f"{int(last.get('epoch', 0) or 0)} of {self.total_epochs}")
            self._refresh(True)
            return
        self._state[trial.trial_id] = "completed"
        if not baseline:
            self._note_best(last)
        vals = "  ".join(f"{o['metric']}={_fmt(last.get(o['metric']))}" for o in self.objectives)
        c = self._counts()
        self._say(f"[{c['completed'] + c['failed']}/{self.total}] {'baseline' if baseline else 'trial'} "
                  f"{trial.trial_id} completed  {vals}")
        self._refresh(True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._state[trial.trial_id] = "failed"
        nan = (trial.last_result or {}).get("trial_status") == "nan"
        c = self._counts()
        from .tracking import error_line

        why = "loss became NaN" if nan else error_line(trial)
        role = "baseline" if trial.config.get("is_baseline", False) else "trial"
        self._say(f"[{c['completed'] + c['failed']}/{self.total}] {role} {trial.trial_id} failed: {why}")
        self._refresh(True)

    def on_step_end(self, iteration, trials, **info):
        self._refresh()

    # --------------------------------------------------------------- the end
    def final(self, outcome) -> None:
        if not self.enabled:
            return
        console = Console() if Console().is_terminal else Console(width=200)
        df = outcome.table
        front = pareto_rows(df, self.objectives, getattr(self, "constraints", None))
        from .pareto import Constraint

        constraints = getattr(self, "constraints", None) or []
        done = len(_feasible_rows(df, None)) if df is not None and len(df) else 0
        if done and (front is None or not len(front)):
            cons = "; ".join(str(Constraint.from_dict(c)) for c in constraints) or "none"
            console.print(f"no Pareto set: none of the {done} completed search trials meets the constraints "
                          f"({cons}) with finite objectives; to analyse them under looser constraints edit "
                          f"'constraints' in {outcome.study_dir / 'study.json'} and run  sdsnn-search pareto "
                          f"{outcome.study_dir}")
        if front is not None and len(front):
            if constraints:
                cons = "; ".join(str(Constraint.from_dict(c)) for c in constraints)
                of = f"{len(_feasible_rows(df, constraints))} feasible ({cons}) / {done} completed search trials"
            else:
                of = f"{done} completed search trials"
            t = Table(title=f"Pareto set of {outcome.name}: {len(front)} on the front of {of}")
            t.add_column("trial")
            for o in self.objectives:
                t.add_column(f"{o['metric']} ({o['mode']})", justify="right")
            cfg_cols = [c for c in df.columns if c.startswith("config/")]
            for c in cfg_cols:
                t.add_column(c.rsplit(".", 1)[-1], justify="right")
            for _, r in front.iterrows():
                t.add_row(str(r["trial_id"]), *[_fmt(r.get(o["metric"])) for o in self.objectives],
                          *[_fmt(r.get(c)) for c in cfg_cols])
            console.print(t)
        base = df[df["is_baseline"]] if len(df) else df
        if len(base):
            r = base.iloc[0]
            vals = "  ".join(f"{o['metric']}={_fmt(r.get(o['metric']))}" for o in self.objectives)
            console.print(f"dense baseline {r['trial_id']} ({r['status']}): {vals}")
        c = outcome.counts
        cut = f", {c['interrupted']} interrupted" if c.get("interrupted") else ""
        console.print(f"trials: {c.get('completed', 0)} completed, {c.get('failed', 0) + c.get('nan', 0)} failed{cut}"
                      f"{'; study interrupted: continue with  sdsnn-search resume ' + str(outcome.study_dir) if outcome.interrupted else ''}")
        if c.get("failed", 0) and not outcome.interrupted:
            console.print(f"{c['failed']} failed (not NaN): once the cause is fixed, run them again with  "
                          f"sdsnn-search resume {outcome.study_dir} --retry-failed")
        d = outcome.study_dir
        console.print(f"written to {d}\n  trials table  {d / 'trials.csv'} (+ .parquet)\n  run folders   {d / 'trials'}/"
                      f"\n  optuna study  {d / 'optuna.db'}\n  ray state     {d / 'ray'}\n"
                      f"  mlflow        {outcome.tracking_uri}  (browse: sdsnn-search ui {d})")

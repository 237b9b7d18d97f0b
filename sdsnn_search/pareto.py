"""Pareto analysis of finished studies: fronts, hypervolume, knee point, deltas vs the dense baseline.

A study folder (``results/<study>/``, see docs/internals.md) holds ``study.json`` (objectives,
constraints, reference point) and the trials table. :func:`analyze_studies` loads one or more
study folders, merges the studies of the same dataset and returns one :class:`ParetoResult` per
dataset.

Conventions
-----------
* Objectives are ``{metric, mode}`` with mode ``max`` or ``min``. Internally every objective is
  turned into minimisation (max objectives and their reference coordinate are negated), which is
  what moocore assumes.
* Candidates are the *completed*, non-baseline trials whose objective values are all finite and
  that satisfy every constraint. The dense baseline (``is_baseline``) is the reference the deltas
  are taken against; it is not a candidate of the front.
* Non-dominated set: :func:`moocore.is_nondominated` (duplicates of a front point: first kept).
* Hypervolume: :func:`moocore.hypervolume` with the space's fixed reference point; points that do
  not strictly dominate the reference point add nothing.
* Hypervolume history: after each trial in the order the trials finished, the hypervolume of the
  candidates seen so far. The order comes from the end times of the trials' MLflow runs
  (``mlflow_run_id``) when the study has a tracking store, else from the table's row order; merged
  studies follow each other in the order of their ``created`` time.
* Knee: the front member minimising the augmented achievement scalarizing function (ASF, equal
  weights) on objectives normalised by the front's ideal and nadir points, i.e. the member
  closest to the ideal point in the weighted Chebyshev sense (Wierzbicki's reference-point
  method). It always lies on the front.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from sdsnn.errors import UserError

from .studyfile import STUDY_FILE, read_study, store_unreachable

__all__ = [
    "Objective",
    "Constraint",
    "Study",
    "ParetoResult",
    "load_study",
    "to_minimisation",
    "nondominated_mask",
    "hypervolume",
    "hypervolume_history",
    "knee_index",
    "feasible_mask",
    "analyze",
    "analyze_by_dataset",
    "analyze_studies",
]

_ASF_AUGMENTATION = 1e-6


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" | "min"

    @property
    def maximise(self) -> bool:
        return self.mode == "max"


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str  # ">=" | "<="
    value: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> "Constraint":
        """From its study.json / space form ``{"metric", "op", "value"}``."""
        return cls(str(c["metric"]), str(c["op"]), float(c["value"]))


@dataclass
class Study:
    """One study folder: its ``study.json`` and its trials table."""

    path: Path
    meta: dict
    trials: pd.DataFrame
    order_source: str = "table row order"
    label: str = ""  # set by analyze: the name, made unique among merged studies (see _labels)

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.path.name)

    @property
    def tag(self) -> str:
        """How tables and plots name this study: its label where analyze gave one, else its name."""
        return self.label or self.name

    @property
    def finished(self) -> bool:
        """False when the study was interrupted or is still running (study.json ``finished``)."""
        return self.meta.get("finished") is not False

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset") or "unknown")

    @property
    def objectives(self) -> list[Objective]:
        return [Objective(str(o["metric"]), str(o["mode"])) for o in self.meta["objectives"]]

    @property
    def constraints(self) -> list[Constraint]:
        return [Constraint.from_dict(c) for c in self.meta.get("constraints") or []]

    @property
    def reference_point(self) -> Optional[list[float]]:
        """The space's reference point, or None where the space gave none (see :func:`analyze`)."""
        ref = self.meta.get("reference_point")
        return [float(v) for v in ref] if ref else None


@dataclass
class ParetoResult:
    """The analysis of one dataset (one or more merged studies)."""

    dataset: str
    studies: list[Study]
    objectives: list[Objective]
    constraints: list[Constraint]
    reference_point: list[float]
    trials: pd.DataFrame  # all rows of all studies, with columns study, feasible, on_front
    front: pd.DataFrame  # front members (sorted by the first objective), with delta columns
    knee_trial_id: str
    hypervolume: float
    history: pd.DataFrame  # columns: order, study, trial_id, hypervolume
    baselines: pd.DataFrame  # the dense baseline row(s), one per study (may be empty)
    counts: dict = field(default_factory=dict)
    reference_point_derived: bool = False  # the space gave none: derived from the trials
    notes: list[str] = field(default_factory=list)  # what a reader of the figures must know (see analyze)

    @property
    def knee(self) -> pd.Series:
        # by the flag, not the trial id: merged studies can share trial ids
        return self.front.loc[self.front["is_knee"].astype(bool)].iloc[0]

    def best(self, metric: str, mode: str) -> pd.Series:
        """The front member that is best on ``metric`` (ties: first in front order)."""
        col = pd.to_numeric(self.front[metric], errors="coerce")
        idx = col.idxmax() if mode == "max" else col.idxmin()
        return self.front.loc[idx]


# ----------------------------------------------------------------------------- numerics


def _as_points(values: Any, n_obj: Optional[int] = None) -> np.ndarray:
    pts = np.asarray(values, dtype=float)
    if pts.ndim == 1:
        pts = pts.reshape(-1, n_obj or 1)
    return pts


def to_minimisation(values: Any, maximise: Sequence[bool]) -> np.ndarray:
    """Objective values [n, m] as minimisation: columns of maximised objectives negated."""
    pts = _as_points(values, len(maximise))
    sign = np.where(np.asarray(maximise, dtype=bool), -1.0, 1.0)
    return pts * sign


def nondominated_mask(values: Any, maximise: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated rows (duplicates of a front point: only the first)."""
    import moocore

    pts = to_minimisation(values, maximise)
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(pts, maximise=False, keep_weakly=False), dtype=bool)


def hypervolume(values: Any, maximise: Sequence[bool], reference_point: Sequence[float]) -> float:
    """Hypervolume of ``values`` against ``reference_point`` (both in the objectives' own units)."""
    import moocore

    pts = to_minimisation(values, maximise)
    ref = to_minimisation(np.asarray(reference_point, dtype=float).reshape(1, -1), maximise)[0]
    if len(pts) == 0:
        return 0.0
    pts = pts[np.all(pts < ref, axis=1)]  # only points strictly better than the reference count
    if len(pts) == 0:
        return 0.0
    return float(moocore.hypervolume(pts, ref=ref, maximise=False))


def hypervolume_history(values: Any, maximise: Sequence[bool], reference_point: Sequence[float],
                        counted: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Hypervolume after each row (in order) of the rows with ``counted`` True seen so far."""
    pts = to_minimisation(values, maximise)
    n = len(pts)
    counted_arr = np.ones(n, dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
    maxi = [False] * pts.shape[1]
    ref = to_minimisation(np.asarray(reference_point, dtype=float).reshape(1, -1), maximise)[0]
    out = np.zeros(n, dtype=float)
    current = 0.0
    front = np.zeros((0, pts.shape[1]))
    for i in range(n):
        if counted_arr[i] and np.all(np.isfinite(pts[i])):
            front = np.vstack([front, pts[i]])
            keep = nondominated_mask(front, maxi)
            front = front[keep]
            current = hypervolume(front, maxi, ref)
        out[i] = current
    return out


def knee_index(values: Any, maximise: Sequence[bool]) -> int:
    """Row index of the knee of a non-dominated set: the augmented-ASF minimiser (see module doc)."""
    pts = to_minimisation(values, maximise)
    if len(pts) == 0:
        raise ValueError("knee of an empty set")
    ideal = pts.min(axis=0)
    nadir = pts.max(axis=0)
    span = np.where(nadir - ideal > 0, nadir - ideal, 1.0)
    z = (pts - ideal) / span
    asf = z.max(axis=1) + _ASF_AUGMENTATION * z.sum(axis=1)
    return int(np.argmin(asf))


def feasible_mask(trials: pd.DataFrame, constraints: Sequence[Constraint]) -> np.ndarray:
    """True for rows that satisfy every constraint (a missing or NaN value fails)."""
    ok = np.ones(len(trials), dtype=bool)
    for c in constraints:
        if c.op not in (">=", "<="):
            raise UserError(f"constraint '{c}' has unknown operator {c.op!r}; use '>=' or '<=' (constraints come from the study's study.json: fix them there)")
        if c.metric not in trials.columns:
            raise UserError(
                f"constraint metric '{c.metric}' is not a column of the trials table; "
                f"use one of the metric names in docs/internals.md")
        v = pd.to_numeric(trials[c.metric], errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            sat = v >= c.value if c.op == ">=" else v <= c.value
        ok &= np.isfinite(v) & sat
    return ok


# ----------------------------------------------------------------------------- loading
def _bool_column(col: pd.Series) -> pd.Series:
    if col.dtype == bool:
        return col
    return col.astype(str).str.strip().str.lower().isin(["true", "1", "yes"])


def load_study(path: str | Path, *, use_mlflow: bool = True) -> Study:
    """Read ``study.json`` and the trials table (parquet, else CSV) of a study folder.

    ``use_mlflow=False``: never contact the study's MLflow store (an older table without
    ``ended_at`` then keeps its row order)."""
    p = Path(path)
    meta_file = p / STUDY_FILE
    meta = read_study(p)
    if not meta.get("objectives"):
        raise UserError(f"{meta_file} has no 'objectives'; re-run the study with a current 'sdsnn-search run'")
    if meta.get("reference_point") and len(meta["reference_point"]) != len(meta["objectives"]):
        raise UserError(f"{meta_file}: reference_point has {len(meta['reference_point'])} values for "
                        f"{len(meta['objectives'])} objectives; give one per objective in the space file")
    for o in meta["objectives"]:
        if o.get("mode") not in ("max", "min"):
            raise UserError(f"{meta_file}: objective {o.get('metric')!r} has mode {o.get('mode')!r}; use 'max' or 'min'")
    trials = None
    if (p / "trials.parquet").is_file():
        try:
            trials = pd.read_parquet(p / "trials.parquet")
        except Exception:  # an unreadable parquet falls back to the CSV copy
            trials = None
    if trials is None and (p / "trials.csv").is_file():
        trials = pd.read_csv(p / "trials.csv")
    if trials is None:
        raise UserError(f"study folder {p} has no trials.csv or trials.parquet; the study has not "
                        f"recorded any trial yet - run or resume it first")
    for col in ("trial_id", "status"):
        if col not in trials.columns:
            raise UserError(f"{p}/trials.csv has no '{col}' column; it was not written by 'sdsnn-search run'")
    trials = trials.copy()
    trials["trial_id"] = trials["trial_id"].astype(str)
    trials["is_baseline"] = _bool_column(trials["is_baseline"]) if "is_baseline" in trials.columns else False
    trials, source = _completion_order(trials, meta, use_mlflow)
    return Study(path=p.resolve(), meta=meta, trials=trials, order_source=source)


def _completion_order(trials: pd.DataFrame, meta: dict, use_mlflow: bool = True) -> tuple[pd.DataFrame, str]:
    """Rows sorted by when each trial finished (unfinished ones last, ties in row order).

    The time comes from the table's ``ended_at`` column (written by the runner), else, for tables
    written before it existed, from the end times of the trials' MLflow runs; where neither can
    be had the table's row order stands. Returns (sorted table, a phrase saying where the order
    came from)."""
    if "ended_at" in trials.columns and pd.to_numeric(trials["ended_at"], errors="coerce").notna().any():
        key, source = pd.to_numeric(trials["ended_at"], errors="coerce"), "end times recorded in the trials table"
    else:
        uri, parent = meta.get("tracking_uri"), meta.get("parent_run_id")
        if not uri or not parent or "mlflow_run_id" not in trials.columns:
            return trials, "table row order"
        if not use_mlflow:
            return trials, "table row order (MLflow not read: --no-mlflow)"
        why = store_unreachable(uri)
        if why:
            return trials, f"table row order ({why})"
        try:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            exp_id = meta.get("experiment_id") or client.get_run(parent).info.experiment_id
            runs = client.search_runs([str(exp_id)], filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                                      max_results=50000)
        except Exception:  # an unreadable store only costs the ordering
            return trials, "table row order (MLflow store unreadable)"
        when = {r.info.run_id: (r.info.end_time or r.info.start_time) for r in runs}
        key, source = trials["mlflow_run_id"].astype(str).map(when), "end times of the trials' MLflow runs"
        if key.isna().all():
            return trials, "table row order"
    order = pd.to_numeric(key, errors="coerce").fillna(float("inf")).to_numpy()
    idx = sorted(range(len(trials)), key=lambda i: (order[i], i))
    return trials.iloc[idx].reset_index(drop=True), source


# ----------------------------------------------------------------------------- analysis


def _accuracy_metric(objectives: Sequence[Objective], columns: Sequence[str]) -> Optional[str]:
    for o in objectives:
        if o.maximise and o.metric.endswith("acc"):
            return o.metric
    return "val_acc" if "val_acc" in columns else None


def _add_deltas(front: pd.DataFrame, baselines: pd.DataFrame, acc_metric: Optional[str]) -> pd.DataFrame:
    """Columns comparing each front member with its own study's dense baseline (paper style)."""
    front = front.copy()
    base_by_study = {r["study"]: r for _, r in baselines.iterrows()}

    def _get(row: pd.Series, col: str) -> float:
        try:
            return float(row[col])
        except (KeyError, TypeError, ValueError):
            return math.nan

    gains, e_ratios, p_ratios = [], [], []
    for _, r in front.iterrows():
        b = base_by_study.get(r["study"])
        if b is None:
            gains.append(math.nan), e_ratios.append(math.nan), p_ratios.append(math.nan)
            continue
        gains.append(_get(r, acc_metric) - _get(b, acc_metric) if acc_metric else math.nan)
        be, bp = _get(b, "energy_pj"), _get(b, "params")
        e_ratios.append(_get(r, "energy_pj") / be if be and be > 0 else math.nan)
        p_ratios.append(_get(r, "params") / bp if bp and bp > 0 else math.nan)
    front["acc_gain"] = gains  # accuracy minus the dense baseline's (same units as the metric)
    front["energy_vs_dense"] = e_ratios  # energy per sample / dense baseline's
    front["params_vs_dense"] = p_ratios  # compacted parameters / dense baseline's
    return front


def _reference_point(studies: Sequence[Study], done: np.ndarray, maximise: Sequence[bool]) -> tuple[list[float], bool]:
    """The hypervolume's reference point, and whether it was derived from the trials.

    Merged studies take the worst coordinate of their spaces' points. Where a space gave none,
    the point is the worst value of each objective over the completed trials (``done``, baseline
    included), pushed out by 10 % of that objective's range (of its magnitude, or 1, where all
    trials agree), so that every completed trial counts."""
    given = [s.reference_point for s in studies]
    if all(r is not None for r in given):
        refs = np.array([to_minimisation(np.reshape(r, (1, -1)), maximise)[0] for r in given])
        return list(to_minimisation(refs.max(axis=0).reshape(1, -1), maximise)[0]), False
    m = to_minimisation(np.asarray(done, dtype=float).reshape(-1, len(maximise)), maximise)
    worst, best = m.max(axis=0), m.min(axis=0)
    span = worst - best
    span = np.where(span > 0, span, np.where(np.abs(worst) > 0, np.abs(worst), 1.0))
    return list(to_minimisation((worst + 0.1 * span).reshape(1, -1), maximise)[0]), True


def analyze(studies: Sequence[Study]) -> ParetoResult:
    """Pareto analysis of studies of one dataset (merged)."""
    if not studies:
        raise ValueError("no study to analyze")
    studies = sorted(studies, key=lambda s: str(s.meta.get("created") or ""))
    _check_not_copies(studies)
    _set_labels(studies)
    first = studies[0]
    objectives = first.objectives
    for s in studies[1:]:
        if s.objectives != objectives:
            def _objs(st: Study) -> str:
                return ", ".join(f"{o.metric} ({o.mode})" for o in st.objectives)
            raise UserError(
                f"studies {first.path} ({_objs(first)}) and {s.path} ({_objs(s)}) of dataset '{first.dataset}' "
                f"have different objectives; analyze them in separate 'sdsnn-search pareto' calls")
    maximise = [o.maximise for o in objectives]
    constraints: list[Constraint] = []
    for s in studies:
        for c in s.constraints:
            if c not in constraints:
                constraints.append(c)

    frames = []
    for s in studies:
        t = s.trials.copy()
        t.insert(0, "study", s.tag)
        frames.append(t)
    trials = pd.concat(frames, ignore_index=True, sort=False)
    metrics = [o.metric for o in objectives]
    for m in metrics:
        if m not in trials.columns:
            raise UserError(f"objective '{m}' is not a column of the trials table of {first.path}; "
                            f"the study recorded no such metric - check the space file's objectives")
    where = ", ".join(str(s.path) for s in studies)
    values = trials[metrics].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    completed = (trials["status"].astype(str) == "completed").to_numpy()
    baseline = trials["is_baseline"].to_numpy(dtype=bool)
    finite = np.all(np.isfinite(values), axis=1)
    feasible = completed & ~baseline & finite & feasible_mask(trials, constraints)
    trials["feasible"] = feasible
    counts = {
        "trials": int(len(trials)),
        "completed": int((completed & ~baseline).sum()),
        "feasible": int(feasible.sum()),
        "baseline_completed": int((completed & baseline).sum()),
    }
    if not feasible.any():
        cons = "; ".join(str(c) for c in constraints) or "none"
        if counts["completed"] == 0:
            failed = int((trials["status"].astype(str).isin(["failed", "nan"]) & ~baseline).sum())
            raise UserError(
                f"no search trial of dataset '{first.dataset}' in {where} completed ({failed} failed or diverged); "
                f"see the trials' 'error' tags in MLflow (sdsnn-search ui {first.path}) and run the study again")
        raise UserError(
            f"no feasible trial for dataset '{first.dataset}' in {where}: {counts['feasible']} of "
            f"{counts['completed']} completed search trials satisfy the constraints ({cons}); "
            f"to analyse these trials under looser ones, edit 'constraints' in the study's study.json; "
            f"or run a new study with more trials")

    idx = np.flatnonzero(feasible)
    nd = nondominated_mask(values[idx], maximise)
    on_front = np.zeros(len(trials), dtype=bool)
    on_front[idx[nd]] = True
    trials["on_front"] = on_front

    reference_point, derived = _reference_point(studies, values[completed & finite], maximise)
    hv = hypervolume(values[on_front], maximise, reference_point)
    hist = hypervolume_history(values, maximise, reference_point, counted=feasible)
    history = pd.DataFrame({"order": np.arange(1, len(trials) + 1), "study": trials["study"],
                            "trial_id": trials["trial_id"], "feasible": feasible, "hypervolume": hist})

    baselines = trials[baseline & completed].drop_duplicates("study", keep="last")
    front = trials[on_front].copy()
    front = _add_deltas(front, baselines, _accuracy_metric(objectives, trials.columns))
    front = front.sort_values(metrics[0], ascending=not objectives[0].maximise, kind="stable")
    front = front.reset_index(drop=True)
    k = knee_index(front[metrics].to_numpy(dtype=float), maximise)
    front.insert(2, "is_knee", np.arange(len(front)) == k)
    front["dominated_by_dense"] = _dominated_by_baseline(front, baselines, metrics, maximise)
    return ParetoResult(
        dataset=first.dataset, studies=list(studies), objectives=objectives, constraints=constraints,
        reference_point=[float(v) for v in reference_point], reference_point_derived=derived,
        trials=trials, front=front,
        knee_trial_id=str(front.loc[k, "trial_id"]), hypervolume=hv, history=history,
        baselines=baselines.reset_index(drop=True), counts=counts,
        notes=_notes(studies, constraints, front, objectives))


def _notes(studies: Sequence[Study], constraints: Sequence[Constraint], front: pd.DataFrame,
           objectives: Sequence[Objective]) -> list[str]:
    """Warnings and explanations that belong next to the figures (report.md and the CLI)."""
    notes = []
    for s in studies:
        if not s.finished:
            notes.append(f"study '{s.tag}' has not finished (interrupted, or still running): its front can "
                         f"still change; continue it with 'sdsnn-search resume {s.path}'")
    if len(studies) > 1:
        cons = "; ".join(str(c) for c in constraints) or "none"
        notes.append(f"{len(studies)} studies merged: a trial is feasible only if it meets the constraints of "
                     f"every study ({cons}); the reference point takes each objective's worst coordinate of the "
                     f"studies' points; deltas are against each trial's own study's dense baseline")
    dominated = front[front["dominated_by_dense"]]
    knee = front[front["is_knee"]].iloc[0]
    if len(dominated):
        which = " (the knee among them)" if bool(knee["dominated_by_dense"]) else ""
        notes.append(f"{len(dominated)} of {len(front)} front members{which} are dominated by their study's dense "
                     f"baseline (at least as good on every objective): "
                     f"{', '.join(str(t) for t in dominated['trial_id'])}; the search found no better trade-off "
                     f"than the dense network there (train longer or widen the search space)")
    if len(front) == 2:
        o = objectives[0]
        notes.append(f"the front has two members: normalised by the front's ideal and nadir points they tie on the "
                     f"knee criterion, so the knee is the one with the {'higher' if o.maximise else 'lower'} "
                     f"{o.metric}")
    return notes


def _check_not_copies(studies: Sequence[Study]) -> None:
    """A study and a copy of it (same name, creation time and MLflow parent run) would count every
    trial twice: refuse the merge."""
    seen: dict[tuple, Study] = {}
    for s in studies:
        key = (s.name, s.meta.get("created"), s.meta.get("parent_run_id"))
        if not s.meta.get("created"):
            continue
        if key in seen:
            raise UserError(f"{seen[key].path} and {s.path} are copies of one study ('{s.name}', created "
                            f"{s.meta.get('created')}); merging them would count each trial twice - pass one of them")
        seen[key] = s


def _set_labels(studies: Sequence[Study]) -> None:
    """Give each study a label unique among ``studies``: its name, or, where two merged studies
    share a name, ``<parent folder>/<folder>`` (the whole path if that is not unique either)."""
    names = [s.name for s in studies]
    for s in studies:
        s.label = s.name
        if names.count(s.name) > 1:
            s.label = f"{s.path.parent.name}/{s.path.name}"
    labels = [s.label for s in studies]
    for s in studies:
        if labels.count(s.label) > 1:
            s.label = str(s.path)


def _dominated_by_baseline(front: pd.DataFrame, baselines: pd.DataFrame, metrics: Sequence[str],
                           maximise: Sequence[bool]) -> np.ndarray:
    """True for each front member whose own study's dense baseline is at least as good on every
    objective and better on one: the search found nothing better than the dense network there."""
    base = {r["study"]: r for _, r in baselines.iterrows()}
    out = np.zeros(len(front), dtype=bool)
    for i, (_, r) in enumerate(front.iterrows()):
        b = base.get(r["study"])
        if b is None:
            continue
        mine = to_minimisation(pd.to_numeric(r[list(metrics)], errors="coerce").to_numpy(dtype=float), maximise)[0]
        theirs = to_minimisation(pd.to_numeric(b[list(metrics)], errors="coerce").to_numpy(dtype=float), maximise)[0]
        if np.all(np.isfinite(theirs)):
            out[i] = bool(np.all(theirs <= mine) and np.any(theirs < mine))
    return out


def analyze_by_dataset(paths: Sequence[str | Path], *, use_mlflow: bool = True
                       ) -> tuple[dict[str, ParetoResult], dict[str, str]]:
    """Load study folders, group them by dataset and analyze each group.

    Returns (results, errors), both keyed by dataset name: a dataset whose studies cannot be
    analysed (no feasible trial, say) gets its one-line reason in ``errors`` and does not stop
    the others. A folder that is not a study raises :class:`UserError` before any analysis."""
    if not paths:
        raise UserError("no study folder given; pass one or more results/<study>/ folders")
    groups: dict[str, list[Study]] = {}
    seen: set[Path] = set()
    for p in paths:
        s = load_study(p, use_mlflow=use_mlflow)
        if s.path in seen:
            continue
        seen.add(s.path)
        groups.setdefault(s.dataset, []).append(s)
    results: dict[str, ParetoResult] = {}
    errors: dict[str, str] = {}
    for ds, group in groups.items():
        try:
            results[ds] = analyze(group)
        except UserError as e:
            errors[ds] = str(e)
    return results, errors


def analyze_studies(paths: Sequence[str | Path], *, use_mlflow: bool = True) -> dict[str, ParetoResult]:
    """Like :func:`analyze_by_dataset`, but the first dataset that cannot be analysed raises its
    :class:`UserError`. Keys: dataset names."""
    results, errors = analyze_by_dataset(paths, use_mlflow=use_mlflow)
    if errors:
        raise UserError(next(iter(errors.values())))
    return results

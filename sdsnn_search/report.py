"""Study reports: tables, plots and ``report.md`` from a :class:`sdsnn_search.pareto.ParetoResult`.

:func:`write_report` writes, into each study folder of the result (or into ``out_dir``):

* ``pareto.csv``            the front members with objectives, deltas vs the dense baseline, config;
* ``pareto.json``           summary: hypervolume, knee, reference point, counts;
* ``pareto_front.png``      static front plot (all trials, the front, the knee, the dense baseline);
* ``pareto_front.html``     the same, interactive (plotly, JavaScript embedded: works offline);
* ``hypervolume.csv/.png``  hypervolume after each trial;
* ``pruning_profiles.png``  per-layer synaptic and neuron pruning of the front's members;
* ``report.md``             best points, baseline, parameter importances (from ``optuna.db``).

Every file is written to a temporary name and renamed into place. When ``study.json`` names a
tracking URI and parent run, the files are also logged as artifacts (``pareto/``) on that run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from .pareto import ParetoResult, Study
from .studyfile import log_study_artifact, store_unreachable

__all__ = ["ReportFiles", "write_report", "parameter_importances", "REPORT_FILES"]

REPORT_FILES = ("pareto.csv", "pareto.json", "pareto_front.png", "pareto_front.html",
                "hypervolume.csv", "hypervolume.png", "pruning_profiles.png", "report.md")


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote for one study folder."""

    folder: Path
    files: list[Path]
    logged_to: Optional[str] = None  # MLflow run id the files were logged to
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _layer_columns(df: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in df.columns if c.startswith(prefix + "/")]


def _config_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("config/")]


def _fmt(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, str):  # trial ids such as '09950869' or '1e345678' are names, not numbers
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.3e}"
    return f"{f:.4g}"


def _md_table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = list(dict.fromkeys(c for c in cols if c in df.columns))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


#: Readable names and units of the known metrics: metric -> (name, unit or "").
_METRIC_NAMES = {
    "val_acc": ("validation accuracy", "%"),
    "test_acc": ("test accuracy", "%"),
    "train_acc": ("training accuracy", "%"),
    "energy_pj": ("energy per sample", "pJ"),
    "dense_energy_pj": ("dense energy per sample", "pJ"),
    "energy_ratio": ("energy / dense energy", ""),
    "sops": ("synaptic operations per sample", ""),
    "macs": ("multiply-accumulates per sample", ""),
    "params": ("parameters of the compacted model", ""),
    "syn_prune_rate": ("synapses pruned", "%"),
    "neuron_prune_rate": ("neurons pruned", "%"),
}
#: Counts and energies: ticks with SI suffixes (200k, 1.2M) in the metric's own unit.
_SI_METRICS = {"energy_pj", "dense_energy_pj", "sops", "macs", "params"}


def _metric_name(metric: str) -> tuple[str, str]:
    """(readable name, unit) of a metric; unknown metrics keep their name and get no unit."""
    if metric in _METRIC_NAMES:
        return _METRIC_NAMES[metric]
    for prefix, what in (("syn_prune/", "synapses"), ("neuron_prune/", "neurons")):
        if metric.startswith(prefix):
            return f"{what} pruned in {metric[len(prefix):]}", "%"
    return metric, ""


def _metric_label(metric: str) -> str:
    """'validation accuracy (%)', 'energy per sample (pJ)', ... (the metric name where unknown)."""
    name, unit = _metric_name(metric)
    return f"{name} ({unit})" if unit else name


def _percent_metric(metric: str, values=None) -> bool:
    """A fraction shown in percent: known percent metric whose values (if given) lie in [-1, 1]."""
    if _metric_name(metric)[1] != "%":
        return False
    if values is None:
        return True
    v = pd.to_numeric(pd.Series(values), errors="coerce").abs()
    return bool(v.notna().any() and v.max() <= 1.0 + 1e-9)


def _si_metric(metric: str, values) -> bool:
    """Ticks with SI suffixes: a count or energy whose non-zero values are all at least 1."""
    if metric not in _SI_METRICS:
        return False
    v = pd.to_numeric(pd.Series(values), errors="coerce").abs()
    v = v[v > 0]
    return bool(len(v) and v.min() >= 1.0 and v.max() >= 1e3)


def _compact_num(v: float) -> str:
    """2000000 -> '2e6', 1.5e5 -> '1.5e5', 0.7 -> '0.7' (titles and labels)."""
    s = f"{float(v):.3g}"
    return s.replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")


def _value_text(metric: str, v: float) -> str:
    """A value of ``metric`` with its unit: 'val_acc 0 %' style pieces ('0 %', '2e6 pJ')."""
    if _percent_metric(metric, [v]):
        return f"{_compact_num(100 * float(v))} %"
    unit = _metric_name(metric)[1]
    return f"{_compact_num(v)} {unit}".strip()


def _short(label: str, n: int = 32) -> str:
    """A study label cut to ``n`` characters (the end kept: it is the distinctive part of a path)."""
    label = str(label)
    return label if len(label) <= n else "…" + label[-(n - 1):]


def _label(o) -> str:
    """Axis title of an objective: readable name, unit, and which way is better."""
    return f"{_metric_label(o.metric)} ({'higher' if o.maximise else 'lower'} is better)"


# ----------------------------------------------------------------------------- importances


def parameter_importances(study: Study, objectives) -> tuple[Optional[pd.DataFrame], str]:
    """fANOVA parameter importances per objective from the study's ``optuna.db``.

    Returns (table with one column per objective, note). The table is None when the Optuna
    storage is missing or has too few completed trials; the note says why.
    """
    db = study.path / "optuna.db"
    if not db.is_file():
        return None, f"no optuna.db in {study.path}"
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db}"
    try:
        names = optuna.get_all_study_names(storage=storage)
        if not names:
            return None, "optuna.db holds no study"
        name = study.name if study.name in names else names[0]
        ostudy = optuna.load_study(study_name=name, storage=storage)
        complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
        if len(complete) < 2:
            return None, f"only {len(complete)} completed Optuna trial(s); importances need at least 2"
        cols = {}
        for i, o in enumerate(objectives):
            imp = optuna.importance.get_param_importances(
                ostudy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
                target=lambda t, i=i: t.values[i])
            cols[o.metric] = imp
    except Exception as e:  # importances are a nice-to-have; never break the report
        return None, f"importances unavailable ({type(e).__name__}: {e})"
    table = pd.DataFrame(cols).fillna(0.0)
    table = table.loc[table.max(axis=1).sort_values(ascending=False).index]
    table.index.name = "parameter"
    return table, f"fANOVA (optuna.importance, seed 0) over {len(complete)} completed trials of '{name}'"


# ----------------------------------------------------------------------------- plots


def _plot_front_png(res: ParetoResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = res.objectives
    pairs = [(i, j) for i in range(len(objs)) for j in range(i + 1, len(objs))]
    fig, axes = plt.subplots(1, len(pairs), figsize=(6.4 * len(pairs), 4.8), squeeze=False)
    t = res.trials
    done = t["status"].astype(str) == "completed"
    for ax, (i, j) in zip(axes[0], pairs):
        yi, xj = objs[i].metric, objs[j].metric
        inf = done & ~t["feasible"] & ~t["is_baseline"]
        ax.scatter(t.loc[inf, xj], t.loc[inf, yi], s=18, marker="x", color="0.6", label="infeasible")
        feas = t["feasible"] & ~t["on_front"]
        ax.scatter(t.loc[feas, xj], t.loc[feas, yi], s=20, color="tab:blue", alpha=0.6, label="trials")
        f = res.front.sort_values(xj)
        ax.plot(f[xj], f[yi], "-o", color="tab:red", ms=6, lw=1.2, label="Pareto front")
        k = res.knee
        ax.scatter([k[xj]], [k[yi]], s=220, marker="*", color="gold", edgecolor="k", zorder=5,
                   label=f"knee ({k['trial_id']})")
        if len(res.baselines):
            b = res.baselines
            ax.scatter(b[xj], b[yi], s=90, marker="D", color="k", zorder=5, label="dense baseline")
        ax.set_xlabel(_label(objs[j]))
        ax.set_ylabel(_label(objs[i]))
        if xj.startswith("energy") or xj in ("sops", "macs", "params"):
            vals = pd.to_numeric(t.loc[done, xj], errors="coerce")
            if (vals > 0).all() and vals.max() / max(vals.min(), 1e-300) > 50:
                ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{res.dataset}: Pareto front ({res.counts['feasible']} feasible of "
                 f"{res.counts['completed']} completed trials; hypervolume {res.hypervolume:.4g})", fontsize=10)
    fig.tight_layout()
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _hover(df: pd.DataFrame, res: ParetoResult) -> list[str]:
    cols = [o.metric for o in res.objectives] + ["syn_prune_rate", "neuron_prune_rate", "params"] + _config_columns(df)
    cols = [c for c in cols if c in df.columns]
    out = []
    for _, r in df.iterrows():
        lines = [f"<b>{r['study']} / {r['trial_id']}</b>"] + [f"{c}: {_fmt(r[c])}" for c in cols]
        out.append("<br>".join(lines))
    return out


def _plot_front_html(res: ParetoResult, path: Path) -> None:
    import plotly.graph_objects as go

    objs = res.objectives
    t = res.trials
    done = t["status"].astype(str) == "completed"
    groups = [
        ("infeasible", t[done & ~t["feasible"] & ~t["is_baseline"]], dict(color="#999999", symbol="x", size=6)),
        ("trials", t[t["feasible"] & ~t["on_front"]], dict(color="#1f77b4", size=7, opacity=0.7)),
        ("Pareto front", res.front, dict(color="#d62728", size=9)),
        ("knee", res.front[res.front["is_knee"]], dict(color="gold", symbol="diamond", size=14,
                                                       line=dict(color="black", width=1))),
        ("dense baseline", res.baselines, dict(color="black", symbol="square", size=11)),
    ]
    fig = go.Figure()
    three = len(objs) >= 3
    for name, df, marker in groups:
        if df is None or len(df) == 0:
            continue
        if three:
            fig.add_trace(go.Scatter3d(x=df[objs[1].metric], y=df[objs[2].metric], z=df[objs[0].metric],
                                       mode="markers", name=name, marker=marker, text=_hover(df, res),
                                       hoverinfo="text"))
        else:
            mode = "lines+markers" if name == "Pareto front" else "markers"
            df = df.sort_values(objs[1].metric) if name == "Pareto front" else df
            fig.add_trace(go.Scatter(x=df[objs[1].metric], y=df[objs[0].metric], mode=mode, name=name,
                                     marker=marker, text=_hover(df, res), hoverinfo="text"))
    title = f"{res.dataset}: Pareto front (hypervolume {res.hypervolume:.4g}, knee {res.knee_trial_id})"
    if three:
        fig.update_layout(title=title, scene=dict(xaxis_title=_label(objs[1]), yaxis_title=_label(objs[2]),
                                                  zaxis_title=_label(objs[0])))
    else:
        fig.update_layout(title=title, xaxis_title=_label(objs[1]), yaxis_title=_label(objs[0]))
    with _atomic(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)


def _plot_history(res: ParetoResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = res.history
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.step(h["order"], h["hypervolume"], where="post", color="tab:red")
    ax.scatter(h.loc[h["feasible"], "order"], h.loc[h["feasible"], "hypervolume"], s=12, color="tab:blue",
               label="feasible trial", zorder=3)
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume")
    ax.set_title(f"{res.dataset}: hypervolume history (reference point {[_fmt(v) for v in res.reference_point]})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _plot_profiles(res: ParetoResult, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = res.front
    syn, neu = _layer_columns(f, "syn_prune"), _layer_columns(f, "neuron_prune")
    if not syn and not neu:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), squeeze=False)
    for ax, cols, title in ((axes[0][0], syn, "synaptic pruning rate per layer"),
                            (axes[0][1], neu, "neuron pruning rate per layer")):
        layers = [c.split("/", 1)[1] for c in cols]
        x = np.arange(len(layers))
        for _, r in f.iterrows():
            vals = pd.to_numeric(r[cols], errors="coerce").to_numpy(dtype=float)
            knee = bool(r["is_knee"])
            ax.plot(x, vals, "-o", lw=2.5 if knee else 1.0, ms=5 if knee else 3, alpha=1.0 if knee else 0.6,
                    color="tab:red" if knee else None, label=f"{r['trial_id']}" + (" (knee)" if knee else ""))
        ax.set_xticks(x, layers, rotation=30, ha="right")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) <= 12:
        axes[0][1].legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(f"{res.dataset}: pruning profiles of the {len(f)} front members")
    fig.tight_layout()
    with _atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- tables / markdown


def _front_columns(res: ParetoResult) -> list[str]:
    f = res.front
    first = ["study", "trial_id", "is_knee"] + [o.metric for o in res.objectives]
    deltas = ["acc_gain", "dominated_by_dense", "syn_prune_rate", "neuron_prune_rate", "energy_vs_dense", "params",
              "params_vs_dense",
              "energy_ratio", "val_acc", "val_loss", "energy_pj", "dense_energy_pj", "sops", "epochs", "duration_s"]
    cols = first + [c for c in deltas if c not in first]
    cols += _config_columns(f) + _layer_columns(f, "syn_prune") + _layer_columns(f, "neuron_prune")
    cols += ["run_dir", "mlflow_run_id"]
    seen, out = set(), []
    for c in cols:
        if c in f.columns and c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _summary(res: ParetoResult) -> dict:
    return {
        "dataset": res.dataset,
        "studies": [str(s.path) for s in res.studies],
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in res.objectives],
        "constraints": [{"metric": c.metric, "op": c.op, "value": c.value} for c in res.constraints],
        "reference_point": res.reference_point,
        "reference_point_derived": res.reference_point_derived,
        "hypervolume": res.hypervolume,
        "knee": {"study": str(res.knee["study"]), "trial_id": res.knee_trial_id},
        "front": [{"study": str(r["study"]), "trial_id": str(r["trial_id"])} for _, r in res.front.iterrows()],
        "counts": res.counts,
        "knee_method": "augmented ASF, equal weights, objectives normalised by the front's ideal and nadir",
    }


def _report_md(res: ParetoResult, importances: list[tuple[str, Optional[pd.DataFrame], str]], notes: list[str]) -> str:
    objs = res.objectives
    metrics = [o.metric for o in objs]
    lines = [f"# Pareto report: {res.dataset}", ""]
    lines += [f"Studies: {', '.join(f'`{s.tag}`' for s in res.studies)}. "
              f"Trials: {res.counts['trials']} recorded, {res.counts['completed']} completed search trials, "
              f"{res.counts['feasible']} feasible, {len(res.front)} on the front.", ""]
    lines += ["Objectives: " + ", ".join(f"{o.metric} ({o.mode})" for o in objs) + ". "
              + "Constraints: " + ("; ".join(str(c) for c in res.constraints) or "none") + ". "
              + f"Reference point: ({', '.join(_fmt(v) for v in res.reference_point)})"
              + (" (the space gave none: the worst completed value of each objective, pushed out by 10 % of "
                 "its range; give `reference_point` in the space to compare hypervolumes across studies)"
                 if res.reference_point_derived else "") + ".", ""]
    order = "; ".join(sorted({s.order_source for s in res.studies}))
    lines += [f"**Hypervolume: {res.hypervolume:.6g}** (see hypervolume.png for its history over the "
              f"trials in the order they finished: {order}).", ""]
    k = res.knee
    lines += ["## Knee point", "",
              f"Trial `{res.knee_trial_id}` (study `{k['study']}`), chosen by the augmented achievement "
              "scalarizing function with equal weights on objectives normalised by the front's ideal and "
              "nadir points (the front member closest to the ideal point in the Chebyshev sense).", ""]
    front_cols = ["study", "trial_id"] + metrics + ["acc_gain", "syn_prune_rate", "neuron_prune_rate",
                                                    "energy_vs_dense", "params", "params_vs_dense"]
    lines += [_md_table(res.front[res.front["is_knee"]], front_cols + _config_columns(res.front)), ""]
    if bool(k.get("dominated_by_dense", False)):
        lines += ["**The knee is dominated by the dense baseline** (the baseline is at least as good on every "
                  "objective): this search found no trade-off better than the dense network here.", ""]
    lines += ["## Best points", ""]
    best_rows = []
    for o in objs:
        b = res.best(o.metric, o.mode)
        best_rows.append({"best on": o.metric, **{c: b.get(c) for c in front_cols}})
    lines += [_md_table(pd.DataFrame(best_rows), ["best on"] + front_cols), ""]
    lines += ["## Dense baseline", ""]
    if len(res.baselines):
        lines += [_md_table(res.baselines, ["study", "trial_id"] + metrics + ["params", "energy_pj", "duration_s"]), ""]
        lines += ["Deltas in the front table are against this row of the same study: `acc_gain` = accuracy "
                  "minus the baseline's, `energy_vs_dense` = energy per sample / the baseline's, "
                  "`params_vs_dense` = parameters of the compacted model / the baseline's; pruning rates "
                  "are relative to each trial's own network before pruning. The baseline has the space's fixed "
                  "backbone: a trial whose searched width or depth is larger can keep more parameters than "
                  "it (`params_vs_dense` above 1) while pruning much of its own.", ""]
    else:
        lines += ["No completed dense baseline trial; deltas are not available.", ""]
    lines += ["## Pareto front", "", _md_table(res.front, front_cols + ["dominated_by_dense"]), ""]
    lines += ["## Settings that mattered", ""]
    for study_name, table, note in importances:
        lines += [f"Study `{study_name}`: {note}.", ""]
        if table is not None:
            lines += [_md_table(table.reset_index().head(12), ["parameter"] + list(table.columns)), ""]
    lines += ["## Files", "",
              "`pareto.csv` (front with deltas and configs), `pareto_front.png` / `pareto_front.html` "
              "(static / interactive front), `hypervolume.csv` / `hypervolume.png`, `pruning_profiles.png`, "
              "`pareto.json` (summary).", ""]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point


#: Where a merged analysis of several studies goes, inside each study folder (and MLflow artifacts).
MERGED_DIR = "pareto-merged"


def _log_to_mlflow(study: Study, files: list[Path], artifact_path: str = "pareto") -> tuple[Optional[str], Optional[str]]:
    uri, run_id = study.meta.get("tracking_uri"), study.meta.get("parent_run_id")
    if not uri or not run_id:
        return None, "study.json names no MLflow tracking URI / parent run; artifacts not logged"
    why = store_unreachable(uri)
    if why:
        return None, f"{why}; artifacts not logged (the files are in the folder above)"
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        for f in files:
            log_study_artifact(client, run_id, f, artifact_path, study.path, uri)
    except Exception as e:
        return None, f"could not log artifacts to MLflow run {run_id} at {uri} ({type(e).__name__}: {e})"
    return run_id, None


def write_report(res: ParetoResult, out_dir: Optional[Path] = None, *, log_mlflow: bool = True) -> list[ReportFiles]:
    """Write the report files of ``res`` into each study folder (or ``out_dir``) and log them to MLflow.

    A merged analysis (several studies) goes to ``pareto-merged/`` in each study folder and in its
    MLflow artifacts, so that each study keeps its own report (``pareto/``, the folder itself)."""
    importances = [(s.tag, *parameter_importances(s, res.objectives)) for s in res.studies]
    merged = MERGED_DIR if len(res.studies) > 1 else None
    targets = ([(Path(out_dir), None)] if out_dir is not None
               else [(s.path / merged if merged else s.path, s) for s in res.studies])
    written: list[ReportFiles] = []
    for folder, study in targets:
        folder.mkdir(parents=True, exist_ok=True)
        notes: list[str] = []
        files: list[Path] = []
        p = folder / "pareto.csv"
        with _atomic(p) as tmp:
            res.front[_front_columns(res)].to_csv(tmp, index=False)
        files.append(p)
        p = folder / "pareto.json"
        with _atomic(p) as tmp:
            tmp.write_text(json.dumps(_summary(res), indent=2, default=str))
        files.append(p)
        p = folder / "pareto_front.png"
        _plot_front_png(res, p)
        files.append(p)
        p = folder / "pareto_front.html"
        _plot_front_html(res, p)
        files.append(p)
        p = folder / "hypervolume.csv"
        with _atomic(p) as tmp:
            res.history.to_csv(tmp, index=False)
        files.append(p)
        p = folder / "hypervolume.png"
        _plot_history(res, p)
        files.append(p)
        p = folder / "pruning_profiles.png"
        if _plot_profiles(res, p):
            files.append(p)
        else:
            notes.append("the trials table has no syn_prune/<layer> or neuron_prune/<layer> columns; "
                         "no pruning profile plot")
        md_notes = list(res.notes) + notes
        p = folder / "report.md"
        with _atomic(p) as tmp:
            tmp.write_text(_report_md(res, importances, md_notes))
        files.append(p)
        rf = ReportFiles(folder=folder, files=files, notes=notes)
        if log_mlflow and study is not None:
            rf.logged_to, err = _log_to_mlflow(study, files, merged or "pareto")
            if err:
                rf.notes.append(err)
        written.append(rf)
    return written

"""The ``sdsnn-search`` command line: thin click commands that parse, call and print.

No logic lives here. Heavy modules (torch, ray, mlflow) are imported inside the commands so
that ``--help`` stays fast. A :class:`sdsnn.errors.UserError` becomes one line on stderr and
exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from sdsnn.errors import UserError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click hook
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except OSError as e:  # a path given on the command line that cannot be read or written
            if os.environ.get("SDSNN_DEBUG"):
                raise
            where = f": {e.filename}" if e.filename else ""
            click.echo(f"error: {e.strerror or e}{where} (check the path and its permissions; "
                       f"SDSNN_DEBUG=1 shows the traceback)", err=True)
            sys.exit(2)
        except KeyboardInterrupt:  # commands that resume say how themselves; the rest: the shell's code
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdsnn-search")
@click.option("--plugin", "plugins", multiple=True, metavar="MODULE|FILE.py",
              help="import this module or file first: your own backbones (register_model) and datasets "
                   "(register_dataset); repeatable; added to $SDSNN_PLUGINS for Ray's workers")
def main(plugins) -> None:
    """Multi-objective search over SD-SNN structural development for spiking networks."""
    if plugins:
        from sdsnn.plugins import add_plugins

        add_plugins(list(plugins))  # a UserError becomes one line and exit 2 (_Group.invoke)


# ---------------------------------------------------------------- data (issue 2)
@main.group()
def data() -> None:
    """Check and fetch datasets."""


_DATA_ROOT_HELP = "data root folder(s), os.pathsep-separated; default $SDSNN_DATA_ROOT, else ~/.cache/sdsnn/data"


@data.command("check")
@click.argument("name", required=False)
@click.option("--data-root", default=None, metavar="DIR", help=_DATA_ROOT_HELP)
def data_check(name, data_root) -> None:
    """Show, per dataset, whether it is present / partial / absent, where, and its sample counts.

    Exit code 1 when NAME is given and absent (for scripts), else 0.
    """
    from sdsnn.data import check_datasets, data_roots, format_status_table

    statuses = check_datasets([name] if name else None, data_root)
    roots = data_roots(data_root)
    click.echo("data roots: " + ", ".join(
        f"{r}{'' if Path(r).is_dir() else ' (not a folder)' if Path(r).exists() else ' (does not exist)'}" for r in roots))
    for line in format_status_table(statuses):
        click.echo(line)
    if name and statuses[0].state == "absent":
        sys.exit(1)


@data.command("fetch")
@click.argument("name")
@click.option("--data-root", default=None, metavar="DIR", help=_DATA_ROOT_HELP)
def data_fetch(name, data_root) -> None:
    """Download dataset NAME into the first writable data root (MNIST/CIFAR-10 with md5 checks, events via tonic)."""
    from sdsnn.data import fetch_dataset, format_status_table

    status = fetch_dataset(name, data_root)
    for line in format_status_table([status]):
        click.echo(line)


# ---------------------------------------------------------------- train (issue 3)
@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Experiment YAML (any field of sdsnn.config.ExperimentConfig). Default: all defaults.")
@click.option("--dataset", default=None, help="Override data.dataset (digits, mnist, cifar10, nmnist, dvsgesture, or one a plugin registers).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override train.epochs.")
@click.option("--data-root", default=None, help="Override data.data_root.")
@click.option("--set", "sets", multiple=True, metavar="PATH=VALUE",
              help="Override any field by dotted path, e.g. --set plasticity.spine_window=2 (YAML value).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for checkpoints and metrics (default results/train-<name>-<dataset>).")
@click.option("--baseline/--no-baseline", default=None,
              help="Also train the dense baseline and compare (default: yes; --resume: as the run was started).")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out with its own settings (only --epochs, threads, device and data root may change).")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out (default: refuse).")
def train(config_path, dataset, epochs, data_root, sets, out_dir, baseline, resume, overwrite) -> None:
    """Train one experiment without Ray and print it against its dense baseline."""
    from sdsnn.cli_support import resolve_train_run
    from sdsnn.data import ensure_available

    cfg, out = resolve_train_run(config_path, out_dir=out_dir, resume=resume, dataset=dataset, epochs=epochs,
                                 data_root=data_root, sets=sets)
    from sdsnn.compare import check_run_folder, resume_hint, train_against_dense

    # the folder's rules first (a changed setting is named as such, not as a missing dataset) ...
    baseline = check_run_folder(cfg, out, baseline=baseline, resume=resume, overwrite=overwrite)
    ensure_available(cfg.data)  # ... then the data, before training starts: a missing dataset fails at once
    try:
        comp = train_against_dense(cfg, out, baseline=baseline, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:  # every finished epoch is checkpointed
        click.echo(f"\ninterrupted: {resume_hint(out)}", err=True)
        sys.exit(130)
    from rich.console import Console
    from rich.table import Table

    n = cfg.train.epochs
    table = Table(title=f"{cfg.name}: {cfg.data.dataset}, {cfg.model.name}, {n} epoch{'s' if n != 1 else ''}")
    for col in ("", "SD-SNN", "dense", "delta"):
        table.add_column(col, justify="right" if col else "left")
    for row in comp.rows():
        table.add_row(*row)
    Console().print(table)
    for note in comp.notes():
        click.echo(f"note: {note}")
    if comp.run.status != "completed":
        click.echo(f"run stopped early: {comp.run.status} (the loss became NaN or infinite)", err=True)
        sys.exit(1)
    click.echo(f"written to {out}")


# ---------------------------------------------------------------- search (issue 4)
@main.command("run")
@click.option("--space", "space_file", type=click.Path(dir_okay=False), default=None,
              help="Search-space YAML (see search_spaces/). Required unless --resume.")
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Searched trials (the dense baseline comes on top).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Trials running at once.")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs per trial.")
@click.option("--results-dir", default="results", show_default=True, help="Where the study folder goes.")
@click.option("--name", default=None, help="Study name: the folder <results-dir>/<name>; default <space name>-<time>.")
@click.option("--seed", type=int, default=None, help="Sampler seed.")
@click.option("--address", default=None, help="Join an existing Ray cluster (e.g. 127.0.0.1:6379 or auto).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite inside the study folder).")
@click.option("--data-root", default=None, help="Dataset root folder (else $SDSNN_DATA_ROOT or the cache).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the interrupted study in this folder instead of starting one.")
def run_cmd(space_file, num_samples, max_concurrent, epochs, results_dir, name, seed, address, tracking_uri,
            data_root, resume_dir) -> None:
    """Run a multi-objective search: Ray Tune trials, Optuna proposals, MLflow records."""
    from sdsnn_search.runner import resume_study, run_study

    given = [f for f, v in (("--space", space_file), ("--num-samples", num_samples), ("--max-concurrent", max_concurrent),
                            ("--epochs", epochs), ("--name", name), ("--seed", seed), ("--tracking-uri", tracking_uri),
                            ("--data-root", data_root)) if v is not None]
    if resume_dir and given:
        raise UserError(f"run --resume {resume_dir}: a resumed study keeps its own settings; drop {', '.join(given)}")
    if resume_dir:
        out = resume_study(resume_dir, address=address)
    else:
        if not space_file:
            raise UserError("run: give --space FILE (a search-space YAML, e.g. search_spaces/digits.yaml) or --resume DIR")
        out = run_study(space_file, results_dir=results_dir, name=name, num_samples=num_samples,
                        max_concurrent=max_concurrent, epochs=epochs, seed=seed, address=address,
                        tracking_uri=tracking_uri, data_root=data_root)
    _exit_for(out)


def _exit_for(out) -> None:
    """130 when interrupted; 1 when no searched trial completed (for scripts); else 0."""
    if out.interrupted:
        sys.exit(130)
    df = out.table
    searched = df[~df["is_baseline"].astype(bool)] if df is not None and len(df) else df
    if searched is None or not (searched["status"] == "completed").any():
        click.echo(f"error: no search trial of {out.study_dir} completed; see each trial's reason above (or its 'error' "
                   f"tag in  sdsnn-search ui {out.study_dir}), fix the cause, then  sdsnn-search resume "
                   f"{out.study_dir} --retry-failed", err=True)
        sys.exit(1)


@main.command("resume")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--address", default=None, help="Join an existing Ray cluster.")
@click.option("--retry-failed", is_flag=True,
              help="Run failed trials again too, from their last epoch (NaN-diverged ones stay as they are).")
def resume_cmd(study_dir, address, retry_failed) -> None:
    """Continue an interrupted study: finished trials are kept, unfinished ones continue."""
    from sdsnn_search.runner import resume_study

    out = resume_study(study_dir, address=address, retry_failed=retry_failed)
    _exit_for(out)


@main.group()
def spaces() -> None:
    """Search-space files."""


@spaces.command("validate")
@click.argument("space_file", type=click.Path(dir_okay=False))
def spaces_validate(space_file) -> None:
    """Check a search-space file without running anything."""
    from sdsnn_search.space import load_space

    spec = load_space(space_file)
    click.echo(f"{space_file}: ok ({spec.dataset}, {len(spec.params)} parameters, "
               f"{len(spec.objectives)} objectives: {', '.join(f'{o.metric} {o.mode}' for o in spec.objectives)}, "
               f"{spec.search.num_samples} trials with {spec.search.sampler}, {spec.epochs} epochs each)")


@main.command("ui")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
def ui_cmd(study_dir, port) -> None:
    """Start the MLflow UI for a study's store on 127.0.0.1 and print its address."""
    from sdsnn_search.tracking import serve_ui

    serve_ui(study_dir, port=port, echo=click.echo)



# ---------------------------------------------------------------- pareto / export / ui (issue 5)
@main.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Write the reports into OUT/<dataset>/ instead of each study folder.")
@click.option("--mlflow/--no-mlflow", "log_mlflow", default=True, show_default=True,
              help="Also log the report files as artifacts on each study's MLflow parent run "
                   "(--no-mlflow: never contact the MLflow store).")
def pareto(dirs, out_dir, log_mlflow) -> None:
    """Pareto fronts, hypervolume, knee and reports of finished studies (merged per dataset)."""
    from pathlib import Path

    from sdsnn_search.pareto import analyze_by_dataset
    from sdsnn_search.report import write_report

    results, errors = analyze_by_dataset(dirs, use_mlflow=log_mlflow)
    for dataset, res in results.items():
        target = Path(out_dir) / dataset if out_dir else None
        written = write_report(res, target, log_mlflow=log_mlflow)
        k = res.knee
        objs = ", ".join(f"{o.metric}={k[o.metric]:.4g}" for o in res.objectives)
        click.echo(f"{dataset}: {len(res.front)} on the front of {res.counts['feasible']} feasible / "
                   f"{res.counts['completed']} completed trials; hypervolume {res.hypervolume:.6g}; "
                   f"knee {res.knee_trial_id} ({objs})")
        for n in res.notes:
            click.echo(f"  note: {n}")
        for w in written:
            where = f" (logged to MLflow run {w.logged_to})" if w.logged_to else ""
            click.echo(f"  report: {w.folder / 'report.md'}{where}")
            for n in w.notes:
                click.echo(f"  note: {n}")
    for dataset, why in errors.items():
        click.echo(f"error: {why}", err=True)
    if errors:
        sys.exit(2)


@main.command("export")
@click.argument("study_dir", type=click.Path(file_okay=False))
@click.option("--pick", type=click.Choice(["knee", "best-accuracy", "lowest-energy", "all-pareto"]),
              default="knee", show_default=True, help="Which Pareto trial(s) to export.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for the exported models (one sub-folder per pick).")
@click.option("--register/--no-register", default=True, show_default=True,
              help="Register in the study's MLflow model registry with an alias named after the pick.")
@click.option("--overwrite", is_flag=True, help="Replace pick folders that exist in --out (default: refuse).")
@click.option("--trial", "trial_id", default=None, metavar="ID",
              help="Export this completed trial (an id of trials.csv, on the front or not) instead of a --pick.")
def export_cmd(study_dir, pick, out_dir, register, overwrite, trial_id) -> None:
    """Export Pareto-picked trials as compact models (safetensors + JSON) with a model card."""
    from sdsnn_search.export import export_study

    if trial_id is not None and click.get_current_context().get_parameter_source("pick").name != "DEFAULT":
        raise click.UsageError("give --pick or --trial, not both")
    for e in export_study(study_dir, pick, out_dir, register=register, overwrite=overwrite, trial=trial_id):
        t, p, s = e.card["test"], e.card["parameters"], e.card["speed"]
        click.echo(f"{e.alias}: trial {e.trial_id} -> {e.folder}")
        click.echo(f"  test acc {t['acc']:.4f} on {t['samples']} samples; predictions after reload: "
                   f"{'identical' if e.identical_predictions else 'DIFFERENT'} to the checkpoint")
        click.echo(f"  parameters {p['compact']:,} (dense {p['dense']:,}); inference {s['compact_ms']:.4f} ms/sample "
                   f"(dense {s['dense_ms']:.4f})")
        if e.registered:
            click.echo(f"  registered: {e.registered['uri']} (version {e.registered['version']})")
        for n in e.notes:
            click.echo(f"  note: {n}")


if __name__ == "__main__":  # pragma: no cover
    main()

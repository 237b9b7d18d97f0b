"""The ``sdsnn-search`` command line: thin click commands that parse, call and print.

No logic lives here. Heavy modules (torch, ray, mlflow) are imported inside the commands so
that ``--help`` stays fast. A :class:`sdsnn.errors.UserError` becomes one line on stderr and
exit code 2.
"""

from __future__ import annotations

import sys

import click

from sdsnn.errors import UserError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):  # noqa: D401 - click hook
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sdsnn-search")
def main() -> None:
    """Multi-objective search over SD-SNN structural development for spiking networks."""


# ---------------------------------------------------------------- data (issue 2)
@main.group()
def data() -> None:
    """Check and fetch datasets."""


# ---------------------------------------------------------------- train (issue 3)


# ---------------------------------------------------------------- search (issue 4)


# ---------------------------------------------------------------- pareto / export / ui (issue 5)


if __name__ == "__main__":  # pragma: no cover
    main()

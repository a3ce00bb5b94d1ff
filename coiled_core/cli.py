"""The ``coiled`` command: manage clusters and inspect backends from a shell.

::

    coiled cluster list [--backend B] [--option KEY=VALUE ...]
    coiled cluster stop NAME
    coiled cluster logs NAME [--tail N]
    coiled cluster gc
    coiled backends
    coiled env create|list|inspect|delete
    coiled configuration create|list|show|delete

Every ``cluster`` command takes ``--backend`` (default: dask config ``coiled.backend``) and
``--option KEY=VALUE`` (repeatable; values are read as YAML scalars, so ``3`` is a number and
``true`` a boolean). Given options replace the backend's configured defaults
(``coiled.backend-options.<backend>``), as ``backend_options=`` does in Python.

An expected failure (any :class:`~coiled_core.errors.CoiledError`, or a usage mistake) prints one
line to stderr and exits non-zero, without a traceback.
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from rich.table import Table
from rich.text import Text

from coiled_core import api
from coiled_core.cli_common import OneLineErrorGroup, backend_arguments, output_console
from coiled_core.records import ClusterRecord


@click.group(name="coiled", cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Manage Dask clusters made with coiled.Cluster, on any installed backend."""


@cli.group()
def cluster() -> None:
    """List, stop, read the logs of, and clean up clusters."""


def _created(record: ClusterRecord) -> str:
    created = record.created_at
    if not isinstance(created, datetime):
        return str(created)
    return created.astimezone().strftime("%Y-%m-%d %H:%M:%S")


_STATE_STYLES = {"running": "green", "starting": "yellow", "pending": "yellow", "stopping": "yellow", "error": "red"}


@cluster.command("list")
@backend_arguments
def list_command(backend: str | None, backend_options: dict[str, Any] | None) -> None:
    """List the clusters of a backend, live or recently stopped."""
    records = api.list_clusters(backend=backend, backend_options=backend_options)
    console = output_console()
    if not records:
        console.print(Text(f"No clusters on backend {api.resolve_backend_name(backend)!r}."))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("name", "backend", "state", "workers", "dashboard", "created"):
        table.add_column(column, no_wrap=column != "dashboard", overflow="fold")
    for record in sorted(records, key=lambda r: (not r.state.is_live, r.name)):
        live = record.state.is_live
        table.add_row(
            Text(record.name),
            Text(record.backend),
            Text(record.state.value, style=_STATE_STYLES.get(record.state.value, "")),
            Text(str(len(record.workers)) if live else "-"),
            Text((record.dashboard_url or "-") if live else "-"),
            Text(_created(record)),
        )
    console.print(table)


@cluster.command("stop")
@click.argument("name")
@backend_arguments
def stop_command(name: str, backend: str | None, backend_options: dict[str, Any] | None) -> None:
    """Shut down cluster NAME and delete its resources (works from any machine that sees it)."""
    record = api.delete_cluster(name, backend=backend, backend_options=backend_options)
    output_console().print(Text(f"Cluster {record.name!r} on backend {record.backend!r} is {record.state.value}."))


@cluster.command("logs")
@click.argument("name")
@click.option("--tail", "-n", type=click.IntRange(min=1), default=None, metavar="N", help="Only the last N lines of each log.")
@backend_arguments
def logs_command(name: str, tail: int | None, backend: str | None, backend_options: dict[str, Any] | None) -> None:
    """Print the logs of cluster NAME, one section per process (also after it stopped)."""
    logs = api.cluster_logs(name, tail=tail, backend=backend, backend_options=backend_options)
    for process, text in logs.items():
        # A header per process, as tail(1) writes for several files; the log text is printed raw.
        click.secho(f"==> {process} <==", bold=True)
        click.echo(text, nl=not text.endswith("\n"))


@cluster.command("gc")
@backend_arguments
def gc_command(backend: str | None, backend_options: dict[str, Any] | None) -> None:
    """Delete what dead clusters left behind (processes, claims, state); live clusters are kept."""
    removed = api.gc(backend=backend, backend_options=backend_options)
    console = output_console()
    name = api.resolve_backend_name(backend)
    if not removed:
        console.print(Text(f"Nothing to clean up on backend {name!r}."))
        return
    for line in removed:
        console.print(Text(line))
    console.print(Text(f"Cleaned up {len(removed)} item{'s' if len(removed) != 1 else ''} on backend {name!r}."))


@cli.command("backends")
def backends_command() -> None:
    """List the installed backends, and why a broken one cannot be used."""
    entries = api.list_backends()
    console = output_console()
    if not entries:
        console.print(Text("No backends are installed; install one, e.g. pip install coiled-local."))
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("backend", no_wrap=True)
    table.add_column("distribution", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("status", overflow="fold")
    for entry in entries:
        status = Text("ok", style="green") if entry.error is None else Text(f"broken: {entry.error}", style="red")
        table.add_row(Text(entry.name), Text(entry.distribution), Text(entry.version), status)
    console.print(table)


def _register_groups() -> None:
    from coiled_core.cli_configuration import configuration

    cli.add_command(configuration)
    try:
        from coiled_core.cli_env import env
    except ImportError:  # pragma: no cover - while software environments are being added
        return
    cli.add_command(env)


_register_groups()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``coiled`` script."""
    cli.main(args=argv, prog_name="coiled")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

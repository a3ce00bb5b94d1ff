"""``coiled configuration``: create, list, show and delete cluster configurations from a shell.

::

    coiled configuration create NAME [--set KEY=VALUE ...] [--software S]
    coiled configuration list [--account A]
    coiled configuration show NAME
    coiled configuration delete NAME

``--set`` values are read as YAML, so numbers, booleans, lists and mappings work::

    coiled configuration create gpu-large --set n_workers=[2,10] --set worker_memory="64 GiB" \\
        --set scheduler_options="{idle_timeout: 2 hours}"

An expected failure (any :class:`~coiled_core.errors.CoiledError`, or a usage mistake) prints one
line ``Error: ...`` to stderr and exits non-zero, without a traceback, as the rest of the
``coiled`` command does. The group handles this itself, so it behaves the same when invoked on
its own (``from coiled_core.cli_configuration import configuration``) and when registered
under the root ``coiled`` group.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import click
import yaml
from rich.table import Table
from rich.text import Text

from coiled_core import configurations
from coiled_core.cli_common import OneLineErrorGroup, output_console

__all__ = ["configuration"]


def _parse_value(raw: str) -> Any:
    """A ``--set`` value read as YAML; text that YAML cannot represent as JSON stays text."""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):  # e.g. a date, or .nan
        return raw
    return value


def _parse_settings(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        if key in settings:
            raise click.BadParameter(f"{key} is given more than once", ctx=ctx, param=param)
        settings[key] = _parse_value(raw)
    return settings


def _when(value: datetime.datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _inline(value: Any) -> str:
    """A value on one line, as YAML flow style (``[2, 10]``, ``{idle_timeout: 2 hours}``)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


@click.group(name="configuration", cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def configuration() -> None:
    """Create, list, show and delete cluster configurations (saved, shared cluster parameters)."""


@configuration.command("create")
@click.argument("name")
@click.option(
    "--set",
    "-s",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    callback=_parse_settings,
    help="A coiled.Cluster parameter (repeatable); VALUE is YAML, e.g. n_workers=[2,10] or worker_memory='8 GiB'.",
)
@click.option("--software", default=None, metavar="NAME", help="Software environment (account/name).")
def create_command(name: str, settings: dict[str, Any], software: str | None) -> None:
    """Save cluster configuration NAME (replacing any of that name)."""
    if software is not None and settings.get("software") not in (None, software):
        raise click.BadParameter(
            f"--software {software!r} and --set software={settings['software']!r} disagree; give only one",
            param_hint="'--software'",
        )
    if software is not None:
        settings["software"] = software
    saved = configurations.create_cluster_configuration(name, **settings)
    console = output_console()
    console.print(Text(f"Saved cluster configuration {saved.name!r}."))
    for key, value in saved.values.items():
        console.print(Text(f"  {key}: {_inline(value)}"))


@configuration.command("list")
@click.option("--account", "-a", default=None, metavar="ACCOUNT", help="Account to list (default: your default account).")
def list_command(account: str | None) -> None:
    """List the cluster configurations of an account (with the built-in coiled/default)."""
    found = configurations.list_cluster_configurations(account=account)
    console = output_console()
    if not found:
        console.print(Text(f"No cluster configurations in account {account!r}."))
        return
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("name", no_wrap=True)
    table.add_column("values", overflow="fold")
    table.add_column("updated", no_wrap=True)
    for item in found:
        values = ", ".join(f"{key}={_inline(value)}" for key, value in item.values.items()) or "-"
        updated = "built in" if item.builtin else _when(item.updated_at)
        table.add_row(Text(item.name), Text(values), Text(updated))
    console.print(table)


@configuration.command("show")
@click.argument("name")
def show_command(name: str) -> None:
    """Print cluster configuration NAME as YAML."""
    item = configurations.get_cluster_configuration(name)
    document: dict[str, Any] = {"name": item.name}
    if item.builtin:
        document["builtin"] = True
    else:
        document["created_at"] = item.created_at.isoformat() if item.created_at else None
        document["updated_at"] = item.updated_at.isoformat() if item.updated_at else None
    document["values"] = item.values
    click.echo(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), nl=False)


@configuration.command("delete")
@click.argument("name")
def delete_command(name: str) -> None:
    """Delete cluster configuration NAME."""
    full_name = configurations.normalize_configuration_name(name)
    configurations.delete_cluster_configuration(name)
    output_console().print(Text(f"Deleted cluster configuration {full_name!r}."))

"""``coiled env``: create, list, inspect and delete software environment specs.

::

    coiled env create NAME (--pip FILE_OR_REQUIREMENT ... | --conda FILE | --container IMAGE)
    coiled env list [--account ACCOUNT]
    coiled env inspect NAME
    coiled env delete NAME
    coiled env build NAME [--backend B] [-o KEY=VALUE ...]

``--pip`` is repeatable: a single value naming an existing file is a requirements file,
otherwise every value is one requirement (``--pip numpy --pip 'pandas>=2'``). Specs go to the
store (dask config ``coiled.store``); see :mod:`coiled_core.software`.

An expected failure (any :class:`~coiled_core.errors.CoiledError`, or a usage mistake) prints one
``Error: ...`` line to stderr and exits 1, also when this group is invoked on its own.
"""

from __future__ import annotations

import os
from datetime import datetime

import click
from rich.table import Table
from rich.text import Text

from coiled_core import software
from coiled_core.cli_common import OneLineErrorGroup, backend_arguments, output_console

__all__ = ["env"]


def _created(env: software.SoftwareEnvironment) -> str:
    if env.builtin:
        return "built-in"
    created = env.created_at
    if not isinstance(created, datetime):
        return str(created)
    return created.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@click.group(name="env", cls=OneLineErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
def env() -> None:
    """Create, list, inspect and delete software environments (specs kept in the store)."""


@env.command("create")
@click.argument("name")
@click.option(
    "--pip",
    "pip",
    multiple=True,
    metavar="FILE_OR_REQUIREMENT",
    help="A requirements file, or one requirement (repeatable: --pip numpy --pip 'pandas>=2').",
)
@click.option("--conda", "conda", default=None, metavar="FILE", help="An environment.yml file.")
@click.option("--container", "container", default=None, metavar="IMAGE", help="A container image, e.g. ghcr.io/dask/dask:latest (--pip/--conda packages go on top).")
@click.option("--post-build", "post_build", multiple=True, metavar="FILE_OR_COMMAND", help="A script, or one shell command run after the packages are installed (repeatable).")
@click.option("--gpu-enabled", is_flag=True, help="The environment is for GPU machines.")
@click.option("--arm", is_flag=True, help="The environment is for ARM (aarch64) machines.")
@click.option("--include-local-code", is_flag=True, help="Put the working directory on the cluster's PYTHONPATH.")
@click.option("--private", is_flag=True, help="Only you list it.")
@click.option("--force-rebuild", is_flag=True, help="The next cluster builds it afresh.")
@click.option("--workspace", default=None, metavar="ACCOUNT", help="The account of a bare NAME.")
def create_command(
    name: str,
    pip: tuple[str, ...],
    conda: str | None,
    container: str | None,
    post_build: tuple[str, ...],
    gpu_enabled: bool,
    arm: bool,
    include_local_code: bool,
    private: bool,
    force_rebuild: bool,
    workspace: str | None,
) -> None:
    """Create (or replace) software environment NAME ('account/name' or 'name')."""
    pip_arg: list[str] | str | None = None
    if pip:
        pip_arg = pip[0] if len(pip) == 1 and os.path.isfile(pip[0]) else list(pip)
    post: list[str] | str | None = None
    if post_build:
        post = post_build[0] if len(post_build) == 1 and os.path.isfile(post_build[0]) else list(post_build)
    created = software.create_software_environment(
        name,
        pip=pip_arg,
        conda=conda,
        container=container,
        post_build=post,
        gpu_enabled=gpu_enabled,
        arm=arm,
        include_local_code=include_local_code,
        private=private,
        force_rebuild=force_rebuild,
        workspace=workspace,
    )
    output_console().print(
        Text(
            f"Created software environment {created.name!r} ({created.kind}, python {created.python}, "
            f"hash {created.spec_hash()[:12]})."
        )
    )


@env.command("build")
@click.argument("name")
@backend_arguments
def build_command(name: str, backend: str | None, backend_options: dict | None) -> None:
    """Build software environment NAME now, where the backend's nodes get it, so that no cluster
    waits for the build (e.g. coiled env build team/etl --backend aws -o region=us-east-2)."""
    from coiled_core import api

    output_console().print(Text(api.build_software_environment(name, backend=backend, backend_options=backend_options)))


@env.command("list")
@click.option("--account", "-a", default=None, metavar="ACCOUNT", help="Only this account's environments.")
def list_command(account: str | None) -> None:
    """List software environments: every account's in the store, and the built-in ones."""
    envs = software.list_software_environments(account=account)
    console = output_console()
    if not envs:
        console.print(Text("No software environments."))
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("name", "kind", "python", "packages", "hash", "created"):
        table.add_column(column, no_wrap=column != "packages", overflow="fold")
    for item in envs:
        packages = item.packages()
        shown = ", ".join(packages[:4]) + (f", ... ({len(packages)} in all)" if len(packages) > 4 else "")
        table.add_row(
            Text(item.name),
            Text(item.kind),
            Text(item.python),
            Text(shown),
            Text(item.spec_hash()[:12]),
            Text(_created(item)),
        )
    console.print(table)


@env.command("inspect")
@click.argument("name")
def inspect_command(name: str) -> None:
    """Show software environment NAME: kind, python, packages and spec hash."""
    item = software.get_software_info(name)
    console = output_console()
    console.print(Text(f"name:     {item.name}"))
    console.print(Text(f"kind:     {item.kind}"))
    console.print(Text(f"python:   {item.python}"))
    console.print(Text(f"hash:     {item.spec_hash()}"))
    console.print(Text(f"created:  {_created(item)}"))
    if item.kind == "conda" and item.conda and item.conda.get("channels"):
        console.print(Text(f"channels: {', '.join(item.conda['channels'])}"))
    console.print(Text("image:" if item.kind == "container" else "packages:"))
    for package in item.packages():
        console.print(Text(f"  {package}"))


@env.command("delete")
@click.argument("name")
def delete_command(name: str) -> None:
    """Delete software environment NAME from the store (built-in ones cannot be deleted)."""
    full_name = software.resolve_name(name)
    software.delete_software_environment(name)
    output_console().print(Text(f"Deleted software environment {full_name!r}."))

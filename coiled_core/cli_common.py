"""What every ``coiled`` command group shares: one-line errors and the output console.

An expected failure (any :class:`~coiled_core.errors.CoiledError`, or a usage mistake) prints a
single ``Error: ...`` line on stderr and exits non-zero, never a traceback or a usage block.
"""

from __future__ import annotations

from typing import Any, Callable

import click
import yaml
from rich.console import Console

from coiled_core.errors import CoiledError


class OneLineError(click.ClickException):
    """A failure shown as a single ``Error: ...`` line on stderr."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def one_line_usage_error(error: click.UsageError) -> click.ClickException:
    message = error.format_message()
    if error.ctx is not None:
        message = f"{message} (see '{error.ctx.command_path} --help')"
    return OneLineError(message, exit_code=error.exit_code)


class OneLineErrorGroup(click.Group):
    """A click group whose expected failures print one line (see the module docstring)."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def]
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise one_line_usage_error(e) from e

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise one_line_usage_error(e) from e
        except CoiledError as e:
            raise OneLineError(str(e)) from e


def output_console() -> Console:
    """A console for command output, made per command so it writes to the current stdout.

    Off a terminal, tables are not squeezed into 80 columns: piped output keeps whole names and URLs.
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=max(console.width, 200))
    return console


def parse_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any] | None:
    if not values:
        return None
    options: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", ctx=ctx, param=param)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        # Scalars only: a date, list or mapping stays the text that was typed.
        if not isinstance(value, (str, bool, int, float, type(None))):
            value = raw
        options[key] = value
    return options


def backend_arguments(command: Callable) -> Callable:
    """Add ``--backend`` and ``--option`` (the backend options, as ``backend_options``) to a command."""
    command = click.option(
        "--option",
        "-o",
        "backend_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parse_option,
        help="A backend option (repeatable); replaces the configured coiled.backend-options.<backend>.",
    )(command)
    return click.option(
        "--backend",
        "-b",
        default=None,
        metavar="NAME",
        help="Backend to use (default: dask config coiled.backend, normally 'local').",
    )(command)

"""What every ``oncall`` command module shares: the Typer app, error mapping, output helpers.

``flows.cli`` (most commands) and ``flows.cli_incident`` (incidents, intake) both register on
``app`` from here, so neither imports the other's module body (no import cycle). Nothing here
imports Prefect: these are on the CLI's fast paths.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from integrations.errors import (
    AuthError,
    ConfigError,
    OncallError,
    TargetError,
    Timeout,
    Unreachable,
)
from integrations.redact import scrub

__all__ = ["ConfigOpt", "JsonOpt", "PlainHelpGroup", "app", "sub_app"]


class PlainHelpGroup(TyperGroup):
    """Plain help (no rich import) listing each command's whole first line, wrapped."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, (cmd.short_help or cmd.help or "").strip().split("\n")[0]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Plain help: Typer's rich help imports rich.markdown & co (~0.3 s of every --help).
_PLAIN_HELP: dict[str, Any] = {
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "cls": PlainHelpGroup,
}
app = typer.Typer(
    name="oncall",
    help="Runbooks as code for on-call engineers, on Prefect.",
    add_completion=False,
    pretty_exceptions_enable=False,
    **_PLAIN_HELP,
)


def sub_app(name: str, help: str) -> typer.Typer:
    """The command group ``oncall <name> …``, with the same plain help as ``app``."""
    group = typer.Typer(help=help, **_PLAIN_HELP)
    app.add_typer(group, name=name)
    return group


_secrets: list[str] = []
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="oncall.yaml (default: $ONCALL_CONFIG or ./oncall.yaml)"),
]


def _fail(code: int, message: str) -> NoReturn:
    """One line on stderr per line of the message (a configuration can have many problems)."""
    for line in scrub(message, _secrets).splitlines() or [""]:
        sys.stderr.write(f"oncall: {line}\n")
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Maps our errors to one line on stderr and an exit code; never a traceback."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except ConfigError as exc:
        _fail(2, "\n".join(f"error: {line}" for line in str(exc).splitlines()))
    except AuthError as exc:
        _fail(2, f"credentials refused: {exc}")
    except (Unreachable, Timeout) as exc:
        _fail(3, f"unreachable: {exc}")
    except TargetError as exc:
        _fail(3, f"target error: {exc}")
    except OncallError as exc:
        _fail(1, f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        _fail(130, "interrupted")
    except Exception as exc:
        from flows.server import prefect_home

        path = prefect_home() / "oncall-cli-errors.log"
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as log:
                log.write(scrub(traceback.format_exc(), _secrets) + "\n")
        _fail(1, f"internal error: {type(exc).__name__}: {exc} (traceback in {path})")


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")


def _console(json_mode: bool = False):
    from rich.console import Console

    # With --json, stdout carries only JSON: the live view goes to stderr. No emoji codes:
    # rich would turn "oncall.yaml:100:" into a 💯.
    return Console(stderr=json_mode, highlight=False, emoji=False)


def _api():
    """The Prefect REST API at $PREFECT_API_URL (default: the local server)."""
    from flows.prefect_api import PrefectAPI
    from flows.server import DEFAULT_API_URL

    return PrefectAPI(os.environ.get("PREFECT_API_URL", DEFAULT_API_URL))


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _print_rows(
    rows: list[dict[str, Any]],
    json_out: bool,
    *,
    title: str,
    columns: tuple[str, ...],
    cells: Callable[[dict[str, Any]], tuple[str, ...]],
    empty: str,
) -> None:
    """``rows`` as JSON (--json); else a table with ``cells(row)`` a row, or ``empty`` if none."""
    if json_out:
        _print_json(rows)
        return
    if not rows:
        _console().print(empty)
        return
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*cells(row))
    _console().print(table)


def _approver(name: str | None, option: str) -> str | None:
    import re

    from runbooks.engine.model import APPROVER_RE

    if name is not None and not re.fullmatch(APPROVER_RE, name):
        raise ConfigError(f"{option} {name!r}: use 1-64 letters, digits, spaces or ._@+-")
    return name


def _ensure_server(console, wait: bool = True) -> str:
    """The Prefect API URL; starts the local server on first use.

    ``wait=False`` lets the command import Prefect and build its sandbox while the server
    starts (~15 s); ``flows.execute.run_runbook`` waits for it before the first API call.
    """
    from flows import server

    if not os.environ.get("PREFECT_API_URL") and not server.healthy(server.DEFAULT_API_URL):
        console.print("[dim]starting the local Prefect server (first use; ~15 s)…[/dim]")
    return server.ensure(wait=wait)

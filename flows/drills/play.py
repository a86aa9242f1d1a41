"""Runs a scenario's runbook on its sandbox, as a drill, and scores it from the fault.

A drill module declares its scenario once with :func:`scenario` (its runbook, severity and
drill parameters) and writes only its stage: build the sandbox, inject the fault
(:meth:`Player.inject`), and hand the service to :meth:`Player.play`. The declaration gives
the stage the registry's ``drill(approve_as=, console=, interactive=, show=)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from checks.findings import Severity
from flows.drills.scorecard import Expect, Scorecard, score

__all__ = ["GATES", "Drill", "Player", "postgres_service", "scenario"]

# Every drill's gates: an approver has 5 minutes; verification waits 30 s and holds 5 s.
GATES: dict[str, Any] = {
    "approval_timeout_seconds": 300,
    "verify_timeout_seconds": 30,
    "verify_hold_seconds": 5,
}


class Drill(Protocol):
    """What the registry loads from a drill module: one run of the scenario, scored."""

    def __call__(
        self, *, approve_as: str | None, console: Any, interactive: bool, show: bool
    ) -> Scorecard: ...


class Player:
    """One run of a drill: its runbook with the drill's parameters, how the run is shown and
    approved, and the moment of the fault (``injected``), the zero of the scorecard."""

    def __init__(
        self, runbook: str, severity: Severity, params: dict[str, Any], run: dict[str, Any]
    ) -> None:
        """``run`` is how ``oncall drill`` runs it: ``approve_as``, ``console``,
        ``interactive`` and ``show``, as :func:`flows.execute.run_runbook` takes them."""
        self.runbook, self.severity, self._overrides, self._run = runbook, severity, params, run
        self.console, self.show = run["console"], run["show"]
        self.injected: float | None = None
        self._spec: Any = None
        self._params: Any = None

    def load(self) -> Any:
        """Loads the runbook and builds its parameters (once; the runbooks import Prefect)."""
        if self._spec is None:
            from runbooks.catalog import require

            self._spec = require(self.runbook)
            self._params = self._spec.params(**(GATES | self._overrides))
        return self._params

    @property
    def params(self) -> Any:
        """The runbook's parameters for the drill."""
        return self.load()

    def say(self, text: str) -> None:
        """Tells the drill's terminal, when the run is shown."""
        if self.show:
            self.console.print(text)

    def inject(self, said: str | None = None) -> float:
        """Marks the fault as injected now (and says ``said``); returns the moment."""
        self.injected = time.monotonic()
        if said is not None:
            self.say(said)
        return self.injected

    def play(self, service: Any, expect: Expect = "fixed") -> Scorecard:
        """Runs the runbook on ``service`` (tagged ``drill``) and scores it from the fault."""
        from flows.execute import run_runbook  # Prefect: preloaded by `oncall drill` meanwhile

        if self.injected is None:
            raise RuntimeError(f"the {self.runbook} drill played before injecting its fault")
        params = self.load()
        started = time.monotonic() - self.injected
        report = run_runbook(
            self._spec, service=service, params=params, extra_tags=("drill",), **self._run
        )
        return score(self.runbook, self.severity, report, started, expect)


def scenario(
    runbook: str, severity: Severity, *, load_first: bool = True, **params: Any
) -> Callable[[Callable[[Player], Scorecard]], Drill]:
    """Declares a drill of ``runbook`` at ``severity`` with ``params`` over :data:`GATES`.

    The runbook is loaded before the stage runs; without ``load_first`` the stage loads it
    (:meth:`Player.load`) when it is ready to: after its fault, say, so that the imports
    happen while the fault ages.
    """

    def declare(stage: Callable[[Player], Scorecard]) -> Drill:
        def drill(
            *, approve_as: str | None, console: Any, interactive: bool, show: bool
        ) -> Scorecard:
            run = {
                "approve_as": approve_as,
                "console": console,
                "interactive": interactive,
                "show": show,
            }
            player = Player(runbook, severity, params, run)
            if load_first:
                player.load()
            return stage(player)

        # The stage's name and help, but the registry's signature (no ``__wrapped__``).
        drill.__module__, drill.__qualname__ = stage.__module__, stage.__qualname__
        drill.__doc__ = stage.__doc__
        return drill

    return declare


def postgres_service(pg: Any) -> Any:
    """The service a PostgreSQL drill hands its runbook: the embedded server, as
    ``drill-postgres``."""
    from integrations.postgres import PostgresTarget
    from integrations.service import Service

    target = PostgresTarget(name="drill-postgres", dsn=pg.dsn)
    return Service(name="drill-postgres", postgres=target)

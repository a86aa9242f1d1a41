"""Drill provider-outage: our database provider's status page reports a major outage.

The sandbox is two local Statuspage servers (:class:`flows.drills.sandbox.saas.SaasSandbox`):
the provider's public page ("Supabase", all components ``major_outage``) and our own
status page's manage API. The runbook must tell our users (an incident on our page) and
turn graceful degradation on (the service's configured ``enable_degradation_flag``
action, a real command that writes the flag file the app would read); it must do nothing
to the provider.

A provider outage ends when the provider fixes it, not when we act: the script here is
that the provider's fix lands :data:`RECOVERY_S` seconds after our mitigation is in place
(both the incident on our page and the flag), and the runbook's verification must see
it. The scenario expects "mitigated" (fixed passes too): nothing the runbook does removes
the cause.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from checks.findings import Severity
from flows.drills.play import Player, scenario
from flows.drills.scorecard import Scorecard

__all__ = ["ProviderFix", "drill"]

SERVICE = "drill-checkout"
PROVIDER = "Supabase"  # a complete Supabase outage is P0 (seed 000 Incident 3)
RECOVERY_S = 3.0


class ProviderFix(threading.Thread):
    """Brings the provider back ``after`` seconds once our mitigation is in place.

    ``mitigated_at`` and ``recovered_at`` are monotonic times (None until they happen).
    """

    def __init__(self, provider: Any, ours: Any, flag: Path, after: float = RECOVERY_S) -> None:
        super().__init__(name="provider-fix", daemon=True)
        self.provider, self.ours, self.flag, self.after = provider, ours, flag, after
        self.mitigated_at: float | None = None
        self.recovered_at: float | None = None
        self._halt = threading.Event()

    def mitigated(self) -> bool:
        posted = any(i["status"] != "resolved" for i in list(self.ours.incidents.values()))
        return posted and self.flag.exists()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            if self.mitigated_at is None and self.mitigated():
                self.mitigated_at = time.monotonic()
            if self.mitigated_at is not None and time.monotonic() - self.mitigated_at >= self.after:
                self.provider.set_provider("operational")
                self.recovered_at = time.monotonic()
                return

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


@scenario("provider-outage", Severity.P0)
def drill(player: Player) -> Scorecard:
    """Takes a provider down and lets provider-outage tell users and degrade gracefully."""
    from flows.drills.sandbox.saas import SaasSandbox
    from integrations.service import ConfiguredAction, Service

    with (
        SaasSandbox() as provider,
        SaasSandbox() as ours,
        tempfile.TemporaryDirectory(prefix="oncall-drill-flag-") as workdir,
    ):
        flag = Path(workdir) / "degraded-mode"
        write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('on')"
        service = Service(
            name=SERVICE,
            providers=[provider.status_page(PROVIDER)],
            statuspage=ours.statuspage_target(),
            actions={
                "enable_degradation_flag": ConfiguredAction(
                    description="Serve cached pages and queue writes while the database is away",
                    risk="risky",
                    command=[sys.executable, "-c", write, str(flag)],
                    undo=f"remove {flag}",
                )
            },
        )
        provider.set_provider("down")
        player.inject()
        fix = ProviderFix(provider, ours, flag)
        fix.start()
        player.say(
            f"[bold]Drill provider-outage[/bold]: {PROVIDER}'s status page {provider.url}"
            f" reports a major outage; our status page is {ours.url}. {PROVIDER}'s fix"
            f" lands {RECOVERY_S:g} s after our users are told and degradation is on."
        )
        try:
            return player.play(service, "fixed-or-mitigated")
        finally:
            fix.stop()

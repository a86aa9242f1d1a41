"""What sealing costs per decision, against a bare HMAC and a bare fsynced append.

    uv run python -m benchmarks.seal [--runs 2000] [--backends 50]

For a db-connections plan terminating ``--backends`` sessions (previews and items as the
runbook makes them), each step a decision takes in the guard, timed ``--runs`` times:
the sender seals its decision (``oncall approve``, Slack), the gate opens and checks it,
mints the sealed Approval (plan and action digests), the remediation checks it before
acting, and the audit appends the entry (fsync). No Prefect: these are the seal's own
costs; the gate's Prefect calls (a run input, two events) come on top.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks._common import percentile


def _plan(backends: int):
    from runbooks.engine.model import Action, Plan, Risk

    items = [
        {
            "pid": 4000 + i,
            "usename": "api",
            "application_name": "api-7f9c",
            "state": "idle in transaction",
            "backend_start": "2026-12-06T03:00:00+00:00",
            "xact_start": "2026-12-06T03:01:00+00:00",
            "query": "UPDATE orders SET status = 'paid' WHERE id = $1",
            "age_s": 1312.0,
            "reason": "idle in transaction for 1312s",
        }
        for i in range(backends)
    ]
    preview = "\n".join(f"{i['pid']:>7}  api  api-7f9c  idle in transaction" for i in items)
    action = Action(
        id="terminate-sessions",
        kind="pg.terminate",
        target="orders-db",
        risk=Risk.DESTRUCTIVE,
        title=f"Terminate {backends} session(s)",
        preview=preview,
        items=items,
    )
    return Plan(runbook="db-connections", target="orders-db", actions=[action])


def _time(fn: Callable[[], object], runs: int) -> list[float]:
    fn()  # warm: the key file is read once per process
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--backends", type=int, default=50)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="oncall-seal-bench-"))
    os.environ["ONCALL_STATE_DIR"] = str(home)
    os.environ.pop("ONCALL_SEAL_KEY", None)

    from runbooks.engine import audit, guard
    from runbooks.engine.guard import DecisionClaims

    plan = _plan(args.backends)
    digest = guard.plan_digest(plan)
    claims = DecisionClaims(
        run_id="0" * 36, pause_key="approve-abc-0", plan_digest=digest, approved=True,
        reason="ok", approver="bob", identity="os:bob", channel="cli", at=datetime.now(UTC),
    )  # fmt: skip
    token = guard.seal_decision(claims)
    approval = guard.mint(plan, approved=True, approver="bob", channel="cli", identity="os:bob")
    log = home / "audit.jsonl"
    entry = {"verdict": "approved", "run_id": "0" * 36, "plan_digest": digest, "why": ""}

    def check_before_acting() -> None:
        with guard.approved_scope(approval, plan):
            assert approval.action_digests["terminate-sessions"] == guard.action_digest(
                plan.actions[0]
            )

    raw_key = os.urandom(32)
    body = guard.canonical(approval.model_dump(mode="json"))
    raw_log = home / "raw.log"

    def raw_append() -> None:
        with open(raw_log, "ab") as fh:
            fh.write(body + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    steps = {
        "sender seals its decision": lambda: guard.seal_decision(claims),
        "gate opens and checks the token": lambda: guard.open_decision(token),
        "gate mints the sealed approval": lambda: guard.mint(
            plan, approved=True, approver="bob", channel="cli", identity="os:bob"
        ),
        "remediation checks seal + digests": check_before_acting,
        "audit append (flock + fsync)": lambda: audit.append(entry, log),
        "baseline: one HMAC-SHA256 of the approval": lambda: hmac.new(
            raw_key, body, hashlib.sha256
        ).hexdigest(),
        "baseline: one fsynced append": raw_append,
    }
    results = {name: _time(fn, args.runs) for name, fn in steps.items()}
    guard_steps = [name for name in steps if not name.startswith("baseline")]
    seal_only = [name for name in guard_steps if not name.startswith("audit")]
    per_decision = [sum(results[n][i] for n in seal_only) for i in range(args.runs)]
    with_audit = [sum(results[n][i] for n in guard_steps) for i in range(args.runs)]
    print(f"plan: db-connections, {args.backends} backends; {args.runs} runs; times in ms")
    print(f"{'step':<44} {'p50':>8} {'p95':>8}")
    for name, samples in results.items():
        print(f"{name:<44} {statistics.median(samples):>8.3f} {percentile(samples, 95):>8.3f}")
    print(f"{'seal per decision (4 steps, no audit)':<44} {statistics.median(per_decision):>8.3f}"
          f" {percentile(per_decision, 95):>8.3f}")  # fmt: skip
    print(f"{'seal + audit per decision':<44} {statistics.median(with_audit):>8.3f}"
          f" {percentile(with_audit, 95):>8.3f}")  # fmt: skip
    entries = audit.read(log)
    assert audit.verify(entries) == [], "the benchmark's own audit chain must verify"


if __name__ == "__main__":
    main()

"""Reading metric values out of alert labels, annotations and fields, in our units."""

from __future__ import annotations

import math
import re
from typing import Any

from integrations._alert_fields import key_name, object_items, shown
from integrations.errors import ConfigError

__all__ = ["read_metrics", "strict_metrics"]

# Metric names the severity rules use, and the spellings alerts carry them under.
_ALIASES = {
    "error_rate": ("error_rate", "error_ratio", "errorrate", "error_pct", "error_percent"),
    "p95_seconds": ("p95", "p95_seconds", "p95_latency", "latency_p95", "response_time"),
    "db_cpu_pct": ("db_cpu", "db_cpu_pct", "database_cpu", "database_cpu_pct", "postgres_cpu"),
    "memory_pct": ("memory_pct", "memory_percent", "mem_pct", "memory_usage_pct"),
    "video_failure_rate": ("video_failure_rate", "video_failures", "video_failure_pct"),
    "queue_depth": ("queue_depth", "queue_length", "queue_size", "backlog"),
    "db_reachable": ("db_reachable", "database_reachable", "db_up", "database_up"),
}
_METRIC_OF = {alias: name for name, aliases in _ALIASES.items() for alias in aliases}
_PERCENTS = ("db_cpu_pct", "memory_pct")
_DB_WORDS = {"db", "database", "postgres", "postgresql", "pg", "mysql", "supabase"}


def _metric_name(key: str) -> tuple[str | None, bool]:
    """The metric a label/field names, and whether it is in milliseconds (``p95_ms``)."""
    norm = re.sub(r"[\s.-]+", "_", key.strip().lower())
    millis = norm.endswith("_ms")
    return _METRIC_OF.get(norm[:-3] if millis else norm), millis


def _hinted(alertname: str) -> str | None:
    """The metric an Alertmanager ``value`` annotation measures, judged by the alert's name.

    Deliberately narrow: a count of errors read as an error *rate* would page someone, so
    rates need a rate word ("HighErrorRate"), and a ``metric`` label always wins.
    """
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", alertname).lower()
    parts = re.findall(r"[a-z0-9]+", words)

    def has(*cues: str) -> bool:
        return any(cue in part for part in parts for cue in cues)

    db = any(p in _DB_WORDS or p.startswith("db") for p in parts) or has("database", "postgres")
    rate = has("rate", "ratio", "percent", "pct")
    if db and has("down", "unreachable", "unavailable"):
        return "db_reachable"
    if db and has("cpu"):
        return "db_cpu_pct"
    if has("video") and has("fail", "error") and rate:
        return "video_failure_rate"
    if has("error", "5xx") and rate:
        return "error_rate"
    if has("latency", "p95", "responsetime", "response"):
        return "p95_seconds"
    if has("queue", "backlog"):
        return "queue_depth"
    if has("memory") or any(p.startswith("oom") for p in parts):
        return "memory_pct"
    return None


def _number(metric: str, raw: Any, millis: bool = False) -> float | None:
    """``raw`` in the metric's unit ("12%" → 0.12 error rate, "530ms" → 0.53 s), or None."""
    text = str(raw).strip().lower().replace(",", "").replace("_", "")
    if metric == "db_reachable":
        flags = {"true": 1.0, "up": 1.0, "yes": 1.0, "false": 0.0, "down": 0.0, "no": 0.0}
        if text in flags:
            return flags[text]
    unit = ""
    if match := re.fullmatch(r"([-+0-9.e]+)\s*(%|ms|s|sec|seconds|m|min)?", text):
        text, unit = match.group(1), match.group(2) or ""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if metric == "p95_seconds":
        return value * {"ms": 0.001, "m": 60.0, "min": 60.0}.get(unit, 0.001 if millis else 1.0)
    if metric in ("error_rate", "video_failure_rate"):  # "12%" or 12 → 0.12; 0.12 stays
        return value / 100 if unit == "%" or value > 1 else value
    if metric in _PERCENTS:  # 0.92 (a ratio) → 92
        return value * 100 if unit != "%" and 0 < value <= 1 else value
    if metric == "db_reachable":
        return 1.0 if value > 0 else 0.0
    return value


def read_metrics(*sources: dict[str, Any]) -> dict[str, float]:
    """Known metrics from labels/annotations/fields; later sources override earlier ones."""
    found: dict[str, float] = {}
    for source in sources:
        for key, raw in source.items():
            metric, millis = _metric_name(str(key))
            if metric and (value := _number(metric, raw, millis)) is not None:
                found[metric] = value
    merged = {k: v for s in sources for k, v in s.items()}
    if "value" in merged:  # Prometheus rule annotations commonly carry {{ $value }}
        metric, _ = _metric_name(str(merged.get("metric", "")))
        metric = metric or _hinted(str(merged.get("alertname", "")))
        value = _number(metric, merged["value"]) if metric and metric not in found else None
        # A guessed percentage above 100 is bytes or cores, not a percentage: leave it out.
        if value is not None and not (metric in _PERCENTS and not 0 <= value <= 100):
            found[str(metric)] = value
    return found


def strict_metrics(value: Any, where: str) -> dict[str, float]:
    """Reads a generic alert's ``metrics`` object, where every value must be a number."""
    found: dict[str, float] = {}
    for key, raw in object_items(value, where):
        metric, millis = _metric_name(str(key))
        scalar = isinstance(raw, str | int | float)
        number = _number(metric or "", raw, millis) if scalar else None
        if number is None:
            raise ConfigError(f"{where}.{key_name(key)} must be a number, got {shown(raw)}")
        found[metric or str(key)] = number
    return found

"""Checks of sender-supplied alert fields; each failure is one ConfigError line naming the field."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from integrations.errors import ConfigError

__all__ = [
    "alert_status",
    "alert_time",
    "key_name",
    "kind_of",
    "object_items",
    "shown",
    "string_map",
]

_STATUSES = ("firing", "resolved")


def object_items(value: Any, where: str) -> list[tuple[Any, Any]]:
    """The key/value pairs of a sender's JSON object; none for null, a ConfigError otherwise."""
    if value is None:
        return []
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object, got {kind_of(value)}")
    return list(value.items())


def string_map(value: Any, where: str) -> dict[str, str]:
    """Reads a labels/annotations object as strings; booleans become "true"/"false"."""
    out: dict[str, str] = {}
    for key, item in object_items(value, where):
        if isinstance(item, bool):
            out[str(key)] = "true" if item else "false"
        elif isinstance(item, str | int | float):
            out[str(key)] = str(item)
        elif item is not None:
            raise ConfigError(f"{where}.{key_name(key)} must be a string, got {kind_of(item)}")
    return out


def alert_status(value: Any, where: str) -> Literal["firing", "resolved"]:
    """Accepts "firing" or "resolved" only."""
    if value not in _STATUSES:
        raise ConfigError(f"{where} must be 'firing' or 'resolved', got {shown(value)}")
    return value


_DATETIME = TypeAdapter(datetime)


def alert_time(value: Any, where: str) -> datetime | None:
    """Reads an RFC 3339 time as an aware datetime; None when empty or Go's zero time."""
    if value in (None, ""):
        return None
    try:
        moment = _DATETIME.validate_python(value)
    except ValidationError as exc:
        raise ConfigError(f"{where} is not an RFC 3339 time: {shown(value)}") from exc
    if moment.year <= 1:  # Go's zero time: Alertmanager's "not ended yet"
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def kind_of(value: Any) -> str:
    """Names a JSON value's type for a person ("an object", "a number")."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def key_name(key: Any) -> str:
    """Shows a sender's key readably, on one line."""
    text = str(key)
    return text if re.fullmatch(r"[\w.:/-]{1,40}", text) else shown(text)


def shown(value: Any) -> str:
    """Shows a sender's value as a repr of at most 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

"""What a runbook needs from a service, typed by the target models themselves.

A runbook declares ``Targets(needs=(PostgresTarget,))`` or
``Targets(any_of=(KubernetesTarget, DockerTarget, VercelTarget))``: the classes are the
contract, and :func:`field_for` finds the :class:`~integrations.service.Service` field that
holds each one. The CLI (``--service``), incidents and deployment runs all ask
:meth:`Targets.missing` before a run starts, so a service without what the runbook needs is
one line, never a flow that fails half-way.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from integrations.errors import ConfigError
from integrations.service import Service, target_fields

__all__ = ["Targets", "field_for"]


def field_for(kind: type) -> str:
    """The Service field that holds targets of this model; TypeError for a non-target."""
    try:
        return target_fields()[kind]
    except KeyError:
        raise TypeError(f"{kind.__name__} is not a target a Service can hold") from None


def _label(kind: type) -> str:
    return field_for(kind).replace("_", " ")


class Targets(BaseModel):
    """The targets a runbook works on: every one of ``needs``, at least one of ``any_of``;
    ``uses`` are optional extras it takes when the service has them."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    needs: tuple[type, ...] = ()
    any_of: tuple[type, ...] = ()
    uses: tuple[type, ...] = ()

    def model_post_init(self, _: Any) -> None:
        for kind in (*self.needs, *self.any_of, *self.uses):
            field_for(kind)  # a class no Service field holds is a declaration error

    @property
    def kinds(self) -> tuple[type, ...]:
        """Every target kind the runbook can use, in declaration order."""
        return tuple(dict.fromkeys((*self.needs, *self.any_of, *self.uses)))

    def describe(self) -> str:
        """``postgres``, ``kubernetes | docker | vercel``, ``prometheus (+ kubernetes, docker)``."""
        parts = [" + ".join(_label(k) for k in self.needs)] if self.needs else []
        if self.any_of:
            parts.append(" | ".join(_label(k) for k in self.any_of))
        text = " + ".join(parts)
        if self.uses:
            text += f" (+ {', '.join(_label(k) for k in self.uses)} when configured)"
        return text

    def missing(self, service: Service) -> str | None:
        """Why this service cannot run the runbook, or None."""
        lacking = [k for k in self.needs if not getattr(service, field_for(k))]
        if lacking:
            return f"no {' or '.join(_label(k) for k in lacking)} target"
        if self.any_of and not any(getattr(service, field_for(k)) for k in self.any_of):
            return f"none of {', '.join(_label(k) for k in self.any_of)} configured"
        return None

    def require(self, runbook: str, service: Service) -> None:
        """ConfigError naming what is missing, before anything runs."""
        why = self.missing(service)
        if why:
            raise ConfigError(
                f"{runbook} needs {self.describe()}; service {service.name!r} has {why}"
            )

    def present(self, service: Service) -> list[type]:
        """The kinds of this runbook the service has configured."""
        return [k for k in self.kinds if getattr(service, field_for(k))]

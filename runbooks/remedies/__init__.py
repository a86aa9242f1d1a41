"""Remediations more than one runbook uses, each with the builder of its action."""

"""Shared remediations: the changes more than one runbook makes, with their action builders."""

"""Typed evidence of the main findings, one model per check (or family of checks).

A check builds its model and stores the dump in ``Finding.evidence`` (the same JSON as
before they were typed); runbooks and remedies read it back through the model,
``finding.evidence_as(SessionsEvidence)``, instead of through string keys. The base,
:class:`checks.findings.Evidence`, keeps exactly the fields a check gave.
"""

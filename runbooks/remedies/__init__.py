"""Shared remediations: the changes more than one runbook makes, with their action builders.

A runbook never imports another runbook; what two of them change the same way lives here,
once — the builder that turns findings into an :class:`~runbooks.engine.model.Action` with
its exact preview and undo, the action kinds, and the ``@remediation`` that executes it
(re-validating against the live system first):

- :mod:`runbooks.remedies.configured`: run an action the service configured in oncall.yaml
  (``disable_feature_flag``, ``clear_cache``, ``scale``, ``pause_consumers`` …);
- :mod:`runbooks.remedies.scale`: scale a service out (Kubernetes replicas, compose scale);
- :mod:`runbooks.remedies.queues`: a work queue's workers and messages — scale or pause the
  workers, move poison messages to the dead-letter queue, requeue dead letters (built on the
  two above).

Read-only parts runbooks share (readers, check bundles, params bases) live in
:mod:`runbooks.diagnosis`, not here.
"""

"""Remediations more than one runbook proposes: each a guarded @remediation with its
action builder (the exact preview) and its undo. A runbook chooses what to change;
the remedy knows how, and re-validates against the live system before acting.

A runbook never imports another runbook; what two of them change the same way lives here,
once:

- :mod:`runbooks.remedies.configured`: run an action the service configured in oncall.yaml
  (``disable_feature_flag``, ``clear_cache``, ``scale``, ``pause_consumers`` …);
- :mod:`runbooks.remedies.scale`: scale a service out (Kubernetes replicas, compose scale);
- :mod:`runbooks.remedies.postgres`: cancel or terminate PostgreSQL backends;
- :mod:`runbooks.remedies.queues`: a work queue's workers and messages — scale or pause the
  workers, move poison messages to the dead-letter queue, requeue dead letters (built on
  configured actions and scale).

Read-only parts runbooks share (readers, check bundles, params bases) live in
:mod:`runbooks.diagnosis`, not here.
"""

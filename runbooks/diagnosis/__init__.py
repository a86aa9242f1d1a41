"""Shared read-only parts of runbooks: readers, check bundles, parameter bases and the rules
that judge a symptom after a fix.

What runbooks diagnose the same way lives here, once, and only reads. A runbook never
imports another runbook; changes they share live in :mod:`runbooks.remedies`.

- :mod:`runbooks.diagnosis.deploys`: recent deploys and the error rate around them
  (rollback, app-down);
- :mod:`runbooks.diagnosis.findings`: reading a diagnosis back, the same in every runbook:
  a check's problems, and what a check saw when it could read;
- :mod:`runbooks.diagnosis.http`: an HTTP service's symptom from Prometheus (error rate,
  latency) and what explains it — deploys, traffic, slow statements, dependencies,
  replicas (high-error-rate, performance-degradation);
- :mod:`runbooks.diagnosis.platforms`: the readers of the platforms a service runs on
  (Kubernetes, Docker), opened the same way wherever replicas or containers are read;
- :mod:`runbooks.diagnosis.queues`: a work queue's backlog from its broker (RabbitMQ,
  Redis), the quick reads its remediations re-validate with, and ``Drains``: what
  "drained" means after acting (queue-backlog).
"""

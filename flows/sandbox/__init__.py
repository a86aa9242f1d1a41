"""Local stand-ins for the outside world, used by drills (game days) and by the tests.

Real processes where they can run here (PostgreSQL via pgserver, Prometheus,
Alertmanager, metrics apps); small local servers speaking the documented REST
APIs where they cannot (Kubernetes, Docker Engine, 100ms, Statuspage, Vercel ...).
No Prefect import.
"""

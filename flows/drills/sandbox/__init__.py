"""Local stand-ins for the outside world, used by drills (game days) and by the tests.

Real processes where they can run here (PostgreSQL via pgserver, Prometheus,
Alertmanager, metrics apps); small local servers speaking the documented REST
APIs where they cannot (Kubernetes, 100ms, Statuspage, Vercel ...). No Prefect import.
Stand-ins that only the tests use (the Docker Engine API, thousands of HTTP targets) are in
``tests/support`` and not in the wheel.
"""

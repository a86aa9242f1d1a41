"""Stand-ins only the tests (and benchmarks) use, kept out of the wheel.

The Docker Engine API server (``docker_api``, ``docker_engine``, ``docker_objects``), driven
by the real ``docker`` client library, and ``http_targets``, thousands of local HTTP
endpoints for health-sweep tests and benchmarks. The drills' own sandbox is
:mod:`flows.drills.sandbox`.
"""

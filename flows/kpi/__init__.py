"""The seeds' improvement loop read back from Prefect: ``oncall report`` and ``oncall handoff``.

reader / parse (Prefect's REST API → facts) → compute (facts → figures, pure) → render
(figures → markdown); :mod:`flows.kpi.build` ties them to oncall.yaml, :mod:`flows.kpi.flow`
publishes the report on a schedule. Nothing here imports Prefect except the flow.
"""

"""Game days, and the sandbox they run in: build it, inject a fault, run the runbook, score it.

- :mod:`flows.drills.registry`: every scenario with a line about it (the registry imports the
  drill modules when a scenario runs; nothing here imports them);
- one module per scenario (``db_connections`` … ``provider_outage``), each ``drill(...)``
  returning a :class:`flows.drills.scorecard.Scorecard`;
- :mod:`flows.drills.play`: how a scenario module declares its drill
  (:func:`flows.drills.play.scenario`) and the :class:`flows.drills.play.Player` that runs
  and scores it; :mod:`flows.drills.scraped`, for the drills on an app Prometheus scrapes;
- :mod:`flows.drills.gameday`: ``oncall drill all``, the scorecard table, and the record of
  each scorecard in Prefect (artifact and event) that the scheduled ``drills`` deployment
  (:mod:`flows.drills.schedule`) writes;
- :mod:`flows.drills.sandbox`: the local stand-ins (embedded PostgreSQL, Prometheus, apps,
  Kubernetes and SaaS APIs, queues).

Kept free of imports so ``oncall drill --help`` stays fast.
"""

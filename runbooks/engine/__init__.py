"""The runbook engine: the model, the approval gate and its guard, the kernel, the report.

Runbook modules declare *what* they diagnose and change; the engine owns *how* a run
moves through diagnose → plan → gate → act → verify, and records it in Prefect.
"""

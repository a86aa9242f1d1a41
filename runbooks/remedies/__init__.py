"""Remediations more than one runbook proposes: each a guarded @remediation with its
action builder (the exact preview) and its undo. A runbook chooses what to change;
the remedy knows how, and re-validates against the live system before acting.
"""

"""Compatibility: the configuration lives in ``runbooks.config`` (runbooks resolve services)."""

from runbooks.config import *  # noqa: F403
from runbooks.config import __all__  # noqa: F401

"""Shared test set-up: hypothesis profiles, and ``tests/`` on the import path for the helpers shared
by ``tests/sim``, ``tests/reference`` and ``tests/loop`` (``strategies.py``, ``clitools.py``).

`ci` (used when the CI environment variable is set) is derandomised so CI is repeatable; `dev` is the
default for local runs.
"""
import os
import sys

from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

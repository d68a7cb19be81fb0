"""Hypothesis profiles for the property-based tests of every parser and protocol core.

`make test` runs the bounded "ci" profile (a few hundred examples per test, a deadline per example,
no example database written); `make fuzz` runs the long "fuzz" profile (HYPOTHESIS_PROFILE=fuzz).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=150,
    deadline=500,  # ms per example: generous for a loaded 2-core machine, but a hang fails
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=False,
)
settings.register_profile(
    "fuzz",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

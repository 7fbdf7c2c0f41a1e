"""Bounds shared by every config key: ``apf check`` refuses values outside them.

Plugins use these constants in their ``Options`` declarations (``Field(ge=0, le=COUNT_MAX)``);
``config.validate`` also applies ``NUMBER_MAX`` and finiteness to every number of every plugin.
"""

from __future__ import annotations

SECONDS_MAX = 366 * 86400.0  # intervals, timeouts, ages: a year is already absurd
INTERVAL_MIN = 0.1  # poll and cycle intervals: faster is a busy loop
COUNT_MAX = 1_000_000  # pilots per cycle, caps, maxima
NUMBER_MAX = 1e9  # any other number

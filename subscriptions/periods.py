"""Calendar months: a plan's period added to a date (pure).

A month after 31 January is the last day of February, as every billing system does it; the time of
day and the time zone are kept.
"""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(when: datetime, months: int) -> datetime:
    """`when` plus `months` calendar months, the day clamped to the end of a shorter month."""
    index = when.year * 12 + (when.month - 1) + months
    year, month = divmod(index, 12)
    day = min(when.day, calendar.monthrange(year, month + 1)[1])
    return when.replace(year=year, month=month + 1, day=day)

"""Five-field cron expressions: parse, find the next time, convert to systemd OnCalendar.

``minute hour day-of-month month day-of-week`` in local time, as in crontab(5): ``*``,
numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n`` (from a to the end), lists with
commas, month names ``jan``-``dec`` and weekday names ``sun``-``sat`` (0 and 7 are Sunday), and
the macros ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``, ``@monthly``, ``@yearly``
(``@annually``). As in Vixie cron, when both day fields are restricted (neither starts with
``*``) a day matches if *either* matches; otherwise both must.

It lives in platform/ because the platform file's validation needs it. Written here rather
than taken from croniter: the daemon, ``schedule show`` and the systemd
converter all need the expanded field sets, the grammar is small, and a backup tool's
schedule should not change meaning with a dependency upgrade.
"""

from __future__ import annotations

import calendar
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
# name, lowest, highest, names (value of the first name)
_FIELDS = [
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, (_MONTHS, 1)),
    ("day of week", 0, 7, (_DAYS, 0)),
]
_SYSTEMD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
_SEARCH_DAYS = 366 * 5  # Feb 29 on a Monday may take years; anything beyond never comes


class CronError(ValueError):
    """An expression that is not a valid cron expression; the message says why."""


def _number(text: str, field: str, low: int, high: int, names) -> int:  # type: ignore[no-untyped-def]
    lowered = text.lower()
    if names and lowered in names[0]:
        return names[0].index(lowered) + names[1]
    if not text.isdigit():
        raise CronError(f"{field}: {text!r} is not a number")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{field}: {value} is out of range {low}-{high}")
    return value


def _parse_field(text: str, field: str, low: int, high: int, names) -> frozenset[int]:  # type: ignore[no-untyped-def]
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"{field}: empty list item in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first = _number(start, field, low, high, names)
            last = _number(end, field, low, high, names)
            if first > last:
                raise CronError(f"{field}: range {base!r} goes backwards")
        else:
            first = _number(base, field, low, high, names)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    """A parsed expression. ``weekdays`` uses 0 = Sunday ... 6 = Saturday (7 folded into 0)."""

    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    days_restricted: bool  # the day-of-month field does not start with *
    weekdays_restricted: bool

    def matches_day(self, moment: datetime) -> bool:
        if moment.month not in self.months:
            return False
        in_days = moment.day in self.days
        in_weekdays = (moment.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, moment: datetime) -> datetime:
        """The first matching minute strictly after ``moment`` (naive local time)."""
        candidate = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = candidate + timedelta(days=_SEARCH_DAYS)
        while candidate < limit:
            if not self.matches_day(candidate):
                candidate = candidate.replace(hour=0, minute=0) + timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0) + timedelta(hours=1)
            elif candidate.minute not in self.minutes:
                candidate += timedelta(minutes=1)
            else:
                return candidate
        raise CronError(f"{self.text!r} never matches")

    def next_timestamp(self, after: float) -> float:
        """The next matching time after the POSIX time ``after``, in the local time zone."""
        moment = datetime.fromtimestamp(after)
        while True:
            found = self.next_after(moment)
            stamp = found.timestamp()
            if stamp > after:  # a local time repeated when the clocks go back: take it once
                return stamp
            moment = found

    def on_calendar(self) -> str:
        """The systemd OnCalendar= equivalent (systemd.time(7)). Both restricted day fields
        (cron's either-or) cannot be said in one OnCalendar line: CronError."""
        if self.days_restricted and self.weekdays_restricted:
            raise CronError(
                f"{self.text!r}: day of month and day of week both restricted (cron runs on "
                "either) has no single systemd OnCalendar equivalent"
            )
        weekday = ""
        if self.weekdays != frozenset(range(7)):
            weekday = _runs(sorted(self.weekdays), lambda d: _SYSTEMD_DAYS[d]) + " "
        return (
            f"{weekday}*-{_values(self.months, 1, 12)}-{_values(self.days, 1, 31)} "
            f"{_values(self.hours, 0, 23, 2)}:{_values(self.minutes, 0, 59, 2)}:00"
        )


def _values(values: frozenset[int], low: int, high: int, width: int = 2) -> str:
    if values == frozenset(range(low, high + 1)):
        return "*"
    ordered = sorted(values)
    if len(ordered) > 2:  # an even step from the first value to the end: a/n
        step = ordered[1] - ordered[0]
        if ordered == list(range(ordered[0], high + 1, step)) and high - ordered[-1] < step:
            return f"{ordered[0]:0{width}d}/{step}"
    return _runs(ordered, lambda value: f"{value:0{width}d}")


def _runs(ordered: list[int], name: Callable[[int], str]) -> str:
    """[1, 2, 3, 5] -> '01..03,05': runs of three or more as systemd ranges."""
    parts, start = [], 0
    for index in range(1, len(ordered) + 1):
        if index == len(ordered) or ordered[index] != ordered[index - 1] + 1:
            run = ordered[start:index]
            if len(run) >= 3:
                parts.append(f"{name(run[0])}..{name(run[-1])}")
            else:
                parts.extend(name(value) for value in run)
            start = index
    return ",".join(parts)


def parse(text: str) -> Cron:
    """Parse an expression or a macro; CronError saying what is wrong."""
    if not isinstance(text, str):
        raise CronError("expected a string such as '30 2 * * *' or '@daily'")
    expression = text.strip()
    if expression.startswith("@"):
        if expression.lower() not in MACROS:
            raise CronError(f"unknown macro {expression!r} (known: {', '.join(MACROS)})")
        expression = MACROS[expression.lower()]
    parts = expression.split()
    if len(parts) != 5:
        raise CronError(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    sets = [
        _parse_field(part, name, low, high, names)
        for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
    ]
    weekdays = frozenset(day % 7 for day in sets[4])
    cron = Cron(
        text.strip(),
        sets[0],
        sets[1],
        sets[2],
        sets[3],
        weekdays,
        days_restricted=not parts[2].startswith("*"),
        weekdays_restricted=not parts[4].startswith("*"),
    )
    if not cron.weekdays_restricted or not cron.days_restricted:
        longest = max(calendar.monthrange(2024, month)[1] for month in cron.months)  # leap year
        if cron.days_restricted and min(cron.days) > longest:
            raise CronError(f"{text.strip()!r} never matches: no such day in those months")
    return cron


def interval_estimate(cron: Cron, now: float) -> float:
    """The longest gap between the next few runs after ``now`` (seconds): what `report` expects."""
    times = [now]
    for _ in range(8):
        times.append(cron.next_timestamp(times[-1]))
    return max(b - a for a, b in itertools.pairwise(times[1:]))

"""When a scheduled task runs: its ticks, the instants of `@task(every=...)` or `@task(cron=...)`.

- `Every(seconds)`: every whole multiple of `seconds` since the Unix epoch (UTC), so every
  consumer computes the same ticks without talking to the others (every=30: :00 and :30).
- `Cron(expression)`: five fields (minute hour day month day-of-week), each parsed by huey's
  `crontab` (numbers, `*`, `a-b`, `a,b`, `*/n`, `a-b/n`; day of week 0-6, 0 or 7 Sunday),
  matched against the wall clock of a time zone (zoneinfo). As in POSIX cron, when both day
  fields are restricted a day matches either.

Daylight saving time, the rule of Vixie cron and its heirs:
- a wall time that happens twice (the clocks go back) is one tick, at its first occurrence;
  a cron whose hour field is `*` runs at both, because it is about elapsed time;
- a wall time that never happens (the clocks go forward) is one tick, moved forward by the
  gap (02:30 becomes 03:30 on a one-hour change): a daily job runs once, not zero or two times.

Every instant here is a UTC `datetime`.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from huey.api import crontab

MINUTE = timedelta(minutes=1)
# A wall time and the instant it names differ by the zone's offset, and the offset changes by
# at most a few hours: scanning this much wall time around an instant finds every tick near it.
OFFSET_MARGIN = timedelta(hours=3)
HORIZON = timedelta(days=8 * 366)  # a cron that matches no time in this long (`0 0 31 2 *`) never matches
FIELDS = ("minute", "hour", "day", "month", "day of week")


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def ceil_minute(moment: datetime) -> datetime:
    floored = floor_minute(moment)
    return floored if floored == moment else floored + MINUTE


@dataclass(frozen=True)
class Every:
    """A tick every `seconds` seconds, at the whole multiples of `seconds` since the epoch."""
    seconds: int

    def describe(self) -> str:
        return f"every {self.seconds} s"

    def default_grace(self) -> float:
        return float(self.seconds)

    def next_after(self, moment: datetime, zone: ZoneInfo) -> datetime:
        stamp = moment.timestamp()
        return datetime.fromtimestamp((stamp // self.seconds + 1) * self.seconds, UTC)

    def ticks(self, start: datetime, end: datetime, zone: ZoneInfo) -> Iterator[datetime]:
        """The ticks in (start, end], oldest first."""
        tick = self.next_after(start, zone)
        while tick <= end:
            yield tick
            tick += timedelta(seconds=self.seconds)


@dataclass(frozen=True)
class Cron:
    """Five cron fields, matched in a time zone's wall clock."""
    expression: str
    _matchers: tuple = field(init=False, repr=False, compare=False)
    _every_hour: bool = field(init=False, repr=False, compare=False)  # its hour field matches all 24

    def __post_init__(self):
        fields = self.expression.split()
        if len(fields) != 5:
            raise ValueError(f"cron {self.expression!r} has {len(fields)} fields: it needs 5 "
                             "(minute hour day month day-of-week, e.g. '0 3 * * *')")
        matchers = []
        for name, value, keyword in zip(FIELDS, fields, ("minute", "hour", "day", "month", "day_of_week"),
                                        strict=True):
            if not re.fullmatch(r"[\d*,/-]+", value):
                raise ValueError(f"cron {self.expression!r}: its {name} field {value!r} is not numbers, *, "
                                 "ranges (a-b), lists (a,b) or steps (*/n)")
            try:
                matchers.append(crontab(**{keyword: value}, strict=True))
            except ValueError as error:
                raise ValueError(f"cron {self.expression!r}: its {name} field {value!r}: {error}") from None
        object.__setattr__(self, "_matchers", tuple(matchers))
        object.__setattr__(self, "_every_hour", all(matchers[1](datetime(2000, 1, 1, h)) for h in range(24)))
        if next(self._wall_matches(datetime(2000, 1, 1), datetime(2000, 1, 1) + HORIZON), None) is None:
            raise ValueError(f"cron {self.expression!r} matches no date")

    def describe(self) -> str:
        return f"cron {self.expression!r}"

    def default_grace(self) -> float:
        """The time between its first two ticks from the epoch: its interval, roughly."""
        start = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday
        first = self.next_after(start, ZoneInfo("UTC"))
        return (self.next_after(first, ZoneInfo("UTC")) - first).total_seconds()

    def _day_matches(self) -> Callable[[datetime], bool]:
        day, weekday = self._matchers[2], self._matchers[4]
        day_field, weekday_field = self.expression.split()[2], self.expression.split()[4]
        if day_field != "*" and weekday_field != "*":
            return lambda moment: day(moment) or weekday(moment)
        return lambda moment: day(moment) and weekday(moment)

    def _wall_matches(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """The naive wall times in [start, end] that the fields match, oldest first, skipping
        whole months, days and hours that cannot match."""
        minute, hour, _, month, _ = self._matchers
        day_matches = self._day_matches()
        moment = ceil_minute(start)
        while moment <= end:
            if not month(moment):
                moment = (moment.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not day_matches(moment):
                moment = moment.replace(hour=0, minute=0) + timedelta(days=1)
            elif not hour(moment):
                moment = moment.replace(minute=0) + timedelta(hours=1)
            elif not minute(moment):
                moment += MINUTE
            else:
                yield moment
                moment += MINUTE

    def _instants(self, wall: datetime, zone: ZoneInfo) -> list[datetime]:
        """The instants a matching wall time stands for (DST rule in the module's docstring)."""
        first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
        second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        exists = first.astimezone(zone).replace(tzinfo=None) == wall
        if exists and second > first and self._every_hour:
            return [first, second]  # it happens twice, and the cron runs every hour
        return [first]  # once, the first time; or, in a gap, moved forward by the gap (fold=0)

    def ticks(self, start: datetime, end: datetime, zone: ZoneInfo) -> Iterator[datetime]:
        """The ticks in (start, end], oldest first."""
        walls = self._wall_matches(start.astimezone(zone).replace(tzinfo=None) - OFFSET_MARGIN,
                                   end.astimezone(zone).replace(tzinfo=None) + OFFSET_MARGIN)
        pending = []  # instants found but not yet given: a later wall time may stand for an earlier instant
        given = start
        for wall in walls:
            pending.extend(instant for instant in self._instants(wall, zone) if given < instant <= end)
            pending.sort()
            # An instant is final once the scan is OFFSET_MARGIN of wall time past it.
            while pending and pending[0].astimezone(zone).replace(tzinfo=None) + OFFSET_MARGIN < wall:
                instant = pending.pop(0)
                if instant > given:
                    given = instant
                    yield instant
        for instant in sorted(set(pending)):
            if instant > given:
                given = instant
                yield instant

    def next_after(self, moment: datetime, zone: ZoneInfo) -> datetime | None:
        return next(self.ticks(moment, moment + HORIZON, zone), None)


def parse_every(every) -> Every:
    """`every`: whole seconds (>= 1) or a datetime.timedelta of whole seconds."""
    if isinstance(every, timedelta):
        seconds = every.total_seconds()
    elif isinstance(every, int) and not isinstance(every, bool):
        seconds = every
    else:
        raise ValueError(f"every={every!r}: expected a whole number of seconds (at least 1) or a datetime.timedelta")
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"every={every!r}: expected a whole number of seconds, at least 1")
    return Every(int(seconds))


def zone_named(name: str) -> ZoneInfo:
    """An IANA time zone (`Europe/Paris`, `UTC`), or ValueError naming it."""
    try:
        return ZoneInfo(name)
    except (ValueError, LookupError, OSError):  # ZoneInfoNotFoundError is a KeyError; a bad path a ValueError
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name such as UTC or Europe/Paris") from None

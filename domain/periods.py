"""Billing periods: half-open `[start, end)` intervals in UTC, and proration by the second.

- **calendar** anchor: periods follow the UTC calendar — a day starts at midnight, a week on Monday,
  a month on the 1st, a quarter on Jan 1 / Apr 1 / Jul 1 / Oct 1, a year on Jan 1. A subscription
  that starts mid-period has a short first period, from its start to the next calendar boundary.
- **anniversary** anchor: periods repeat from the billing start, keeping its time of day. For months,
  quarters and years the anchor day returns when it exists and falls on the month's last day when
  it does not: Jan 31 → Feb 29 → Mar 31 → Apr 30 (each boundary is computed from the anchor, never
  from the previous boundary, so a short month never shifts the later ones).

Proration: an amount for a whole period, used over `[used_from, used_to)` of it, is
`amount × seconds used / seconds in the period`, both durations exact (to the microsecond), the
period's real length (a 28-day February is shorter than a 31-day March). It is not rounded here:
rounding happens once, on the invoice line.
"""

import calendar
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

import msgspec

Interval = Literal["day", "week", "month", "quarter", "year"]
Anchor = Literal["calendar", "anniversary"]
MONTHS = {"month": 1, "quarter": 3, "year": 12}
DAYS = {"day": 1, "week": 7}


class Period(msgspec.Struct, frozen=True):
    """`[start, end)`. A calendar period cut short by a mid-period start keeps, in `since`, where the
    whole period began: proration is over the whole period's length."""

    start: datetime
    end: datetime
    since: datetime | None = None

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    @property
    def microseconds(self) -> int:
        """The whole period's real length."""
        return _us(self.end - (self.since or self.start))


def parse_instant(text: str) -> datetime | None:
    """An RFC 3339 time with an offset (`Z` too), or None when `text` is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _us(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def add_months(anchor: datetime, months: int) -> datetime:
    """`anchor` moved by whole months, its day clamped to the target month's last day."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    return anchor.replace(year=year, month=month, day=min(anchor.day, calendar.monthrange(year, month)[1]))


def _calendar_start(moment: datetime, interval: Interval) -> datetime:
    """The start of the calendar period holding `moment`."""
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "day":
        return midnight
    if interval == "week":
        return midnight - timedelta(days=midnight.weekday())
    first = midnight.replace(day=1)
    if interval == "month":
        return first
    if interval == "quarter":
        return first.replace(month=(first.month - 1) // 3 * 3 + 1)
    return first.replace(month=1)


def advance(moment: datetime, interval: Interval, count: int) -> datetime:
    """`moment` moved by `count` intervals (months from `moment` itself: the 31st comes back)."""
    if interval in DAYS:
        return moment + timedelta(days=DAYS[interval] * count)
    return add_months(moment, MONTHS[interval] * count)


def period_at(billing_start: datetime, interval: Interval, anchor: Anchor, moment: datetime) -> Period:
    """The billing period holding `moment` (at or after `billing_start`)."""
    assert billing_start.tzinfo is not None and moment.tzinfo is not None, "UTC-aware times only"
    assert moment >= billing_start, (moment, billing_start)
    if anchor == "calendar":
        whole = _calendar_start(moment, interval)
        end = advance(whole, interval, 1)
        return Period(billing_start, end, whole) if billing_start > whole else Period(whole, end)
    count = _periods_before(billing_start, interval, moment)
    return Period(advance(billing_start, interval, count), advance(billing_start, interval, count + 1))


def _periods_before(billing_start: datetime, interval: Interval, moment: datetime) -> int:
    """How many whole anniversary periods lie between `billing_start` and `moment`."""
    if interval in DAYS:
        return (moment - billing_start) // timedelta(days=DAYS[interval])
    months = MONTHS[interval]
    count = ((moment.year - billing_start.year) * 12 + moment.month - billing_start.month) // months
    while count > 0 and advance(billing_start, interval, count) > moment:
        count -= 1
    while advance(billing_start, interval, count + 1) <= moment:
        count += 1
    return count


def periods(billing_start: datetime, interval: Interval, anchor: Anchor, until: datetime) -> list[Period]:
    """Every period from `billing_start` that begins before `until`, in order."""
    found: list[Period] = []
    moment = billing_start
    while moment < until:
        period = period_at(billing_start, interval, anchor, moment)
        found.append(period)
        moment = period.end
    return found


def prorate(amount: Decimal, period: Period, used_from: datetime, used_to: datetime) -> Decimal:
    """`amount` for the whole period, for the part `[used_from, used_to)` of it (clipped to it)."""
    low, high = max(used_from, period.since or period.start), min(used_to, period.end)
    if high <= low:
        return Decimal(0)
    used = _us(high - low)
    if used == period.microseconds:
        return amount
    return amount * Decimal(used) / Decimal(period.microseconds)


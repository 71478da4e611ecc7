"""Billing periods and proration (domain/periods.py): worked examples and properties."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from domain.periods import Period, add_months, period_at, periods, prorate


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def starts(billing_start: str, interval: str, anchor: str, until: str) -> list[str]:
    return [p.start.isoformat()[:19] for p in periods(utc(billing_start), interval, anchor, utc(until))]


def test_an_anniversary_on_the_31st_clamps_to_short_months_and_returns():
    # Given a monthly anniversary anchored on Jan 31 of a leap year
    found = starts("2024-01-31T10:00:00", "month", "anniversary", "2024-06-01")
    # Then February ends on the 29th, and the 31st returns whenever the month has one
    assert found == ["2024-01-31T10:00:00", "2024-02-29T10:00:00", "2024-03-31T10:00:00",
                     "2024-04-30T10:00:00", "2024-05-31T10:00:00"]


def test_a_29th_of_february_anniversary_yearly_falls_on_the_28th_then_returns():
    found = starts("2024-02-29T00:00:00", "year", "anniversary", "2029-01-01")
    assert found == ["2024-02-29T00:00:00", "2025-02-28T00:00:00", "2026-02-28T00:00:00",
                     "2027-02-28T00:00:00", "2028-02-29T00:00:00"]


def test_calendar_periods_start_on_the_1st_monday_quarter_and_year_after_a_short_first_one():
    assert starts("2026-11-18T15:30:00", "month", "calendar", "2027-01-15") == [
        "2026-11-18T15:30:00", "2026-12-01T00:00:00", "2027-01-01T00:00:00"]
    assert starts("2026-11-25T09:00:00", "week", "calendar", "2026-12-08") == [  # Wednesday, then Mondays
        "2026-11-25T09:00:00", "2026-11-30T00:00:00", "2026-12-07T00:00:00"]
    assert starts("2026-05-20T00:00:00", "quarter", "calendar", "2027-01-02") == [
        "2026-05-20T00:00:00", "2026-07-01T00:00:00", "2026-10-01T00:00:00", "2027-01-01T00:00:00"]
    assert starts("2026-03-03T00:00:00", "year", "calendar", "2028-01-01") == [
        "2026-03-03T00:00:00", "2027-01-01T00:00:00"]
    assert starts("2026-11-25T09:00:00", "day", "calendar", "2026-11-27") == [
        "2026-11-25T09:00:00", "2026-11-26T00:00:00"]


def test_periods_are_half_open():
    # Given a calendar month
    period = period_at(utc("2026-11-01T00:00:00"), "month", "calendar", utc("2026-11-30T23:59:59.999999"))
    # Then its end belongs to the next period, its start to it
    assert period == Period(utc("2026-11-01T00:00:00"), utc("2026-12-01T00:00:00"))
    assert utc("2026-12-01T00:00:00") not in period and utc("2026-11-01T00:00:00") in period
    following = period_at(utc("2026-11-01T00:00:00"), "month", "calendar", utc("2026-12-01T00:00:00"))
    assert following.start == period.end


def test_proration_is_by_the_second_over_the_period_s_real_length():
    # Given $28 a month, in February (28 days) and in March (31 days)
    february = Period(utc("2026-02-01T00:00:00"), utc("2026-03-01T00:00:00"))
    march = Period(utc("2026-03-01T00:00:00"), utc("2026-04-01T00:00:00"))
    # Then 7 days of February are a quarter of it, 7 days of March are 7/31
    assert prorate(Decimal(28), february, utc("2026-02-22T00:00:00"), utc("2026-03-05T00:00:00")) == Decimal(7)
    assert prorate(Decimal(31), march, utc("2026-03-25T00:00:00"), utc("2026-04-01T00:00:00")) == Decimal(7)
    # And one second of a 30-day month is 1/2,592,000 of it; none is nothing; all is the amount, exactly
    november = Period(utc("2026-11-01T00:00:00"), utc("2026-12-01T00:00:00"))
    assert prorate(Decimal("2592000"), november, utc("2026-11-10T00:00:00"), utc("2026-11-10T00:00:01")) == 1
    assert prorate(Decimal(10), november, utc("2026-12-01T00:00:00"), utc("2026-12-05T00:00:00")) == 0
    # And a first period cut short by a mid-month start is prorated over the whole month
    first = period_at(utc("2026-11-21T00:00:00"), "month", "calendar", utc("2026-11-25T00:00:00"))
    assert (first.start, first.end) == (utc("2026-11-21T00:00:00"), utc("2026-12-01T00:00:00"))
    assert prorate(Decimal(30), first, first.start, first.end) == Decimal(10)
    assert prorate(Decimal("49.99"), november, utc("2026-10-01T00:00:00"), utc("2027-01-01T00:00:00")) == Decimal(
        "49.99")


moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 12, 31)).map(
    lambda moment: moment.replace(tzinfo=UTC))
intervals = st.sampled_from(["day", "week", "month", "quarter", "year"])
anchors = st.sampled_from(["calendar", "anniversary"])


@given(moments, intervals, anchors, st.integers(min_value=0, max_value=4000))
def test_every_moment_lies_in_exactly_one_period_and_periods_touch(start, interval, anchor, days_later):
    # Given a billing start and a later moment
    moment = start + timedelta(days=days_later, seconds=days_later * 37)
    # When the period holding it is found
    period = period_at(start, interval, anchor, moment)
    # Then it holds the moment, starts no earlier than billing, and the next one starts where it ends
    assert moment in period and period.start >= start and period.end > period.start
    assert period_at(start, interval, anchor, period.end).start == period.end
    if period.start > start:  # and the one before it ends where it starts
        assert period_at(start, interval, anchor, period.start - timedelta(microseconds=1)).end == period.start


@given(moments, st.integers(min_value=0, max_value=1200))
def test_an_anniversary_keeps_its_day_whenever_the_month_has_it(start, months):
    moved = add_months(start, months)
    assert moved.day == start.day or moved.day < start.day and (moved + timedelta(days=1)).month != moved.month
    assert (moved.hour, moved.minute, moved.second, moved.microsecond) == (
        start.hour, start.minute, start.second, start.microsecond)


@given(st.decimals(min_value=0, max_value=10**9, places=6), moments, st.integers(1, 10**6), st.integers(1, 10**6))
def test_prorated_parts_add_up_to_the_whole(amount, start, first, second):
    # Given a period split at an inner moment
    period = Period(start, start + timedelta(seconds=first + second))
    middle = start + timedelta(seconds=first)
    # Then the two parts add up to the amount (within the 60-digit working precision)
    whole = prorate(amount, period, period.start, middle) + prorate(amount, period, middle, period.end)
    assert abs(whole - amount) <= Decimal("1e-40")

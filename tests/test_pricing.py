"""Pricing semantics of API.md, pinned one rule at a time (amounts exact, unrounded until a line)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec
import pytest

from domain.money import decode_hook, round_money
from domain.price import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Price,
    Tier,
    VolumePrice,
)
from domain.pricing import Charge, TierCharge, Transaction, rate, rate_transactions

START = datetime(2025, 1, 1, tzinfo=UTC)


def decode_price(body: dict) -> Price:
    return msgspec.convert(body, Price, dec_hook=decode_hook)


def tier(up_to: str | None, unit_amount: str, flat_amount: str = "0") -> Tier:
    return Tier(
        up_to=None if up_to is None else Decimal(up_to),
        unit_amount=Decimal(unit_amount),
        flat_amount=Decimal(flat_amount),
    )


# 1.00 a unit up to 10 (+5.00 flat), 0.50 up to 20 (+3.00 flat), then 0.10 (+2.00 flat).
THREE_TIERS = (tier("10", "1.00", "5.00"), tier("20", "0.50", "3.00"), tier(None, "0.10", "2.00"))
# Decimal bounds: 10.00 a unit up to 0.1, 2.00 up to 1, then 1.00.
DECIMAL_TIERS = (tier("0.1", "10.00"), tier("1", "2.00"), tier(None, "1.00"))


def graduated(tiers: tuple[Tier, ...]) -> GraduatedPrice:
    return GraduatedPrice(meter_code="api_calls", currency="USD", tiers=tiers)


def volume(tiers: tuple[Tier, ...]) -> VolumePrice:
    return VolumePrice(meter_code="api_calls", currency="USD", tiers=tiers)


def package(amount: str, size: str, free_units: str = "0") -> PackagePrice:
    return PackagePrice(
        meter_code="messages",
        currency="USD",
        package_amount=Decimal(amount),
        package_size=Decimal(size),
        free_units=Decimal(free_units),
    )


def percentage(rate_percent: str = "2.9", fixed_fee: str = "0.30", **limits: str) -> PercentagePrice:
    return PercentagePrice(
        meter_code="payment_volume",
        currency="USD",
        rate=Decimal(rate_percent),
        fixed_fee=Decimal(fixed_fee),
        **{name: Decimal(value) for name, value in limits.items()},
    )


def transactions(*amounts: str) -> list[Transaction]:
    """One transaction per amount, a minute apart, in the order given."""
    return [
        Transaction(f"txn_{index:03}", START + timedelta(minutes=index), Decimal(amount))
        for index, amount in enumerate(amounts)
    ]


# Flat and per unit


def test_a_flat_price_charges_its_amount_whatever_the_usage():
    # Given a 49.00 USD monthly platform fee
    price = FlatPrice(currency="USD", pay_in="advance", amount=Decimal("49.00"))
    # When it is rated for no usage and for a lot of usage
    # Then both periods charge exactly 49.00, with no tier breakdown
    assert rate(price, Decimal("0")) == Charge(amount=Decimal("49.00"))
    assert rate(price, Decimal("1000000")) == Charge(amount=Decimal("49.00"))


def test_a_per_unit_price_charges_each_unit():
    # Given 0.25 USD per API call
    price = PerUnitPrice(meter_code="api_calls", currency="USD", unit_amount=Decimal("0.25"))
    # When 7 calls are rated
    # Then the charge is 1.75
    assert rate(price, Decimal("7")) == Charge(amount=Decimal("1.75"))


def test_a_sub_cent_token_price_is_charged_exactly_and_rounded_only_on_the_line():
    # Given 0.000002 USD per token
    price = PerUnitPrice(meter_code="tokens", currency="USD", unit_amount=Decimal("0.000002"))
    # When 1,234,567 tokens are rated
    charge = rate(price, Decimal("1234567"))
    # Then the charge is exactly 2.469134, and the invoice line rounds it to 2.47
    assert charge.amount == Decimal("2.469134")
    assert round_money(charge.amount, "USD") == Decimal("2.47")


def test_a_negative_quantity_is_a_programmer_error():
    # Given a per-unit price
    price = PerUnitPrice(meter_code="api_calls", currency="USD", unit_amount=Decimal("1"))
    # When it is rated for negative usage, or for a float
    # Then rating crashes rather than charging
    with pytest.raises(AssertionError):
        rate(price, Decimal("-1"))
    with pytest.raises(AssertionError):
        rate(price, 1.5)


def test_a_percentage_price_rates_transactions_not_a_quantity():
    # Given a percentage price
    # When it is rated like a quantity
    # Then rating crashes: percentage prices go through rate_transactions
    with pytest.raises(AssertionError):
        rate(percentage(), Decimal("100"))


# Package


def test_a_package_price_charges_whole_packages_rounding_up():
    # Given 5.00 USD per package of 100 messages
    price = package("5.00", "100")
    # When 101 messages are sent
    # Then two packages are charged
    assert rate(price, Decimal("101")) == Charge(amount=Decimal("10.00"))


def test_usage_exactly_on_a_package_boundary_buys_no_extra_package():
    # Given 5.00 USD per package of 100 messages
    price = package("5.00", "100")
    # When exactly 200 messages are sent, or none
    # Then exactly two packages are charged, and none for no usage
    assert rate(price, Decimal("200")).amount == Decimal("10.00")
    assert rate(price, Decimal("0")).amount == Decimal("0")


def test_free_units_are_taken_off_before_packages_are_counted():
    # Given 5.00 USD per package of 100 messages, the first 50 free
    price = package("5.00", "100", free_units="50")
    # When 30, 50, 150 and 151 messages are sent
    # Then usage within the free units is free, 150 is one package, 151 is two
    assert rate(price, Decimal("30")).amount == Decimal("0")
    assert rate(price, Decimal("50")).amount == Decimal("0")
    assert rate(price, Decimal("150")).amount == Decimal("5.00")
    assert rate(price, Decimal("151")).amount == Decimal("10.00")


def test_a_decimal_package_size_counts_packages_exactly():
    # Given 1.00 USD per package of 0.3 GB
    price = package("1.00", "0.3")
    # When 0.9 GB is used (exactly three packages) and when 0.9000001 GB is used
    # Then three packages are charged, then four: no inexact division decides the count
    assert rate(price, Decimal("0.9")).amount == Decimal("3.00")
    assert rate(price, Decimal("0.9000001")).amount == Decimal("4.00")


# Graduated


def test_zero_usage_on_a_graduated_price_charges_the_first_tiers_flat_amount():
    # Given graduated tiers whose first tier has a 5.00 flat amount
    # When nothing is used
    charge = rate(graduated(THREE_TIERS), Decimal("0"))
    # Then the first tier's flat amount is charged, as zero usage lies in the first tier
    assert charge == Charge(
        amount=Decimal("5.00"),
        tiers=(TierCharge(index=0, from_units=Decimal("0"), up_to=Decimal("10"), units=Decimal("0"),
                          unit_amount=Decimal("1.00"), flat_amount=Decimal("5.00"),
                          amount=Decimal("5.00")),),
    )


def test_graduated_usage_exactly_at_a_bound_stays_in_that_tier():
    # Given graduated tiers up to 10 (1.00 a unit, 5.00 flat) and up to 20 (0.50, 3.00 flat)
    # When exactly 10 units are used
    charge = rate(graduated(THREE_TIERS), Decimal("10"))
    # Then all 10 are priced in the first tier and the second tier's flat amount is not charged
    assert charge.amount == Decimal("15.00")
    assert [(t.index, t.units) for t in charge.tiers] == [(0, Decimal("10"))]


def test_graduated_usage_just_above_a_bound_reaches_the_next_tier_and_its_flat_amount():
    # Given graduated tiers up to 10 (1.00 a unit, 5.00 flat) and up to 20 (0.50, 3.00 flat)
    # When 10.001 units are used
    charge = rate(graduated(THREE_TIERS), Decimal("10.001"))
    # Then 0.001 units are priced in the second tier, which charges its flat amount once
    assert charge.amount == Decimal("15.00") + Decimal("0.0005") + Decimal("3.00")
    assert [(t.index, t.units, t.flat_amount) for t in charge.tiers] == [
        (0, Decimal("10"), Decimal("5.00")),
        (1, Decimal("0.001"), Decimal("3.00")),
    ]


def test_a_graduated_price_prices_each_tiers_units_at_that_tiers_rate():
    # Given three graduated tiers
    # When 25 units are used
    charge = rate(graduated(THREE_TIERS), Decimal("25"))
    # Then 10 units at 1.00 + 5.00, 10 at 0.50 + 3.00 and 5 at 0.10 + 2.00: 25.50 in total
    assert charge.tiers == (
        TierCharge(index=0, from_units=Decimal("0"), up_to=Decimal("10"), units=Decimal("10"),
                   unit_amount=Decimal("1.00"), flat_amount=Decimal("5.00"), amount=Decimal("15.00")),
        TierCharge(index=1, from_units=Decimal("10"), up_to=Decimal("20"), units=Decimal("10"),
                   unit_amount=Decimal("0.50"), flat_amount=Decimal("3.00"), amount=Decimal("8.00")),
        TierCharge(index=2, from_units=Decimal("20"), up_to=None, units=Decimal("5"),
                   unit_amount=Decimal("0.10"), flat_amount=Decimal("2.00"), amount=Decimal("2.50")),
    )
    assert charge.amount == Decimal("25.50")


def test_graduated_tier_bounds_may_be_decimals():
    # Given tiers up to 0.1 at 10.00, up to 1 at 2.00, then 1.00
    price = graduated(DECIMAL_TIERS)
    # When 0.1, 0.5, 1 and 1.5 units are used
    # Then each bound is inclusive and each tier prices only its own units
    assert rate(price, Decimal("0.1")).amount == Decimal("1.00")
    assert rate(price, Decimal("0.5")).amount == Decimal("1.00") + Decimal("0.80")
    assert rate(price, Decimal("1")).amount == Decimal("1.00") + Decimal("1.80")
    assert rate(price, Decimal("1.5")).amount == Decimal("1.00") + Decimal("1.80") + Decimal("0.50")


# Volume


def test_zero_usage_on_a_volume_price_charges_the_first_tiers_flat_amount():
    # Given volume tiers whose first tier has a 5.00 flat amount
    # When nothing is used
    charge = rate(volume(THREE_TIERS), Decimal("0"))
    # Then the first tier's flat amount is charged
    assert charge.amount == Decimal("5.00")
    assert [(t.index, t.units, t.flat_amount) for t in charge.tiers] == [
        (0, Decimal("0"), Decimal("5.00"))
    ]


def test_volume_usage_exactly_at_a_bound_prices_every_unit_in_that_tier():
    # Given volume tiers up to 10 (1.00 a unit, 5.00 flat) and up to 20 (0.50, 3.00 flat)
    # When exactly 10 units are used
    # Then every unit is priced at 1.00, plus the first tier's flat amount
    assert rate(volume(THREE_TIERS), Decimal("10")).amount == Decimal("15.00")


def test_volume_usage_just_above_a_bound_prices_every_unit_in_the_next_tier():
    # Given volume tiers up to 10 (1.00 a unit, 5.00 flat) and up to 20 (0.50, 3.00 flat)
    # When 10.001 units are used
    charge = rate(volume(THREE_TIERS), Decimal("10.001"))
    # Then all 10.001 units are priced at 0.50, plus only the second tier's flat amount
    assert charge == Charge(
        amount=Decimal("8.0005"),
        tiers=(TierCharge(index=1, from_units=Decimal("10"), up_to=Decimal("20"),
                          units=Decimal("10.001"), unit_amount=Decimal("0.50"),
                          flat_amount=Decimal("3.00"), amount=Decimal("8.0005")),),
    )


def test_volume_tier_bounds_may_be_decimals():
    # Given volume tiers up to 0.1 at 10.00, up to 1 at 2.00, then 1.00
    price = volume(DECIMAL_TIERS)
    # When 0.1, 0.100001, 1 and 1.5 units are used
    # Then the tier the total reaches prices every unit
    assert rate(price, Decimal("0.1")).amount == Decimal("1.00")
    assert rate(price, Decimal("0.100001")).amount == Decimal("0.200002")
    assert rate(price, Decimal("1")).amount == Decimal("2.00")
    assert rate(price, Decimal("1.5")).amount == Decimal("1.50")


def test_volume_and_graduated_differ_on_the_same_tiers():
    # Given the same three tiers as a graduated and as a volume price
    # When 25 units are used
    # Then graduated prices each tier's own units (25.50); volume prices all 25 at the third (4.50)
    assert rate(graduated(THREE_TIERS), Decimal("25")).amount == Decimal("25.50")
    assert rate(volume(THREE_TIERS), Decimal("25")).amount == Decimal("4.50")


# Percentage


def test_no_transactions_charge_nothing():
    # Given 2.9 % + 0.30 with a 0.50 minimum per transaction
    price = percentage(min_per_transaction="0.50")
    # When the period has no transactions
    # Then nothing is charged
    assert rate_transactions(price, []) == Charge(amount=Decimal("0"))


def test_each_paid_transaction_pays_the_rate_plus_the_fixed_fee():
    # Given 2.9 % + 0.30 per transaction and no allowance
    # When two 100.00 transactions are rated
    # Then each pays 2.90 + 0.30
    assert rate_transactions(percentage(), transactions("100.00", "100.00")).amount == Decimal("6.40")


def test_with_both_limits_zero_there_is_no_allowance():
    # Given 2.9 % + 0.30 with free_units 0 and free_amount 0
    price = percentage(free_units="0", free_amount="0")
    # When one 10.00 transaction is rated
    # Then it is paid
    assert rate_transactions(price, transactions("10.00")).amount == Decimal("0.59")


def test_the_first_free_units_transactions_are_free_whatever_their_value():
    # Given the first 2 transactions free and no free amount (0: not a limit)
    price = percentage(free_units="2")
    # When 1000.00, 1000.00 and 100.00 are rated
    # Then only the third pays: 2.90 + 0.30
    assert rate_transactions(price, transactions("1000.00", "1000.00", "100.00")).amount == Decimal("3.20")


def test_a_fractional_free_units_is_refused_because_it_counts_whole_transactions():
    # Given free_units 2.5 on a percentage price
    # When it is decoded
    # Then it is refused, naming free_units
    with pytest.raises(ValueError, match="free_units"):
        percentage(free_units="2.5")


def test_transaction_value_up_to_the_free_amount_is_free_whatever_the_count():
    # Given 100.00 of transaction value free and no free count (0: not a limit)
    price = percentage(free_amount="100.00")
    # When ten 10.00 transactions and then one more are rated
    # Then the ten are free (the tenth uses the allowance up exactly) and the eleventh pays
    assert rate_transactions(price, transactions(*["10.00"] * 10)).amount == Decimal("0")
    assert rate_transactions(price, transactions(*["10.00"] * 11)).amount == Decimal("0.59")


def test_a_transaction_that_uses_up_the_free_amount_part_way_pays_on_its_non_free_part():
    # Given 100.00 of transaction value free, 2.9 % + 0.30
    price = percentage(free_amount="100.00")
    # When 60.00, 60.00 and 50.00 are rated
    charge = rate_transactions(price, transactions("60.00", "60.00", "50.00"))
    # Then the first is free, the second pays on 20.00 (0.58 + 0.30), the third in full (1.45 + 0.30)
    assert charge.amount == Decimal("0.88") + Decimal("1.75")


def test_a_part_way_transaction_counts_as_paid_and_ends_the_allowance():
    # Given 3 free transactions and 100.00 free value
    price = percentage(free_units="3", free_amount="100.00")
    # When 150.00 and then 10.00 are rated
    charge = rate_transactions(price, transactions("150.00", "10.00"))
    # Then 150.00 pays on 50.00 (1.45 + 0.30); 10.00 pays too though 2 free counts seemed left
    assert charge.amount == Decimal("1.75") + Decimal("0.59")


def test_with_both_limits_the_count_can_run_out_first():
    # Given 2 free transactions and 1000.00 free value
    price = percentage(free_units="2", free_amount="1000.00")
    # When three 10.00 transactions are rated
    # Then the third pays: the count ran out though free value is left
    assert rate_transactions(price, transactions("10.00", "10.00", "10.00")).amount == Decimal("0.59")


def test_with_both_limits_the_amount_can_run_out_first():
    # Given 5 free transactions and 100.00 free value
    price = percentage(free_units="5", free_amount="100.00")
    # When 80.00, 80.00 and 10.00 are rated
    charge = rate_transactions(price, transactions("80.00", "80.00", "10.00"))
    # Then the second pays on 60.00 (1.74 + 0.30) and the third in full (0.29 + 0.30)
    assert charge.amount == Decimal("2.04") + Decimal("0.59")


def test_the_minimum_per_transaction_lifts_a_small_fee():
    # Given 2.9 %, no fixed fee, at least 0.50 a transaction
    price = percentage(fixed_fee="0", min_per_transaction="0.50")
    # When a 1.00 transaction is rated (0.029)
    # Then it pays the minimum
    assert rate_transactions(price, transactions("1.00")).amount == Decimal("0.50")


def test_the_maximum_per_transaction_caps_a_large_fee():
    # Given 2.9 % + 0.30, at most 10.00 a transaction
    price = percentage(max_per_transaction="10.00")
    # When a 1000.00 transaction is rated (29.30)
    # Then it pays the maximum
    assert rate_transactions(price, transactions("1000.00")).amount == Decimal("10.00")


def test_free_transactions_are_not_lifted_to_the_minimum():
    # Given the first transaction free and at least 0.50 a transaction
    price = percentage(fixed_fee="0", min_per_transaction="0.50", free_units="1")
    # When two 1.00 transactions are rated
    # Then the free one costs nothing and only the paid one is lifted to 0.50
    assert rate_transactions(price, transactions("1.00", "1.00")).amount == Decimal("0.50")


def test_a_part_way_transaction_is_clamped_like_any_paid_one():
    # Given 100.00 free value, 2.9 %, no fixed fee, at least 0.50 a transaction
    price = percentage(fixed_fee="0", min_per_transaction="0.50", free_amount="100.00")
    # When a 101.00 transaction is rated (2.9 % of its 1.00 non-free part is 0.029)
    # Then it pays the minimum
    assert rate_transactions(price, transactions("101.00")).amount == Decimal("0.50")


def test_transactions_are_taken_in_event_time_order_not_in_the_order_given():
    # Given the first transaction free
    price = percentage(free_units="1")
    # When a later 1000.00 transaction is given before an earlier 10.00 one
    later = Transaction("txn_a", START + timedelta(hours=1), Decimal("1000.00"))
    earlier = Transaction("txn_b", START, Decimal("10.00"))
    # Then the earlier 10.00 is free and the 1000.00 pays 29.00 + 0.30
    assert rate_transactions(price, [later, earlier]).amount == Decimal("29.30")


def test_transactions_at_the_same_instant_are_taken_by_event_id():
    # Given the first transaction free
    price = percentage(free_units="1")
    # When txn_b (1000.00) and txn_a (10.00) happen at the same instant, given in that order
    same_time = [Transaction("txn_b", START, Decimal("1000.00")), Transaction("txn_a", START, Decimal("10.00"))]
    # Then txn_a comes first and is free; txn_b pays 29.00 + 0.30
    assert rate_transactions(price, same_time).amount == Decimal("29.30")


# Rounding: once per invoice line, half-up to the currency's minor unit


def test_a_usd_line_rounds_half_up_to_the_cent():
    # Given a line of 2.675 USD (a float would hold 2.67499999...)
    # When it is rounded
    # Then it is 2.68
    assert round_money(Decimal("2.675"), "USD") == Decimal("2.68")


def test_a_jpy_line_rounds_half_up_to_the_yen():
    # Given a line of 0.5 JPY (no minor unit)
    # When it is rounded
    # Then it is 1, not banker's 0
    assert round_money(Decimal("0.5"), "JPY") == Decimal("1")


def test_a_kwd_line_rounds_half_up_to_the_fils():
    # Given a line of 1.0005 KWD (three decimals)
    # When it is rounded
    # Then it is 1.001
    assert round_money(Decimal("1.0005"), "KWD") == Decimal("1.001")


# Prices are checked when decoded


def test_a_price_decodes_from_json_to_exact_decimals_and_rates_exactly():
    # Given a graduated price sent as JSON with decimal-string amounts and decimal bounds
    body = (b'{"type": "graduated", "meter_code": "gb", "currency": "USD", "tiers": ['
            b'{"up_to": "0.1", "unit_amount": "10.00"}, {"up_to": "1", "unit_amount": "2.00"},'
            b'{"up_to": null, "unit_amount": "0.000002", "flat_amount": "1"}]}')
    # When it is decoded and 2 units are rated
    price = msgspec.json.decode(body, type=Price, dec_hook=decode_hook)
    charge = rate(price, Decimal("2"))
    # Then the amounts are exact and the breakdown encodes as decimal strings
    assert charge.amount == Decimal("1.00") + Decimal("1.80") + Decimal("0.000002") + Decimal("1")
    assert b'"unit_amount":"0.000002"' in msgspec.json.encode(charge)


def test_tiers_whose_bounds_do_not_rise_are_refused():
    # Given tiers up to 5 and then again up to 5
    body = {"type": "graduated", "meter_code": "api_calls", "currency": "USD", "tiers": [
        {"up_to": "5", "unit_amount": "1"}, {"up_to": "5", "unit_amount": "1"},
        {"up_to": None, "unit_amount": "1"}]}
    # When the price is decoded
    # Then it is refused, naming the second tier's bound
    with pytest.raises(msgspec.ValidationError, match=r"tiers\[1\]\.up_to: bounds must rise"):
        decode_price(body)


def test_a_last_tier_with_an_upper_bound_is_refused():
    # Given volume tiers whose last tier stops at 10
    body = {"type": "volume", "meter_code": "api_calls", "currency": "USD", "tiers": [
        {"up_to": "5", "unit_amount": "1"}, {"up_to": "10", "unit_amount": "1"}]}
    # When the price is decoded
    # Then it is refused: usage above 10 would have no price
    with pytest.raises(msgspec.ValidationError, match=r"tiers\[1\]\.up_to: the last tier must have up_to null"):
        decode_price(body)


def test_an_unbounded_tier_before_the_last_is_refused():
    # Given tiers whose first tier has no upper bound
    body = {"type": "graduated", "meter_code": "api_calls", "currency": "USD", "tiers": [
        {"up_to": None, "unit_amount": "1"}, {"up_to": None, "unit_amount": "2"}]}
    # When the price is decoded
    # Then it is refused
    with pytest.raises(msgspec.ValidationError, match=r"tiers\[0\]\.up_to: only the last tier"):
        decode_price(body)


def test_a_price_in_both_a_currency_and_a_pricing_unit_is_refused():
    # Given a price in USD and in credits at once, and one in neither
    both = {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "pricing_unit": "credits",
            "unit_amount": "1"}
    neither = {"type": "per_unit", "meter_code": "tokens", "unit_amount": "1"}
    # When they are decoded
    # Then both are refused
    for body in (both, neither):
        with pytest.raises(msgspec.ValidationError, match="currency: give exactly one of currency and pricing_unit"):
            decode_price(body)


def test_a_metered_price_paid_in_advance_is_refused_but_a_flat_one_is_accepted():
    # Given a per-unit price and a flat price, both paid in advance
    metered = {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "pay_in": "advance",
               "unit_amount": "1"}
    flat = {"type": "flat", "currency": "USD", "pay_in": "advance", "amount": "49.00"}
    # When they are decoded
    # Then the metered one is refused (usage is only known in arrears) and the flat one is accepted
    with pytest.raises(msgspec.ValidationError, match="pay_in: a metered price is always paid in arrears"):
        decode_price(metered)
    assert decode_price(flat) == FlatPrice(currency="USD", pay_in="advance", amount=Decimal("49.00"))


def test_an_amount_sent_as_a_json_number_is_refused():
    # Given a unit amount sent as the JSON number 0.1 instead of the string "0.1"
    body = b'{"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": 0.1}'
    # When the price is decoded
    # Then it is refused, so no float ever becomes an amount
    with pytest.raises(msgspec.ValidationError, match=r"decimal string.*\$\.unit_amount"):
        msgspec.json.decode(body, type=Price, dec_hook=decode_hook)


@pytest.mark.parametrize(("body", "message"), [
    ({"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "-0.01"},
     "unit_amount: must not be negative"),
    ({"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "NaN"},
     "not a plain decimal number"),
    ({"type": "per_unit", "meter_code": "tokens", "currency": "XXY", "unit_amount": "1"},
     "currency: 'XXY' is not an ISO 4217 currency"),
    ({"type": "per_unit", "currency": "USD", "unit_amount": "1"},
     "meter_code: a metered price needs a meter_code"),
    ({"type": "package", "meter_code": "gb", "currency": "USD", "package_amount": "1", "package_size": "0"},
     "package_size: must be greater than zero"),
    ({"type": "percentage", "meter_code": "volume", "currency": "USD", "rate": "2.9",
      "min_per_transaction": "1.00", "max_per_transaction": "0.50"},
     "min_per_transaction: must not exceed max_per_transaction"),
    ({"type": "volume", "meter_code": "api_calls", "currency": "USD", "tiers": []},
     "tiers: at least one tier is needed"),
    ({"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "1", "discount": "1"},
     "unknown field `discount`"),
])
def test_a_price_breaking_a_rule_is_refused_naming_the_field(body, message):
    # Given a price body that breaks one rule
    # When it is decoded
    # Then it is refused with a message naming the field
    with pytest.raises(msgspec.ValidationError, match=message):
        decode_price(body)


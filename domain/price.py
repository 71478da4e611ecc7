"""Prices and entitlements of a plan version: immutable values, checked when decoded.

These are the contract shapes of API.md ("Price", "Entitlement"); `domain.pricing` rates them.
Decimal fields are `Amount` (a JSON decimal string on the wire, a `Decimal` in memory).
A rule broken inside one value raises `ValueError("field: message")`, so the edge can name the
field (`prices[0].tiers[1].up_to`).
"""

from decimal import Decimal
from typing import Literal

import msgspec

from domain.money import Amount, minor_unit

ZERO = Decimal(0)
PayIn = Literal["advance", "arrears"]


def _not_negative(field: str, value: Decimal | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{field}: must not be negative")


class Tier(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Covers (previous up_to, up_to]; the last tier has up_to None (no upper bound)."""

    up_to: Amount | None
    unit_amount: Amount
    flat_amount: Amount = ZERO

    def __post_init__(self) -> None:
        _not_negative("up_to", self.up_to)
        _not_negative("unit_amount", self.unit_amount)
        _not_negative("flat_amount", self.flat_amount)


class _Price(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag_field="type"):
    meter_code: str | None = None
    currency: str | None = None
    pricing_unit: str | None = None
    pay_in: PayIn = "arrears"

    def __post_init__(self) -> None:
        if (self.currency is None) == (self.pricing_unit is None):
            raise ValueError("currency: give exactly one of currency and pricing_unit")
        if self.currency is not None:
            try:
                minor_unit(self.currency)
            except ValueError as error:
                raise ValueError(f"currency: {error}") from None
        if self.metered:
            if not self.meter_code:
                raise ValueError("meter_code: a metered price needs a meter_code")
            if self.pay_in != "arrears":
                raise ValueError("pay_in: a metered price is always paid in arrears")
        elif self.meter_code is not None:
            raise ValueError("meter_code: a flat price has no meter")

    @property
    def metered(self) -> bool:
        return True


class FlatPrice(_Price, frozen=True, tag="flat"):
    """A recurring fixed fee, prorated on mid-period changes."""

    amount: Amount

    def __post_init__(self) -> None:
        super().__post_init__()
        _not_negative("amount", self.amount)

    @property
    def metered(self) -> bool:
        return False


class PerUnitPrice(_Price, frozen=True, tag="per_unit"):
    unit_amount: Amount

    def __post_init__(self) -> None:
        super().__post_init__()
        _not_negative("unit_amount", self.unit_amount)


class PackagePrice(_Price, frozen=True, tag="package"):
    """ceil(max(usage - free_units, 0) / package_size) x package_amount."""

    package_amount: Amount
    package_size: Amount
    free_units: Amount = ZERO

    def __post_init__(self) -> None:
        super().__post_init__()
        _not_negative("package_amount", self.package_amount)
        _not_negative("free_units", self.free_units)
        if self.package_size <= 0:
            raise ValueError("package_size: must be greater than zero")


def _check_tiers(tiers: tuple[Tier, ...]) -> None:
    if not tiers:
        raise ValueError("tiers: at least one tier is needed")
    if tiers[-1].up_to is not None:
        raise ValueError(f"tiers[{len(tiers) - 1}].up_to: the last tier must have up_to null")
    previous = ZERO
    for index, tier in enumerate(tiers[:-1]):
        if tier.up_to is None:
            raise ValueError(f"tiers[{index}].up_to: only the last tier may have up_to null")
        if tier.up_to <= previous:
            raise ValueError(f"tiers[{index}].up_to: bounds must rise, each above the one before")
        previous = tier.up_to


class GraduatedPrice(_Price, frozen=True, tag="graduated"):
    """Each tier prices its own units, plus its flat_amount once when usage reaches it."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_tiers(self.tiers)


class VolumePrice(_Price, frozen=True, tag="volume"):
    """The tier the total reaches prices every unit, plus that tier's flat amount."""

    tiers: tuple[Tier, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_tiers(self.tiers)


class PercentagePrice(_Price, frozen=True, tag="percentage"):
    """`rate` percent of each transaction, plus fixed_fee, clamped; an allowance is free."""

    rate: Amount
    fixed_fee: Amount = ZERO
    min_per_transaction: Amount | None = None
    max_per_transaction: Amount | None = None
    free_units: Amount = ZERO
    free_amount: Amount = ZERO

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("rate", "fixed_fee", "min_per_transaction", "max_per_transaction",
                      "free_units", "free_amount"):
            _not_negative(field, getattr(self, field))
        if self.free_units != self.free_units.to_integral_value():
            raise ValueError("free_units: counts whole transactions")
        low, high = self.min_per_transaction, self.max_per_transaction
        if low is not None and high is not None and low > high:
            raise ValueError("min_per_transaction: must not exceed max_per_transaction")


Price = FlatPrice | PerUnitPrice | PackagePrice | GraduatedPrice | VolumePrice | PercentagePrice
PRICE_TYPES = (FlatPrice, PerUnitPrice, PackagePrice, GraduatedPrice, VolumePrice, PercentagePrice)

Reset = Literal["never", "day", "week", "month", "period"]


class Entitlement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What a plan version grants for one feature: a limit (metered), enabled (boolean) or a value."""

    feature_code: str
    limit: Amount | None = None
    enabled: bool | None = None
    value: str | None = None
    reset: Reset = "never"
    soft_limit: Amount | None = None
    wallet_gated: bool = False  # denied while no wallet paying for the feature has credits left

    def __post_init__(self) -> None:
        given = [name for name in ("limit", "enabled", "value") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("limit: give exactly one of limit, enabled and value")
        _not_negative("limit", self.limit)
        _not_negative("soft_limit", self.soft_limit)
        if self.soft_limit is not None and self.limit is None:
            raise ValueError("soft_limit: only a metered limit can have a soft limit")
        if self.soft_limit is not None and self.soft_limit < self.limit:
            raise ValueError("soft_limit: use beyond the limit is allowed up to soft_limit, so it must be >= limit")

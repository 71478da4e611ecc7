"""Entitlement checks: may a customer use a feature (this much of it) now? Pure decisions.

A plan version grants each feature a `limit` (metered: over the feature's meter, in a reset
window), `enabled` (boolean) or a `value` (config). The reset windows are UTC and half-open:
`day` from midnight, `week` from Monday, `month` from the 1st, `period` the billing period, and
`never` from the start of billing.

A metered check asks for `quantity` (default 1) more: allowed when the use so far plus it stays
within the limit; with a `soft_limit`, use beyond the limit and up to it is allowed and flagged
(`reason: soft_limit`); beyond the soft limit, or a hard limit, denied. Never wrong in the
customer's favour: the use so far counts every event acknowledged before the check.

An entitlement that is `wallet_gated` is hard-gated by the customer's wallets: when no wallet that
pays for the feature has credits left beyond its overdraft, the check is denied (`wallet_empty`),
whatever the limit says.
"""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal

import msgspec

from domain.codes import Code, ExternalId
from domain.money import Amount
from domain.periods import Period
from domain.price import Entitlement, Reset

Reason = Literal["within_limit", "soft_limit", "limit_exceeded", "enabled", "disabled", "value", "not_in_plan",
                 "no_subscription", "wallet_empty"]


class CheckSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    customer: ExternalId
    feature_code: Code
    quantity: Amount | None = None  # metered: how much more is asked for (none: 1)

    def __post_init__(self) -> None:
        if self.quantity is not None and self.quantity < 0:
            raise ValueError("quantity: must be 0 or more")


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    feature_code: str
    allowed: bool
    reason: Reason
    limit: Amount | None = None  # metered
    remaining: Amount | None = None  # metered: what is left of the limit before this quantity
    used: Amount | None = None  # metered: in the window so far
    resets_at: datetime | None = None  # metered: when the window ends (none: never)
    value: str | None = None  # config


def window(reset: Reset, now: datetime, period: Period | None,
           billing_start: datetime) -> tuple[datetime, datetime | None]:
    """The reset window holding `now`: [start, end), end none for `never` (`period`: the billing
    period holding `now`, needed for `period` only)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if reset == "day":
        return midnight, midnight + timedelta(days=1)
    if reset == "week":
        monday = midnight - timedelta(days=midnight.weekday())
        return monday, monday + timedelta(days=7)
    if reset == "month":
        first = midnight.replace(day=1)
        return first, (first + timedelta(days=32)).replace(day=1)
    if reset == "period":
        assert period is not None, "a period window needs the billing period"
        return period.start, period.end
    return billing_start, None


def decide(entitlement: Entitlement, used: Decimal | None, quantity: Decimal, resets_at: datetime | None) -> Decision:
    """The answer for one feature: `used` is the metered use in the window (none for other features)."""
    code = entitlement.feature_code
    if entitlement.enabled is not None:
        return Decision(feature_code=code, allowed=entitlement.enabled,
                        reason="enabled" if entitlement.enabled else "disabled")
    if entitlement.value is not None:
        return Decision(feature_code=code, allowed=True, reason="value", value=entitlement.value)
    assert entitlement.limit is not None and used is not None, "a metered entitlement has a limit and a use"
    limit, after = entitlement.limit, used + quantity
    if after <= limit:
        reason: Reason = "within_limit"
    elif entitlement.soft_limit is not None and after <= entitlement.soft_limit:
        reason = "soft_limit"
    else:
        reason = "limit_exceeded"
    return Decision(feature_code=code, allowed=reason != "limit_exceeded", reason=reason, limit=Amount(limit),
                    remaining=Amount(max(limit - used, Decimal(0))), used=Amount(used), resets_at=resets_at)


def refused(feature_code: str, reason: Reason) -> Decision:
    return Decision(feature_code=feature_code, allowed=False, reason=reason)


def unpaid(decision: Decision) -> Decision:
    """A wallet-gated feature whose paying wallets are empty: denied, whatever its limit says."""
    return msgspec.structs.replace(decision, allowed=False, reason="wallet_empty")

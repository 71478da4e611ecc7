"""A tenant: one company billing its customers with Tally, and its settings."""

from decimal import Decimal
from typing import Annotated

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.money import Amount

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Text = Annotated[str, msgspec.Meta(max_length=1000)]


def check_tax_rate(field: str, rate: Decimal | None) -> None:
    """A tax rate is a fraction: "0.20" is 20 %; tax = (subtotal + true-up) x rate."""
    if rate is not None and not 0 <= rate < 1:
        raise ValueError(f"{field}: a tax rate is a fraction from 0 up to (not including) 1, e.g. \"0.20\"")


class TenantSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: Name
    legal_name: Text | None = None
    address: Text | None = None
    tax_id: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    default_tax_rate: Amount = Decimal("0")
    grace_period_hours: Annotated[int, msgspec.Meta(ge=0, le=24 * 90)] = 24
    invoice_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,20}$")] = "INV-"
    payment_terms_days: Annotated[int, msgspec.Meta(ge=0, le=365)] = 30

    def __post_init__(self) -> None:
        check_tax_rate("default_tax_rate", self.default_tax_rate)


class TenantChanges(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A PATCH of the settings: only the fields given change; null clears an optional one."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    legal_name: Text | None | msgspec.UnsetType = msgspec.UNSET
    address: Text | None | msgspec.UnsetType = msgspec.UNSET
    tax_id: Annotated[str, msgspec.Meta(max_length=100)] | None | msgspec.UnsetType = msgspec.UNSET
    default_tax_rate: Amount | msgspec.UnsetType = msgspec.UNSET
    grace_period_hours: Annotated[int, msgspec.Meta(ge=0, le=24 * 90)] | msgspec.UnsetType = msgspec.UNSET
    invoice_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,20}$")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    payment_terms_days: Annotated[int, msgspec.Meta(ge=0, le=365)] | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        if self.default_tax_rate is not msgspec.UNSET:
            check_tax_rate("default_tax_rate", self.default_tax_rate)

    def applied_to(self, settings: TenantSettings) -> TenantSettings:
        given = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not msgspec.UNSET}
        return msgspec.structs.replace(settings, **given)


class Tenant(Aggregate):
    class Opened(Aggregate.Created):
        settings: TenantSettings

    class SettingsChanged(Aggregate.Event):
        settings: TenantSettings

    @event(Opened)
    def __init__(self, settings: TenantSettings) -> None:
        self.settings = settings

    def change_settings(self, changes: TenantChanges) -> None:
        settings = changes.applied_to(self.settings)
        if settings != self.settings:
            self._settings_changed(settings)

    @event(SettingsChanged)
    def _settings_changed(self, settings: TenantSettings) -> None:
        self.settings = settings

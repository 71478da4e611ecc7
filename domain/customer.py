"""A customer of a tenant, addressed everywhere by the tenant's own `external_id`."""

from typing import Annotated
from uuid import UUID, uuid5

import msgspec
from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.codes import ExternalId, Name
from domain.money import Amount, minor_unit
from domain.tenant import check_tax_rate

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)]
Metadata = Annotated[
    dict[Annotated[str, msgspec.Meta(min_length=1, max_length=100)], Annotated[str, msgspec.Meta(max_length=1000)]],
    msgspec.Meta(max_length=50),
]


class CustomerDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What may change about a customer after it is registered."""

    name: Name
    email: Email | None = None
    tax_rate: Amount | None = None  # a fraction: "0.20" is 20 %; none: the tenant's default
    parent_external_id: ExternalId | None = None
    invoice_to_parent: bool = False
    metadata: Metadata = {}

    def __post_init__(self) -> None:
        check_tax_rate("tax_rate", self.tax_rate)
        if self.invoice_to_parent and self.parent_external_id is None:
            raise ValueError("invoice_to_parent: a customer with no parent cannot invoice to it")


class CustomerSpec(CustomerDetails, frozen=True, forbid_unknown_fields=True, kw_only=True):
    external_id: ExternalId
    currency: str

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            minor_unit(self.currency)
        except ValueError as error:
            raise ValueError(f"currency: {error}") from None
        if self.parent_external_id == self.external_id:
            raise ValueError("parent_external_id: a customer cannot be its own parent")

    @property
    def details(self) -> CustomerDetails:
        fields = msgspec.structs.asdict(self)
        return CustomerDetails(**{name: fields[name] for name in CustomerDetails.__struct_fields__})


class CustomerChanges(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A PATCH: only the fields given change; null clears an optional one."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    email: Email | None | msgspec.UnsetType = msgspec.UNSET
    tax_rate: Amount | None | msgspec.UnsetType = msgspec.UNSET
    parent_external_id: ExternalId | None | msgspec.UnsetType = msgspec.UNSET
    invoice_to_parent: bool | msgspec.UnsetType = msgspec.UNSET
    metadata: Metadata | msgspec.UnsetType = msgspec.UNSET

    def applied_to(self, details: CustomerDetails) -> CustomerDetails:
        given = {k: v for k, v in msgspec.structs.asdict(self).items() if v is not msgspec.UNSET}
        merged = msgspec.structs.replace(details, **given)
        merged.__post_init__()  # the rules that join fields (invoice_to_parent needs a parent)
        return merged


class Customer(Aggregate):
    class Registered(Aggregate.Created):
        tenant_id: UUID
        external_id: str
        currency: str
        details: CustomerDetails

    class DetailsChanged(Aggregate.Event):
        details: CustomerDetails

    @staticmethod
    def id_for(tenant_id: UUID, external_id: str) -> UUID:
        return uuid5(tenant_id, f"customer:{external_id}")

    @staticmethod
    def create_id(tenant_id: UUID, external_id: str) -> UUID:
        return Customer.id_for(tenant_id, external_id)

    @event(Registered)
    def __init__(self, tenant_id: UUID, external_id: str, currency: str, details: CustomerDetails) -> None:
        self.tenant_id, self.external_id, self.currency = tenant_id, external_id, currency
        self.details = details

    def change(self, details: CustomerDetails) -> None:
        if details != self.details:
            self._details_changed(details)

    @event(DetailsChanged)
    def _details_changed(self, details: CustomerDetails) -> None:
        self.details = details

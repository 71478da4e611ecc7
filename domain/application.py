"""The base of Tally's applications: one event store, shared by all of them.

Every application names itself "Tally", so on PostgreSQL all write to `tally_events` and on SQLite
to `stored_events`: one notification log, one order of events, read by every projection. Any of
them can therefore load any aggregate (a key issuer checks that a customer exists).
"""

from typing import Any

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import IntegrityError, Transcoder, Transcoding

from domain.customer import CustomerDetails
from domain.errors import NotFound
from domain.feature import FeatureSpec
from domain.invoice import Invoice
from domain.meter import MeterSpec
from domain.money import decode_hook, encode_hook
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.pricing_unit import PricingUnitSpec
from domain.tenant import TenantSettings


class StructAsDict(Transcoding):
    """Stores a msgspec value (a meter's definition, a price) as plain JSON inside an event."""

    def __init__(self, type_: type[msgspec.Struct]) -> None:
        self.type = type_
        self.name = f"{type_.__module__}:{type_.__qualname__}"

    def encode(self, obj: msgspec.Struct) -> Any:
        return msgspec.json.decode(msgspec.json.encode(obj, enc_hook=encode_hook))  # plain JSON: decimals as strings

    def decode(self, data: Any) -> msgspec.Struct:
        return msgspec.convert(data, self.type, dec_hook=decode_hook)


# Every value stored inside an event. All applications know all of them: they share one store.
VALUE_TYPES: tuple[type[msgspec.Struct], ...] = (
    TenantSettings, MeterSpec, FeatureSpec, PricingUnitSpec, PlanSpec, PlanVersionSpec, CustomerDetails, Invoice,
)


class TallyApplication(Application):
    name = "Tally"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = "Tally"  # one store for all: eventsourcing names tables after the application

    def register_transcodings(self, transcoder: Transcoder) -> None:
        super().register_transcodings(transcoder)
        for type_ in VALUE_TYPES:
            transcoder.register(StructAsDict(type_))

    def find(self, aggregate_id: Any) -> Any:
        """The aggregate, or None when it was never created."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def owned(self, kind: type, tenant_id: Any, aggregate_id: Any, noun: str) -> Any:
        """The tenant's aggregate of that kind; NotFound for another kind, or another tenant's."""
        found = self.find(aggregate_id)
        if not isinstance(found, kind) or found.tenant_id != tenant_id:
            raise NotFound(noun, str(aggregate_id))
        return found

    def as_of(self, aggregate_id: Any, moment: Any) -> Any:
        """The aggregate as it was at `moment` (its events recorded by then, replayed), or None."""
        aggregate = None
        for event in self.repository.event_store.get(aggregate_id):
            if event.timestamp > moment:
                break
            aggregate = event.mutate(aggregate)
        return aggregate

    def save_or(self, refusal: Exception, *aggregates: Any) -> None:
        """Save, or raise `refusal` when another command got there first: an aggregate with the same
        derived id was created, or one of these aggregates moved on since it was read."""
        try:
            self.save(*aggregates)
        except IntegrityError:
            raise refusal from None

"""The customer hierarchy of one tenant, as a lock and a record of every parent change.

The cycle check reads the ancestors of the new parent; two concurrent changes could each pass it
and together close a loop. Every parent change therefore also records an event here, so two
concurrent changes in one tenant clash on this aggregate's version and the second is refused.
"""

from uuid import UUID, uuid5

from eventsourcing.domain import event

from domain.aggregate import Aggregate


class Hierarchy(Aggregate):
    class Started(Aggregate.Created):
        tenant_id: UUID

    class ParentChanged(Aggregate.Event):
        child: str
        parent: str | None

    @staticmethod
    def create_id(tenant_id: UUID) -> UUID:
        return uuid5(tenant_id, "customer-hierarchy")

    @event(Started)
    def __init__(self, tenant_id: UUID) -> None:
        self.tenant_id = tenant_id
        self.changes = 0

    def change_parent(self, child: str, parent: str | None) -> None:
        self._parent_changed(child, parent)

    @event(ParentChanged)
    def _parent_changed(self, child: str, parent: str | None) -> None:
        self.changes += 1

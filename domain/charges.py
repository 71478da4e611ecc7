"""What a customer's usage has cost so far, and how it is paid from its wallets.

`UsageCharges` (one per customer) records, for each (subscription, period, meter), the fiat amount
the usage up to a usage-log position has cost (`Charged`): the metered lines of the period's
invoice as computed then. A new batch of usage costs the difference. It is saved in the same
save as the wallet debits it leads to, so a batch is charged once: a replay (a position at or
below `through`) changes nothing.

`allocate` is the pure rule that spreads a cost over the customer's wallets, in the order given
(the caller's: its own by priority, lower first, then the oldest; then its parent's pooled ones),
each wallet only for the meters it applies to, each as far
as its live grants and its overdraft go, in credits at its `conversion_rate`. What no wallet covers
stays for the invoice.
"""

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from uuid import UUID, uuid5

from eventsourcing.domain import event

from domain.aggregate import Aggregate
from domain.wallet import Wallet

ZERO = Decimal(0)
NAMESPACE = UUID("6f1c3a52-1d7e-4c1e-9a55-2f8f5f0c7a11")


class UsageCharges(Aggregate):
    """A customer's usage cost so far, per (subscription, period, meter), up to a usage-log position."""

    class Opened(Aggregate.Created):
        tenant_id: UUID
        customer: str

    class Charged(Aggregate.Event):
        through: int  # the last usage-log position this covers
        totals: dict  # charge key -> fiat cost so far (the totals it changes only)
        paid: dict  # charge key -> {wallet id (hex) -> fiat it paid of the change (negative: given back)}

    @staticmethod
    def create_id(tenant_id: UUID, customer: str) -> UUID:
        return uuid5(NAMESPACE, f"{tenant_id}/{customer}")

    @event(Opened)
    def __init__(self, tenant_id: UUID, customer: str) -> None:
        self.tenant_id, self.customer = tenant_id, customer
        self.through = 0
        self.totals: dict[str, Decimal] = {}
        self.paid: dict[str, dict[str, Decimal]] = {}  # charge key -> wallet (hex) -> fiat it paid

    def changes(self, totals: dict[str, Decimal]) -> dict[str, Decimal]:
        """How far the usage's cost moved from what was charged, by key (negative: a void lowered it)."""
        return {key: total - self.totals.get(key, ZERO) for key, total in totals.items()
                if total != self.totals.get(key, ZERO)}

    def refunds(self, lowered: dict[str, Decimal]) -> dict[str, dict[str, Decimal]]:
        """What to give back to each wallet when the cost of keys fell (fiat, by key, by wallet): the
        part no wallet paid (it was left for the invoice) falls first, then what the wallets paid,
        the last wallet in spending order first."""
        found: dict[str, dict[str, Decimal]] = {}
        for key, fall in lowered.items():
            paid = self.paid.get(key, {})
            left = fall - (self.totals.get(key, ZERO) - sum(paid.values(), ZERO))  # the invoice's part first
            for wallet, amount in reversed(list(paid.items())):
                if left <= 0:
                    break
                back = min(amount, left)
                found.setdefault(key, {})[wallet] = back
                left -= back
        return found

    def charge(self, through: int, changes: dict[str, Decimal], paid: dict[str, dict[str, Decimal]]) -> None:
        """Record how the usage up to `through` changed the costs, and what the wallets paid of it
        (negative: given back)."""
        assert through > self.through, (through, self.through)
        self._charged(through, {key: self.totals.get(key, ZERO) + change for key, change in changes.items()},
                      {key: {wallet: amount for wallet, amount in by.items() if amount} for key, by in paid.items()})

    @event(Charged)
    def _charged(self, through: int, totals: dict, paid: dict) -> None:
        self.totals.update({key: Decimal(value) for key, value in totals.items()})
        for key, by in paid.items():
            mine = self.paid.setdefault(key, {})
            for wallet, amount in by.items():
                mine[wallet] = mine.get(wallet, ZERO) + Decimal(amount)
        self.through = through

    def covered_in(self, subscription_id: UUID, period_start: datetime) -> Decimal:
        """The fiat the wallets paid for a subscription's usage in the period starting then."""
        prefix = charge_key(subscription_id, period_start, "")
        return sum((sum(by.values(), ZERO) for key, by in self.paid.items() if key.startswith(prefix)), ZERO)


def charge_key(subscription_id: UUID, period_start: datetime, meter_code: str) -> str:
    return f"{subscription_id.hex}/{period_start.isoformat()}/{meter_code}"


def meter_of(key: str) -> str:
    return key.rsplit("/", 1)[1]


def applies(wallet: Wallet, meter_code: str, meters_of_features: dict[str, str]) -> bool:
    """Whether the wallet pays for usage of this meter (`meters_of_features`: feature code -> meter)."""
    applies_to = wallet.spec.applies_to
    return applies_to is None or any(meters_of_features.get(f) == meter_code for f in applies_to.features)


def allocate(costs: dict[str, Decimal], wallets: Sequence[Wallet], meters_of_features: dict[str, str],
             now: datetime) -> tuple[dict[UUID, Decimal], dict[str, dict[str, Decimal]]]:
    """Spread costs (fiat, by charge key) over the wallets: the credits to take from each wallet,
    and the fiat each pays of each key (the rest stays for the invoice). Pure: the wallets are not
    changed."""
    room = {w.id: w.room(now) for w in wallets}  # credits each can still give
    taken: dict[UUID, Decimal] = {}
    paid: dict[str, dict[str, Decimal]] = {}
    for key, cost in sorted(costs.items()):
        left = cost
        for wallet in wallets:
            if left <= 0:
                break
            if not applies(wallet, meter_of(key), meters_of_features) or room[wallet.id] <= 0:
                continue
            rate = wallet.spec.conversion_rate
            credits = min(room[wallet.id], left / rate)
            room[wallet.id] -= credits
            taken[wallet.id] = taken.get(wallet.id, ZERO) + credits
            paid.setdefault(key, {})[wallet.id.hex] = credits * rate
            left -= credits * rate
    return taken, paid

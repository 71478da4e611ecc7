"""Property: for any sequence of grants, debits, expiries, reversals and top-ups, a wallet's balance is
granted - spent - expired, never below -overdraft_limit, each grant's remaining stays within [0, its
amount], spending follows the documented order, a top-up lands once and only when paid, and replaying
the wallet's events gives the same wallet (domain/wallet.py, in memory)."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.aggregate import Actor, acting
from domain.wallet import AlreadyCovered, GrantSpec, Wallet, WalletSpec, spending_order

T0 = datetime(2026, 1, 1, tzinfo=UTC)
credits = st.integers(min_value=1, max_value=10_000).map(lambda n: Decimal(n) / 10)
steps = st.lists(st.one_of(
    st.tuples(st.just("grant"), credits, st.sampled_from(["paid", "promotional"]), st.none() | st.integers(1, 30)),
    st.tuples(st.just("debit"), credits),
    st.tuples(st.just("expire"), st.integers(0, 30)),
    st.tuples(st.just("reverse"), st.integers(0, 100)),  # give back that percentage of what is spent
    st.tuples(st.just("topup"), credits, st.booleans()),  # bought; landed (its invoice paid) or voided
), max_size=40)


def opened(overdraft: Decimal) -> Wallet:
    with acting(Actor("key_test")):
        return Wallet(tenant_id=uuid4(), spec=WalletSpec(customer="acme", name="AI", credit_unit="credit",
                                                         currency="USD", conversion_rate=Decimal("0.01"),
                                                         overdraft_limit=overdraft))


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([Decimal(0), Decimal("25.5")]))
def test_the_balance_is_granted_less_spent_and_expired_and_never_beyond_the_overdraft(script, overdraft):
    wallet = opened(overdraft)
    granted = spent = expired = Decimal(0)
    now, position = T0, 0
    with acting(Actor("key_test")):
        for step in script:
            match step:
                case ("grant", amount, kind, days):
                    wallet.grant(GrantSpec(amount=amount, kind=kind,
                                           expires_at=None if days is None else now + timedelta(days=days)), now)
                    granted += amount
                case ("debit", amount):
                    position += 10
                    live = sorted(wallet._live(now), key=spending_order)
                    uncovered = wallet.debit(amount, position, now)
                    spent += amount - uncovered
                    assert 0 <= uncovered <= amount
                    if uncovered:  # only what neither the grants nor the overdraft could cover is left
                        assert wallet.balance == -overdraft
                    taken = wallet.collect_events()[-1].taken
                    # taken in the documented order: each grant emptied before the next is touched
                    assert [t[0] for t in taken] == [g.id.hex for g in live][:len(taken)]
                case ("expire", days):
                    now += timedelta(days=days)
                    left = {g.id: g.remaining for g in wallet.grants}
                    wallet.expire(now)
                    expired += sum(left[g.id] - g.remaining for g in wallet.grants if g.id in left)
                case ("reverse", percent):
                    back = (spent * percent / 100).quantize(Decimal("0.1"))
                    if back > 0:
                        wallet.reverse(back, position, now)
                        spent -= back
                case ("topup", amount, paid):
                    invoice_id = uuid4()
                    wallet.request_topup(amount, invoice_id)
                    if paid:
                        wallet.land_topup(invoice_id)
                        wallet.land_topup(invoice_id)  # a second payment event lands nothing more
                        granted += amount
                    else:
                        wallet.void_topup(invoice_id)
            assert wallet.balance == granted - spent - expired, step
            assert wallet.balance >= -overdraft
            assert all(0 <= g.remaining <= g.amount for g in wallet.grants)


@settings(max_examples=100, deadline=None)
@given(steps)
def test_replaying_a_wallet_s_events_gives_the_same_wallet(script):
    wallet, recorded, now, position = opened(Decimal(10)), [], T0, 0
    with acting(Actor("key_test")):
        recorded += wallet.collect_events()
        for step in script:
            match step:
                case ("grant", amount, kind, days):
                    wallet.grant(GrantSpec(amount=amount, kind=kind,
                                           expires_at=None if days is None else now + timedelta(days=days)), now)
                case ("debit", amount):
                    position += 1
                    wallet.debit(amount, position, now)
                case ("expire", days):
                    now += timedelta(days=days)
                    wallet.expire(now)
                case ("reverse", percent):
                    if percent and wallet.through:
                        wallet.reverse(Decimal(percent), position, now)
                case ("topup", amount, paid):
                    invoice_id = uuid4()
                    wallet.request_topup(amount, invoice_id)
                    (wallet.land_topup if paid else wallet.void_topup)(invoice_id)
            recorded += wallet.collect_events()
    replayed = None
    for event in recorded:
        replayed = event.mutate(replayed)
    assert replayed is not None
    assert (replayed.balance, replayed.overdraft, replayed.through, replayed.grants) == (
        wallet.balance, wallet.overdraft, wallet.through, wallet.grants)


def test_a_debit_below_the_position_already_covered_is_refused_and_changes_nothing():
    wallet = opened(Decimal(0))
    with acting(Actor("key_test")):
        wallet.grant(GrantSpec(amount=Decimal(100), kind="paid"), T0)
        assert wallet.debit(Decimal(30), 5, T0) == 0
        with pytest.raises(AlreadyCovered):
            wallet.debit(Decimal(30), 4, T0)
    assert wallet.balance == 70

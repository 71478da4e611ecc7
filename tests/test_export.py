"""`tally export`: invoices, usage and wallet transactions to CSV and Parquet, amounts exact
(Parquet decimal128, never float), on both stores, through the real command."""

import csv
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import WALLET, created, month_of_business
from test_cli import tally, tally_env

from ops.export import ExportError, _parquet


def run(database_url: str, *args: str):
    return tally(tally_env(database_url), "export", *args)


def rows_of(path, fmt: str) -> list[dict]:
    if fmt == "csv":
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_invoices_usage_and_wallet_transactions_are_exported_exactly(admin, ledger, database_url, tmp_path, fmt):
    books = month_of_business(admin, ledger)
    out = tmp_path / f"out.{fmt}"

    done = run(database_url, "--format", fmt, "--what", "invoices", "--output", str(out))
    assert done.returncode == 0, done.stderr
    invoices = {row["number"]: row for row in rows_of(out, fmt)}
    expected = {i["number"]: admin.get(f"/v1/invoices/{i['id']}").json() for i in books["invoices"]}
    assert invoices.keys() == expected.keys()
    for number, row in invoices.items():
        for field in ("total", "tax", "amount_due", "credits_applied", "subtotal"):
            assert Decimal(str(row[field])) == Decimal(expected[number][field]), (number, field)
    if fmt == "parquet":
        schema = pq.read_schema(out)
        assert schema.field("total").type == pa.decimal128(38, 18)
        assert schema.field("period_start").type == pa.timestamp("us", tz="UTC")
        assert all(isinstance(row["total"], Decimal) for row in invoices.values())

    done = run(database_url, "--format", fmt, "--what", "usage", "--from", "2026-01-05T00:00:00Z",
               "--to", "2026-01-06T00:00:00Z", "--output", str(out))
    assert done.returncode == 0, done.stderr
    usage = rows_of(out, fmt)
    assert sorted(row["event_id"] for row in usage) == sorted(f"e-{n}" for n in range(300) if n % 19 == 4)
    assert f"Exported {len(usage)} usage" in done.stdout

    done = run(database_url, "--format", fmt, "--what", "wallet-transactions", "--output", str(out))
    assert done.returncode == 0, done.stderr
    moves = rows_of(out, fmt)
    assert len(moves) == 106  # 105 grants and the top-up
    assert Decimal(str(moves[-1]["balance"])) == Decimal("157.5") + 100
    assert {str(row["wallet_id"]) for row in moves} == {books["wallet"]["id"]}


def test_bad_arguments_are_refused_and_write_nothing(admin, database_url, tmp_path):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    out = tmp_path / "out.csv"
    for args, message in (
            (["--from", "2026-02-01T00:00:00Z", "--to", "2026-01-01T00:00:00Z"], "--from"),
            (["--from", "yesterday"], "RFC 3339"),
            (["--tenant", "nobody"], "not a tenant id")):
        done = run(database_url, "--format", "csv", "--what", "usage", "--output", str(out), *args)
        assert done.returncode != 0 and message in done.stderr, (args, done.stderr)
        assert not out.exists()
    done = run(database_url, "--format", "csv", "--what", "usage", "--output", str(tmp_path / "no" / "out.csv"))
    assert done.returncode != 0 and "no folder" in done.stderr


def test_the_smallest_amount_is_exported_exactly_and_a_value_too_precise_is_refused(admin, database_url, tmp_path):
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    wallet = created(admin.post("/v1/wallets", json=WALLET))
    created(admin.post(f"/v1/wallets/{wallet['id']}/grants", json={"amount": "0.000000000000000001", "kind": "paid"}))
    out = tmp_path / "out.parquet"
    assert run(database_url, "--format", "parquet", "--what", "wallet-transactions", "--output", str(out)).returncode == 0
    assert pq.read_table(out).to_pylist()[0]["amount"] == Decimal("0.000000000000000001")
    # A value with more places than decimal128(38, 18) holds is never rounded: the export stops, naming it
    with pytest.raises(ExportError, match=r"row 2, amount: 0.0000000000000000001 has more than 18 decimal places"):
        _parquet(out, (("amount", "decimal"),), iter([(Decimal("1"),), (Decimal("0.0000000000000000001"),)]))

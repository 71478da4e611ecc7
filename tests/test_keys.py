"""API keys over real HTTP: shown once, stored as SHA-256 only, listed by prefix, revoked at once.

Every test runs on both stores (embedded SQLite and PostgreSQL).
"""

import re
from pathlib import Path

import psycopg
from conftest import assert_problem, client, open_tenant

from api.ledger import Ledger
from domain.api_key import BASE62, ROLES, new_secret, secret_hash, well_formed

KEY_SHAPE = re.compile(r"^tly_(?P<letter>[afrip])_[0-9A-Za-z]{28}$")
ROLE_LETTERS = {"admin": "a", "finance": "f", "readonly": "r", "ingest": "i", "portal": "p"}


def register_customer(admin, external_id: str = "acme") -> None:  # noqa: ANN001
    created = admin.post("/v1/customers", json={"external_id": external_id, "name": "Acme", "currency": "USD"})
    assert created.status_code == 201, created.text


def create_key(admin, role: str, **body: str) -> dict:  # noqa: ANN001
    created = admin.post("/v1/api-keys", json={"role": role, **body})
    assert created.status_code == 201, created.text
    return created.json()


def stored_text(database_url: str) -> dict[str, str]:
    """Everything the stores hold, as text: the event store and the read-model store, byte for byte.

    SQLite: the raw bytes of every file of the store (the databases and their write-ahead logs).
    PostgreSQL: every value of every row of every table (`tally_events`, `tally_documents`, ...)."""
    if database_url.startswith("sqlite:///"):
        folder = Path(database_url.removeprefix("sqlite:///")).parent
        files = sorted(folder.glob("events*"))
        events = b"".join(path.read_bytes() for path in files if ".views." not in path.name)
        views = b"".join(path.read_bytes() for path in files if ".views." in path.name)
        return {"events": events.decode("latin-1"), "views": views.decode("latin-1")}
    texts: dict[str, str] = {}
    with psycopg.connect(database_url) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()]
        for table in tables:
            rows = connection.execute(f'SELECT * FROM "{table}"').fetchall()  # noqa: S608 (names from the catalog)
            values = [value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                      for row in rows for value in row]
            texts[table] = "\n".join(values)
    assert {"tally_events", "tally_documents"} <= texts.keys(), texts.keys()
    return {"events": texts["tally_events"], "views": "\n".join(v for k, v in texts.items() if k != "tally_events")}


def test_a_new_key_is_shown_once_in_the_tally_shape_with_its_role_letter_and_a_checksum(admin):
    # Given a customer, so that a portal key can be bound to it
    register_customer(admin)
    for role, letter in ROLE_LETTERS.items():
        # When the admin creates a key of each role
        body = {"customer": "acme"} if role == "portal" else {}
        created = create_key(admin, role, **body)
        # Then the answer holds the key, in Tally's shape, with the role's letter
        secret = created["key"]
        match = KEY_SHAPE.match(secret)
        assert match is not None, secret
        assert match["letter"] == letter
        assert created["role"] == role and created["prefix"] == secret[:12] and created["revoked"] is False
        assert created["id"].startswith("key_")
        # And its checksum holds
        assert well_formed(secret)


def test_every_new_key_has_the_tally_shape_whatever_random_number_it_draws():
    # Given 2,000 new secrets of each role (a draw too wide for 22 base-62 digits once failed 1 in 190)
    for role in ROLES:
        for _ in range(2000):
            secret = new_secret(role)
            # Then each has the shape, the role's letter and a checksum that holds
            assert KEY_SHAPE.match(secret) and secret[4] == ROLE_LETTERS[role] and well_formed(secret), secret


def test_changing_any_one_character_of_a_key_breaks_its_checksum_and_the_key(admin, base_url):
    # Given a finance key
    secret = create_key(admin, "finance")["key"]
    for index, char in enumerate(secret):
        # When any one character of it is changed (to the next base-62 digit)
        typo = secret[:index] + BASE62[(BASE62.index(char) + 1) % 62 if char in BASE62 else 0] + secret[index + 1:]
        # Then the checksum no longer holds
        assert not well_formed(typo), (index, typo)
    # And the API refuses the mistyped key with 401 while the right one works
    typo = secret[:-1] + BASE62[(BASE62.index(secret[-1]) + 1) % 62]
    with client(base_url, typo) as mistyped, client(base_url, secret) as finance:
        assert mistyped.get("/v1/customers").status_code == 401
        assert finance.get("/v1/customers").status_code == 200


def test_a_key_is_stored_as_its_sha256_only_never_the_secret(ledger: Ledger, admin, database_url):
    # Given a key created over HTTP
    secret = create_key(admin, "readonly")["key"]
    # When the raw contents of the event store and of the read-model store are read
    stored = stored_text(database_url)
    # Then the secret appears in neither, and its SHA-256 appears in both
    assert secret not in stored["events"]
    assert secret not in stored["views"]
    assert secret_hash(secret) in stored["events"]
    assert secret_hash(secret) in stored["views"]


def test_a_key_created_with_an_idempotency_key_is_not_stored_in_clear_either(admin, database_url):
    # Given a key created with an Idempotency-Key
    created = admin.post("/v1/api-keys", json={"role": "readonly"}, headers={"Idempotency-Key": "key-1"})
    assert created.status_code == 201, created.text
    # When the raw contents of both stores are read
    stored = stored_text(database_url)
    # Then the secret appears nowhere
    assert created.json()["key"] not in stored["events"] + stored["views"]
    # And the same caller's retry still gets the first answer, secret included (it was sealed, not dropped)
    replay = admin.post("/v1/api-keys", json={"role": "readonly"}, headers={"Idempotency-Key": "key-1"})
    assert (replay.status_code, replay.json()) == (201, created.json())
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_another_key_of_the_tenant_cannot_replay_a_kept_answer(admin, base_url):
    # Given a key created under Idempotency-Key "key-1" by the first admin key
    first = admin.post("/v1/api-keys", json={"role": "admin"}, headers={"Idempotency-Key": "key-1"})
    assert first.status_code == 201, first.text
    # When the new admin key sends the same request under the same Idempotency-Key
    with client(base_url, first.json()["key"]) as other:
        replay = other.post("/v1/api-keys", json={"role": "admin"}, headers={"Idempotency-Key": "key-1"})
    # Then it is refused naming the header, and the first secret is not revealed
    assert_problem(replay, 422)
    assert replay.json()["errors"][0]["field"] == "Idempotency-Key"
    assert first.json()["key"] not in replay.text


def test_keys_are_listed_and_read_by_prefix_never_with_the_secret(admin):
    # Given a finance key created by the admin
    created = create_key(admin, "finance")
    secret = created.pop("key")
    # When the admin lists the keys and reads the new one
    listed = admin.get("/v1/api-keys")
    read = admin.get(f"/v1/api-keys/{created['id']}")
    # Then both show the key with its prefix, and neither shows the secret
    assert listed.status_code == 200 and read.status_code == 200
    assert secret not in listed.text and secret not in read.text
    items = listed.json()["data"]
    assert [item["role"] for item in items] == ["admin", "finance"]
    assert all("key" not in item and item["prefix"].startswith("tly_") for item in items)
    assert items[1] == read.json() == created
    assert read.json()["prefix"] == secret[:12]


def test_keys_are_listed_a_page_at_a_time_after_a_key_id(admin):
    # Given an admin key and two more keys, in that order
    ids = [admin.get("/v1/api-keys").json()["data"][0]["id"]]
    ids += [create_key(admin, role)["id"] for role in ("finance", "readonly")]
    # When the keys are listed one at a time, each page starting after the last id seen
    pages = [admin.get("/v1/api-keys", params={"limit": 1})]
    while pages[-1].json()["has_more"]:
        last = pages[-1].json()["data"][-1]["id"]
        pages.append(admin.get("/v1/api-keys", params={"limit": 1, "starting_after": last}))
    # Then the pages hold the keys in creation order, once each
    assert all(page.status_code == 200 for page in pages), [page.text for page in pages]
    assert [key["id"] for page in pages for key in page.json()["data"]] == ids


def test_a_revoked_key_is_refused_at_once_and_cannot_be_revoked_twice(admin, base_url):
    # Given a working readonly key
    created = create_key(admin, "readonly")
    with client(base_url, created["key"]) as readonly:
        assert readonly.get("/v1/customers").status_code == 200
        # When the admin revokes it
        revoked = admin.delete(f"/v1/api-keys/{created['id']}")
        # Then the answer shows it revoked, and its very next request gets 401
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked"] is True and revoked.json()["revoked_at"] is not None
        refused = readonly.get("/v1/customers")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
    # And the listing shows it revoked
    assert admin.get(f"/v1/api-keys/{created['id']}").json()["revoked"] is True
    # And revoking it again is a conflict
    again = admin.delete(f"/v1/api-keys/{created['id']}")
    assert again.status_code == 409, again.text


def test_a_portal_key_must_name_an_existing_customer_of_the_tenant(admin):
    # Given a tenant with one customer, acme
    register_customer(admin, "acme")
    # When a portal key is asked for without a customer, or for an unknown one
    missing = admin.post("/v1/api-keys", json={"role": "portal"})
    unknown = admin.post("/v1/api-keys", json={"role": "portal", "customer": "globex"})
    # Then both are refused with 422 naming `customer`
    for refused in (missing, unknown):
        assert refused.status_code == 422, refused.text
        assert [error["field"] for error in refused.json()["errors"]] == ["customer"]
    # And a portal key for acme is bound to acme
    assert create_key(admin, "portal", customer="acme")["customer"] == "acme"
    # And no key was created by the refusals
    assert [item["role"] for item in admin.get("/v1/api-keys").json()["data"]] == ["admin", "portal"]


def test_only_a_portal_key_is_bound_to_a_customer(admin):
    # Given a customer
    register_customer(admin, "acme")
    # When a finance key is asked for with that customer
    refused = admin.post("/v1/api-keys", json={"role": "finance", "customer": "acme"})
    # Then it is refused with 422 naming `customer`
    assert refused.status_code == 422, refused.text
    assert [error["field"] for error in refused.json()["errors"]] == ["customer"]


def test_an_ingest_key_may_not_create_keys(admin, base_url):
    # Given an ingest key
    secret = create_key(admin, "ingest")["key"]
    with client(base_url, secret) as ingest:
        # When it asks for an admin key
        refused = ingest.post("/v1/api-keys", json={"role": "admin"})
        # Then it is forbidden, and no key was created
        assert refused.status_code == 403, refused.text
        assert ingest.get("/v1/api-keys").status_code == 403
    assert [item["role"] for item in admin.get("/v1/api-keys").json()["data"]] == ["admin", "ingest"]


def test_another_tenants_key_is_not_found(ledger: Ledger, admin, base_url):
    # Given a key of another tenant
    _, other_secret = open_tenant(ledger, "Globex")
    with client(base_url, other_secret) as other:
        other_key = other.get("/v1/api-keys").json()["data"][0]
    # When this tenant's admin reads or revokes it
    read = admin.get(f"/v1/api-keys/{other_key['id']}")
    revoked = admin.delete(f"/v1/api-keys/{other_key['id']}")
    # Then both answer 404, and the other tenant's key still works
    assert read.status_code == 404 and revoked.status_code == 404
    with client(base_url, other_secret) as other:
        assert other.get("/v1/tenant").status_code == 200

def test_a_meter_created_over_http_can_be_read_back(admin):
    # Given an admin key of a fresh tenant
    # When a meter is created
    created = admin.post("/v1/meters", json={
        "code": "tokens", "name": "Tokens", "event_name": "llm.call", "aggregation": "sum", "field": "tokens"})
    # Then it answers 201 with the meter, and reading it by code gives the same document
    assert created.status_code == 201, created.text
    assert admin.get("/v1/meters/tokens").json() == created.json()

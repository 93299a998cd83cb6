"""The real ASGI app under uvicorn: the API handler (one thread hop per request),
the stock Django handler for the admin and static files, and the tenant schema
chosen per request by key across concurrent requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx

from devtools.serve import ThreadedUvicorn
from tests.support import Personas, http_client, wait_for

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "over the wire"}]}


def _client(server: ThreadedUvicorn, key: str | None = None) -> httpx.Client:
    return http_client(server, key)


def test_submit_and_poll_over_http_runs_on_the_worker(platform_server, worker, committed_personas: Personas):
    with _client(platform_server, committed_personas.alice.key) as alice:
        created = alice.post("/api/v1/jobs", json=CHAT)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert created.json()["links"]["self"] == f"{platform_server.url}/api/v1/jobs/{job_id}"
        done = wait_for(lambda: (r := alice.get(f"/api/v1/jobs/{job_id}").json())["status"] == "succeeded" and r)
        assert done["output"] == "Echo: over the wire"
    with _client(platform_server, committed_personas.carol.key) as carol:
        assert carol.get(f"/api/v1/jobs/{job_id}").status_code == 404


def test_concurrent_requests_of_two_tenants_each_see_their_own_schema(platform_server, committed_personas: Personas):
    alice_ids: set[str] = set()
    carol_ids: set[str] = set()
    with (
        _client(platform_server, committed_personas.alice.key) as alice,
        _client(platform_server, committed_personas.carol.key) as carol,
    ):

        def submit(pair):
            client, ids = pair
            response = client.post("/api/v1/jobs", json={**CHAT, "model": "routing-probe"})
            assert response.status_code == 202, response.text
            ids.add(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(submit, [(alice, alice_ids), (carol, carol_ids)] * 12))
        listed_alice = {job["id"] for job in alice.get("/api/v1/jobs?limit=100").json()["results"]}
        listed_carol = {job["id"] for job in carol.get("/api/v1/jobs?limit=100").json()["results"]}
    assert listed_alice == alice_ids and len(alice_ids) == 12
    assert listed_carol == carol_ids and len(carol_ids) == 12


def test_errors_over_http_use_the_api_error_shape(platform_server, committed_personas: Personas):
    with _client(platform_server) as anonymous:
        response = anonymous.post("/api/v1/jobs", json=CHAT)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert anonymous.get("/api/v1/nowhere").json()["error"]["code"] == "not_found"
    with _client(platform_server, committed_personas.alice.key) as alice:
        bad = alice.post("/api/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "parse_error"


def test_admin_docs_and_static_files_are_served(platform_server, committed_db):
    with _client(platform_server) as browser:
        browser.headers["Host"] = "testserver"  # PUBLIC_DOMAIN: the operator admin answers there only
        assert browser.get("/admin/login/").status_code == 200
        docs = browser.get("/api/docs/")
        assert docs.status_code == 200
        assert "swagger-ui-dist" in docs.text and "cdn" not in docs.text.lower()
        assert browser.get("/static/admin/css/base.css").status_code == 200
        assert browser.get("/api/schema/").status_code == 200

"""The job REST API: validation, idempotency, cancel, listing, isolation.
These run inside a rolled-back transaction, so nothing is enqueued (on_commit
never fires) unless a test captures the callbacks."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from apps.catalog.models import LLMModel
from apps.jobs.models import Job, JobStatus
from tests.support import Personas

pytestmark = pytest.mark.usefixtures("personas")

CHAT = {"model": "local-small", "messages": [{"role": "user", "content": "What is 2+2?"}]}


def post_job(client, body=None, **headers):
    return client.post("/api/v1/jobs", body if body is not None else CHAT, format="json", **headers)


def assert_error(response, status, code, param=None):
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert error["message"]
    return error


# --- submission -----------------------------------------------------------------


def test_submit_returns_202_with_links_and_stores_queued_job(personas: Personas, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = post_job(personas.alice.client())
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["model"] == "local-small"
    assert body["links"]["self"].endswith(f"/api/v1/jobs/{body['id']}")
    assert body["links"]["events"].endswith(f"/api/v1/jobs/{body['id']}/events")
    assert len(callbacks) == 1  # enqueued once, after commit
    with tenant_context(personas.alice.tenant):
        job = Job.objects.get(pk=body["id"])
        assert job.user_id == personas.alice.user_id
        assert job.input_tokens_estimate > 0
        assert job.status == JobStatus.QUEUED


def test_submit_passes_sampling_parameters_through(personas: Personas):
    body = {**CHAT, "max_tokens": 20, "temperature": 0, "top_p": 0.5, "stop": ["\n"], "metadata": {"k": "v"}}
    job_id = post_job(personas.alice.client(), body).json()["id"]
    with tenant_context(personas.alice.tenant):
        job = Job.objects.get(pk=job_id)
    assert job.params == {"max_tokens": 20, "temperature": 0, "top_p": 0.5, "stop": ["\n"]}
    assert job.metadata == {"k": "v"}


def test_unknown_model_is_400_naming_available_models(personas: Personas):
    error = assert_error(post_job(personas.alice.client(), {**CHAT, "model": "gpt-9"}), 400, "model_not_found", "model")
    assert "local-small" in error["message"]
    assert "premium-large" in error["message"]


def test_disabled_model_is_400(personas: Personas):
    LLMModel.objects.filter(slug="local-small").update(enabled=False)
    error = assert_error(post_job(personas.alice.client()), 400, "model_not_found", "model")
    assert "local-small" not in error["message"].split("Available models:")[1]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "local-small"}, "messages"),
        ({"model": "local-small", "messages": []}, "messages"),
        ({"model": "local-small", "messages": "hello"}, "messages"),
        ({"model": "local-small", "messages": [{"role": "user"}]}, "messages.0.content"),
        ({"model": "local-small", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"model": "local-small", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {**CHAT, "messages": [*CHAT["messages"], {"role": "user", "content": [{"type": "text"}]}]},
            "messages.1.content.0.text",
        ),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "temperature": 3}, "temperature"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**CHAT, "max_token": 5}, "max_token"),
        ({"messages": CHAT["messages"]}, "model"),
    ],
)
def test_malformed_request_is_400_naming_the_field(personas: Personas, body, param):
    response = post_job(personas.alice.client(), body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_non_json_body_is_400(personas: Personas):
    response = personas.alice.client().post("/api/v1/jobs", "not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_prompt_larger_than_context_is_400_context_length_exceeded_with_the_limit(personas: Personas):
    huge = " ".join(["word"] * 5000)  # local-small has a 4096-token context in tests
    error = assert_error(
        post_job(personas.alice.client(), {**CHAT, "messages": [{"role": "user", "content": huge}]}),
        400,
        "context_length_exceeded",
        "messages",
    )
    assert "4096" in error["message"]


def test_max_tokens_above_model_cap_is_400(personas: Personas):
    error = assert_error(post_job(personas.alice.client(), {**CHAT, "max_tokens": 5000}), 400, "max_tokens_too_large")
    assert "1024" in error["message"]


def test_nothing_is_stored_for_a_rejected_request(personas: Personas):
    post_job(personas.alice.client(), {**CHAT, "model": "nope"})
    with tenant_context(personas.alice.tenant):
        assert not Job.objects.exists()


# --- idempotency ---------------------------------------------------------------------


def test_same_idempotency_key_and_body_returns_the_same_job(personas: Personas, django_capture_on_commit_callbacks):
    client = personas.alice.client()
    with django_capture_on_commit_callbacks() as callbacks:
        first = post_job(client, HTTP_IDEMPOTENCY_KEY="order-1")
        second = post_job(client, HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert len(callbacks) == 1  # enqueued once


def test_same_idempotency_key_with_other_body_is_409(personas: Personas):
    client = personas.alice.client()
    post_job(client, HTTP_IDEMPOTENCY_KEY="order-2")
    other = {**CHAT, "messages": [{"role": "user", "content": "something else"}]}
    assert_error(post_job(client, other, HTTP_IDEMPOTENCY_KEY="order-2"), 409, "idempotency_key_reused")


def test_idempotency_key_is_per_user(personas: Personas):
    a = post_job(personas.alice.client(), HTTP_IDEMPOTENCY_KEY="shared")
    b = post_job(personas.bob.client(), HTTP_IDEMPOTENCY_KEY="shared")
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]


def test_expired_idempotency_key_starts_a_new_job(personas: Personas, settings):
    client = personas.alice.client()
    first = post_job(client, HTTP_IDEMPOTENCY_KEY="old").json()
    with tenant_context(personas.alice.tenant):
        Job.objects.filter(pk=first["id"]).update(
            created_at=Job.objects.get(pk=first["id"]).created_at.replace(year=2020)
        )
    second = post_job(client, HTTP_IDEMPOTENCY_KEY="old")
    assert second.status_code == 202
    assert second.json()["id"] != first["id"]


# --- reading -------------------------------------------------------------------------


def test_get_job_shows_result_fields(personas: Personas):
    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    with tenant_context(personas.alice.tenant):
        Job.objects.filter(pk=job_id).update(
            status=JobStatus.FAILED, error_type="provider_error", error_message="boom", error_status=502
        )
    body = client.get(f"/api/v1/jobs/{job_id}").json()
    assert body["status"] == "failed"
    assert body["error"] == {"type": "provider_error", "code": None, "message": "boom", "provider_status": 502}


def test_list_is_newest_first_with_cursor_pagination_and_filters(personas: Personas):
    client = personas.alice.client()
    ids = [post_job(client).json()["id"] for _ in range(3)]
    post_job(client, {**CHAT, "model": "premium-large"})
    page = client.get("/api/v1/jobs?limit=2&model=local-small").json()
    assert [job["id"] for job in page["results"]] == [ids[2], ids[1]]
    rest = client.get(page["next"]).json()
    assert [job["id"] for job in rest["results"]] == [ids[0]]
    assert client.get("/api/v1/jobs?status=succeeded").json()["results"] == []
    assert len(client.get("/api/v1/jobs?status=queued").json()["results"]) == 4


def test_list_with_unknown_status_is_400(personas: Personas):
    assert_error(personas.alice.client().get("/api/v1/jobs?status=done"), 400, "invalid_choice", "status")


def test_warm_request_costs_two_queries(personas: Personas, settings):
    """With the key cache warm (as in production), reading a job is `SET search_path`
    plus one SELECT: no per-request key, tenant, catalog or rate-limit query."""
    settings.API_KEY_CACHE_SECONDS = 60
    settings.RATE_LIMIT_CACHE_SECONDS = 60
    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    client.get(f"/api/v1/jobs/{job_id}")
    with CaptureQueriesContext(connection) as queries:
        assert client.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert len(queries) == 2, [q["sql"] for q in queries]


# --- cancel ---------------------------------------------------------------------------


def test_cancel_queued_job(personas: Personas):
    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    response = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"]


def test_cancel_finished_job_is_409(personas: Personas):
    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    with tenant_context(personas.alice.tenant):
        Job.objects.filter(pk=job_id).update(status=JobStatus.SUCCEEDED)
    assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel"), 409, "job_not_cancellable")


def test_cancel_twice_is_409(personas: Personas):
    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert_error(client.post(f"/api/v1/jobs/{job_id}/cancel"), 409, "job_not_cancellable")


# --- isolation (alice and bob in acme, carol in globex) ------------------------------------


def test_other_tenant_gets_404_for_job(personas: Personas):
    job_id = post_job(personas.alice.client()).json()["id"]
    carol = personas.carol.client()
    assert_error(carol.get(f"/api/v1/jobs/{job_id}"), 404, "not_found")
    assert_error(carol.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "not_found")
    assert carol.get("/api/v1/jobs").json()["results"] == []
    with tenant_context(personas.alice.tenant):
        assert Job.objects.get(pk=job_id).status == JobStatus.QUEUED


def test_colleague_gets_404_for_job(personas: Personas):
    job_id = post_job(personas.alice.client()).json()["id"]
    bob = personas.bob.client()
    assert_error(bob.get(f"/api/v1/jobs/{job_id}"), 404, "not_found")
    assert_error(bob.post(f"/api/v1/jobs/{job_id}/cancel"), 404, "not_found")
    assert bob.get("/api/v1/jobs").json()["results"] == []


def test_job_rows_live_in_the_tenants_own_schema(personas: Personas):
    job_id = post_job(personas.carol.client()).json()["id"]
    with tenant_context(personas.carol.tenant):
        assert Job.objects.filter(pk=job_id).exists()
    with tenant_context(personas.alice.tenant):
        assert not Job.objects.filter(pk=job_id).exists()


def test_unknown_and_malformed_job_ids_are_404(personas: Personas):
    client = personas.alice.client()
    assert_error(client.get(f"/api/v1/jobs/{uuid.uuid4()}"), 404, "not_found")
    assert_error(client.get("/api/v1/jobs/not-a-uuid"), 404, "not_found")
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_response_matches_the_documented_schema(personas: Personas):
    from apps.jobs.api import JobErrorSchema, JobOutputSerializer, UsageSchema

    client = personas.alice.client()
    job_id = post_job(client).json()["id"]
    with tenant_context(personas.alice.tenant):
        Job.objects.filter(pk=job_id).update(input_tokens=3, output_tokens=4, error_type="x", error_message="m")
    body = client.get(f"/api/v1/jobs/{job_id}").json()
    assert set(body) == set(JobOutputSerializer().fields)
    assert set(body["usage"]) == set(UsageSchema().fields)
    assert set(body["error"]) == set(JobErrorSchema().fields)


def test_openapi_schema_declares_bearer_auth(db):
    from rest_framework.test import APIClient

    schema = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert "/api/v1/jobs" in schema["paths"]
    assert "/api/v1/jobs/{job_id}/cancel" in schema["paths"]


def test_body_over_the_upload_limit_is_413_in_the_api_error_shape(personas: Personas, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]}
    error = assert_error(post_job(personas.alice.client(), big), 413, "request_too_large")
    assert "10000" in error["message"]

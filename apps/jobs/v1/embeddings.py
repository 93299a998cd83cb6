"""`POST /v1/embeddings`, passed through to the model's provider: admitted by
the same steps as a job (switches, token buckets, a budget hold of the input's
cost), called on the event loop, then charged and settled."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from apps.accounts.authentication import InvalidKey
from apps.accounts.selectors import Principal
from apps.admission.pipeline import Admission, Step, admit
from apps.admission.steps import BudgetReserve, Switches, Tenant, TokenBuckets
from apps.billing.budgets import budget_release, budget_settle
from apps.billing.models import LedgerKind
from apps.billing.services import call_cost, ledger_record
from apps.catalog.selectors import ModelSpec, model_get
from apps.core.errors import ApiError, InvalidRequest, NotFound, api_error_body
from apps.core.threads import in_thread
from apps.llm.providers import ProviderError, embeddings_create
from apps.llm.tokens import count_text_tokens
from apps.observability import metrics
from apps.observability.genai import provider_call
from apps.ratelimit.buckets import Bucket
from apps.ratelimit.limits import ratelimit_reconcile
from apps.tenants.db import release_connection, tenant_connection
from apps.tenants.middleware import activate_key_tenant

from .common import (
    as_openai_error,
    authenticated_body,
    invalid_key_response,
    json_error,
    method_not_allowed,
    provider_error_response,
)

# What an embeddings call passes before the provider is called, in order (its
# model and input were checked by the surface: see _embeddings_spec).
EMBEDDINGS_ADMISSION: list[Step] = [Tenant(), Switches(), TokenBuckets(), BudgetReserve()]


@dataclass(frozen=True)
class EmbeddingsCall:
    spec: ModelSpec
    body: dict[str, Any]
    principal: Principal
    call_id: uuid.UUID  # the budget hold's id (there is no job)
    input_tokens: int
    buckets: tuple[Bucket, ...]  # the rate-limit buckets it took `input_tokens` from (empty: none)
    headers: dict[str, str]  # the rate-limit headers


def _embeddings_admit(header: str, raw_body: bytes) -> EmbeddingsCall:
    """Authenticate, validate, and admit (in a thread: Postgres and Redis)."""
    activate_key_tenant(header)
    try:
        principal, body = authenticated_body(header, raw_body)
        spec, body = _embeddings_spec(body)
        input_tokens = _embedding_input_tokens(body["input"], spec.encoding)
        admission = Admission(
            principal=principal, model=spec.slug, spec=spec, input_tokens=input_tokens, tokens=input_tokens
        )
        admit(admission, EMBEDDINGS_ADMISSION)  # kept: settled when the provider has answered
        headers = admission.limits.headers() if admission.limits is not None else {}
        return EmbeddingsCall(spec, body, principal, admission.id, input_tokens, admission.buckets, headers)
    finally:
        release_connection()


def _embedding_input_tokens(value: Any, encoding: str) -> int:
    """Strings are counted with tiktoken; token arrays are their length."""
    items = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
    return sum(count_text_tokens(item, encoding) if isinstance(item, str) else len(item) for item in items)


def _embeddings_settle(call: EmbeddingsCall, response: dict[str, Any] | None) -> None:
    """Charge what the provider reports (or what we counted), and settle the hold;
    release it when the call failed (`response` None)."""
    schema = call.principal.tenant_schema
    tenant_connection().set_schema(schema)
    try:
        if response is None:
            budget_release(schema=schema, job_id=call.call_id)
            ratelimit_reconcile(call.buckets, estimated=call.input_tokens, used=0)
            return
        usage = response.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or call.input_tokens)
        ratelimit_reconcile(call.buckets, estimated=call.input_tokens, used=tokens)
        cost = call_cost(call.spec, input_tokens=tokens, output_tokens=0)
        metrics.record_cost(schema, call.spec.slug, cost)
        ledger_record(
            kind=LedgerKind.CHARGE,
            user_id=call.principal.user_id,
            model=call.spec.slug,
            input_tokens=tokens,
            cost=cost,
            note="embeddings",
        )
        budget_settle(schema=schema, job_id=call.call_id, actual_micros=cost)
    finally:
        release_connection()


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the items of one request
MAX_EMBEDDING_DIMENSIONS = 8192
MAX_TOKEN_ID = 2**31 - 1  # every tokenizer's ids fit; anything larger is not a token


def _is_token(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_TOKEN_ID  # not bool, which is an int


def _embeddings_input_check(value: Any) -> None:
    """OpenAI's four shapes, and no mixture of them: a string, a list of strings,
    a list of token ids, a list of lists of token ids; nothing empty."""
    message = (
        "input must be a non-empty string, or a non-empty list of non-empty strings, of token ids, or of"
        f" non-empty lists of token ids (at most {MAX_EMBEDDING_INPUTS} items)."
    )
    if isinstance(value, str) and value:
        return
    if not isinstance(value, list) or not value or len(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(message, param="input")
    if all(isinstance(item, str) and item for item in value):
        return
    if all(_is_token(item) for item in value):
        return
    if all(isinstance(item, list) and item and all(_is_token(token) for token in item) for item in value):
        return
    raise InvalidRequest(message, param="input")


def _embeddings_spec(body: Any) -> tuple[ModelSpec, dict[str, Any]]:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - {"model", "input", "encoding_format", "dimensions", "user"})
    if unknown:
        raise InvalidRequest(f"Unknown parameter '{unknown[0]}'.", code="unknown_parameter", param=unknown[0])
    _embeddings_input_check(body.get("input"))
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise InvalidRequest("encoding_format must be float or base64.", param="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and (type(dimensions) is not int or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS):
        raise InvalidRequest(f"dimensions must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}.", param="dimensions")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise InvalidRequest("user must be a string.", param="user")
    if not isinstance(body.get("model"), str):
        raise InvalidRequest("model must be a string naming a model.", param="model")
    spec = model_get(body["model"])
    if spec is None or not spec.enabled:
        raise NotFound(
            f"The model '{body.get('model')}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )
    if not spec.supports_embeddings:
        raise InvalidRequest(
            f"{spec.slug} does not serve embeddings (GET /v1/models says what each model serves).",
            code="unsupported_model",
            param="model",
        )
    item = body["input"][0] if isinstance(body["input"], list) else body["input"]
    if not isinstance(item, str) and not spec.embedding_token_input:
        raise InvalidRequest(
            f"{spec.slug} takes text, not token ids: send the input as strings.",
            code="unsupported_input",
            param="input",
        )
    return spec, body


@csrf_exempt  # an API authenticated by bearer key, not a browser form
async def embeddings(request: HttpRequest) -> HttpResponseBase:
    """`POST /v1/embeddings`, passed through to the model's provider. Embeddings
    are short and cannot stream, so this one call is awaited on the event loop
    (no thread or worker waits on it) instead of going through a job."""
    if request.method != "POST":
        return method_not_allowed()
    try:
        call = await in_thread(_embeddings_admit, request.headers.get("Authorization", ""), request.read())
    except InvalidKey as exc:
        return invalid_key_response(exc)
    except ApiError as exc:
        as_openai_error(exc)
        return json_error(exc.status_code, api_error_body(exc), exc.headers)
    fields = {"tenant": call.principal.tenant_schema, "user": call.principal.user_id}
    try:
        with provider_call(call.spec, operation="embeddings", params=call.body, job=fields) as traced:
            result = await embeddings_create(call.spec, body=call.body)
            usage = result.get("usage") or {}
            tokens = int(usage.get("prompt_tokens") or call.input_tokens)
            traced.succeeded(
                input_tokens=tokens,
                response_model=call.spec.provider_model_name,
                cost_micros=call_cost(call.spec, input_tokens=tokens, output_tokens=0),
            )
    except ProviderError as exc:
        await in_thread(_embeddings_settle, call, None)
        return provider_error_response(
            error_type=exc.error_type,
            status=exc.status,
            message=exc.message,
            code=exc.code,
            param=exc.param,
            retry_after=exc.retry_after,
            headers=call.headers,
        )
    await in_thread(_embeddings_settle, call, result)
    return JsonResponse(result, headers=call.headers)

from __future__ import annotations

from base64 import b64decode
from typing import Any

from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.selectors import Principal
from apps.billing.money import usd_string
from apps.core.errors import InvalidRequest, NotFound
from apps.ratelimit.limits import ratelimit_headers

from .lifecycle import job_cancel
from .models import Job, JobStatus, WebhookDelivery
from .selectors import job_get, job_list
from .serializers import JobCreateSerializer
from .submit import job_submit


def job_representation(
    job: Job, request: Request, *, deliveries: list[WebhookDelivery] | None = None
) -> dict[str, Any]:
    """A job as the API shows it. A plain function rather than a ModelSerializer:
    it runs on every response, and DRF's per-instance field introspection cost more
    than the rest of a submission's Python work. `JobOutputSerializer` documents the
    same shape for OpenAPI; a test keeps the two in step."""
    base = request.build_absolute_uri(f"/api/v1/jobs/{job.pk}")
    usage = None
    if job.input_tokens is not None and job.output_tokens is not None:
        usage = {
            "input_tokens": job.input_tokens,
            "output_tokens": job.output_tokens,
            "total_tokens": job.input_tokens + job.output_tokens,
            "cached_input_tokens": job.cached_input_tokens or 0,
            "reasoning_tokens": job.reasoning_tokens or 0,
            "estimated": job.usage_estimated,
        }
    error = None
    if job.error_type:
        error = {
            "type": job.error_type,
            "code": job.error_code or None,
            "message": job.error_message,
            "provider_status": job.error_status,
        }
    return {
        "id": str(job.pk),
        "object": "job",
        "status": job.status,
        "model": job.model,
        "requested_model": job.requested_model or job.model,
        "flags": job.flags,
        "output": job.output,
        "tool_calls": job.tool_calls,
        "reasoning": job.reasoning or None,
        "refusal": job.refusal or None,
        "logprobs": job.logprobs,
        "finish_reason": job.finish_reason,
        "choices": job.choices,
        "usage": usage,
        "cost_usd": usd_string(job.cost_micros),
        "cached": job.cached or None,
        "cache_similarity": job.cache_similarity,
        "provider_latency_ms": job.provider_latency_ms,
        "attempts": job.attempt_log,
        "fallbacks": job.fallbacks,
        "answered_by": job.answered_by or None,
        "tier": job.tier,
        "service_tier": job.service_tier or None,
        "system_fingerprint": job.system_fingerprint or None,
        "error": error,
        "metadata": job.metadata,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "webhook": _webhook(job, deliveries),
        "links": {"self": base, "events": f"{base}/events"},
    }


def _webhook(job: Job, deliveries: list[WebhookDelivery] | None) -> dict[str, Any] | None:
    if not job.webhook_url:
        return None
    return {
        "url": job.webhook_url,
        "delivered": any(d.succeeded for d in deliveries) if deliveries is not None else None,
        "deliveries": None
        if deliveries is None
        else [
            {"attempt": d.attempt, "status_code": d.status_code, "error": d.error or None, "at": d.created_at}
            for d in deliveries
        ],
    }


class UsageSchema(serializers.Serializer[Any]):
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField(help_text="of input_tokens, what the provider's prompt cache served")
    reasoning_tokens = serializers.IntegerField(help_text="of output_tokens, what a reasoning model thought")
    estimated = serializers.BooleanField(help_text="Counted by us (tiktoken) because the provider sent no usage.")


class JobErrorSchema(serializers.Serializer[Any]):
    type = serializers.CharField()
    code = serializers.CharField(allow_null=True)
    message = serializers.CharField()
    provider_status = serializers.IntegerField(allow_null=True)


class AttemptSchema(serializers.Serializer[Any]):
    model = serializers.CharField()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField()
    outcome = serializers.ChoiceField(choices=["succeeded", "failed", "skipped"])
    error_type = serializers.CharField(allow_null=True)
    provider_status = serializers.IntegerField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    retries = serializers.IntegerField()


class FunctionCallSchema(serializers.Serializer[Any]):
    name = serializers.CharField()
    arguments = serializers.CharField(help_text="JSON, as the model wrote it (not checked against the schema)")


class ToolCallSchema(serializers.Serializer[Any]):
    id = serializers.CharField()
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionCallSchema()


class ChoiceSchema(serializers.Serializer[Any]):
    index = serializers.IntegerField()
    output = serializers.CharField()
    tool_calls = ToolCallSchema(many=True, allow_null=True)
    refusal = serializers.CharField()
    logprobs = serializers.ListField(child=serializers.DictField(), allow_null=True)
    finish_reason = serializers.CharField()


class JobLinksSchema(serializers.Serializer[Any]):
    self = serializers.URLField()
    events = serializers.URLField()


class WebhookDeliverySchema(serializers.Serializer[Any]):
    attempt = serializers.IntegerField()
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    at = serializers.DateTimeField()


class JobWebhookSchema(serializers.Serializer[Any]):
    url = serializers.URLField()
    delivered = serializers.BooleanField(allow_null=True, help_text="null where deliveries are not listed")
    deliveries = WebhookDeliverySchema(many=True, allow_null=True, help_text="listed by GET /api/v1/jobs/{id}")


class JobOutputSerializer(serializers.Serializer[Any]):
    """OpenAPI description of `job_representation`."""

    id = serializers.UUIDField()
    object = serializers.CharField(default="job")
    status = serializers.ChoiceField(choices=JobStatus.values)
    model = serializers.CharField(help_text="the model the job runs on (a flag may have routed it)")
    requested_model = serializers.CharField(help_text="the model the request named")
    flags = serializers.DictField(child=serializers.CharField(), help_text='flags that decided: {key: "on" | "off"}')
    output = serializers.CharField()
    tool_calls = ToolCallSchema(many=True, allow_null=True, help_text="the tool calls the model answered with")
    reasoning = serializers.CharField(
        allow_null=True, help_text="a reasoning model's thinking, where its server sent it"
    )
    refusal = serializers.CharField(allow_null=True, help_text="the model declined: its words, instead of output")
    logprobs = serializers.ListField(
        child=serializers.DictField(), allow_null=True, help_text="OpenAI's logprobs.content entries, when asked for"
    )
    finish_reason = serializers.CharField()
    choices = ChoiceSchema(
        many=True, allow_null=True, help_text="n > 1: the choices after the first (which is output, tool_calls, ...)"
    )
    usage = UsageSchema(allow_null=True)
    cost_usd = serializers.CharField(
        allow_null=True, help_text='what the job cost, a decimal string in USD ("0.000150"); null until it is known'
    )
    cached = serializers.ChoiceField(
        choices=["exact", "semantic"], allow_null=True, help_text="which cache served the answer; null: a model did"
    )
    service_tier = serializers.CharField(allow_null=True, help_text="the tier the provider says served the call")
    system_fingerprint = serializers.CharField(allow_null=True, help_text="the provider's, as it sent it")
    cache_similarity = serializers.FloatField(allow_null=True, help_text="a semantic hit's cosine similarity")
    provider_latency_ms = serializers.IntegerField(allow_null=True)
    attempts = AttemptSchema(many=True, help_text="each model tried, with its retries")
    fallbacks = serializers.ListField(child=serializers.CharField(), help_text="the steps after `model`")
    answered_by = serializers.CharField(allow_null=True, help_text="the model (or semantic_cache) that answered")
    tier = serializers.IntegerField(allow_null=True, help_text="which step answered: 1 is `model`")
    error = JobErrorSchema(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    webhook = JobWebhookSchema(allow_null=True)
    links = JobLinksSchema()


class JobCursorPagination(CursorPagination):
    ordering = "-created_at"
    page_size = 20
    page_size_query_param = "limit"
    max_page_size = 100

    def decode_cursor(self, request: Request) -> Cursor | None:
        """DRF's cursor, refused with a 400 naming it when it is not one we made: not
        base64, or a position that is not a timestamp (DRF would pass it to the
        query, and Postgres would fail on it)."""
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        invalid = InvalidRequest("Invalid cursor: use the `next` or `previous` link of a page.", param="cursor")
        try:
            b64decode(encoded.encode("ascii"), validate=True)
            cursor = super().decode_cursor(request)
            if cursor is not None and cursor.position is not None and parse_datetime(str(cursor.position)) is None:
                raise ValueError(cursor.position)
        except (ValueError, exceptions.NotFound):  # binascii.Error is a ValueError
            raise invalid from None
        return cursor


class JobApiView(APIView):
    """Every response of the jobs API carries the caller's rate-limit headers
    (`x-ratelimit-*`, as OpenAI sends them): those of the admission when it took
    from the buckets, else the buckets as they stand."""

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        principal = getattr(request, "_user", None)  # not `request.user`: that would authenticate again
        if isinstance(principal, Principal) and not any(h.startswith("x-ratelimit-") for h in response.headers):
            for name, value in ratelimit_headers(principal).items():
                response.headers.setdefault(name, value)
        return response


class JobListCreateApi(JobApiView):
    class FilterSerializer(serializers.Serializer[Any]):
        status = serializers.ChoiceField(choices=JobStatus.values, required=False)
        model = serializers.CharField(required=False, max_length=64)

    @extend_schema(
        request=JobCreateSerializer,
        responses={202: JobOutputSerializer, 200: JobOutputSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Submit a chat job (answers 202 at once; a worker runs it)",
    )
    def post(self, request: Request) -> Response:
        serializer = JobCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        idempotency_key = request.headers.get("Idempotency-Key") or None
        if idempotency_key is not None and len(idempotency_key) > 255:
            raise InvalidRequest("Idempotency-Key is longer than 255 characters.", param="Idempotency-Key")
        submission = job_submit(
            principal=request.user,  # type: ignore[arg-type]
            request=serializer.job_request(),
            idempotency_key=idempotency_key,
        )
        body = job_representation(submission.job, request)
        return Response(
            body,
            status=status.HTTP_202_ACCEPTED if submission.created else status.HTTP_200_OK,
            headers=submission.limits.headers() if submission.limits is not None else None,
        )

    @extend_schema(
        parameters=[FilterSerializer, OpenApiParameter("cursor", str), OpenApiParameter("limit", int)],
        responses=JobOutputSerializer(many=True),
        summary="List the caller's jobs, newest first",
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        jobs: QuerySet[Job] = job_list(principal=request.user, **filters.validated_data)  # type: ignore[arg-type]
        paginator = JobCursorPagination()
        page = paginator.paginate_queryset(jobs, request, view=self)
        return paginator.get_paginated_response([job_representation(job, request) for job in page or []])


class JobDetailApi(JobApiView):
    @extend_schema(responses=JobOutputSerializer, summary="A job's status and result")
    def get(self, request: Request, job_id: Any) -> Response:
        job = job_get(principal=request.user, job_id=job_id)  # type: ignore[arg-type]
        if job is None:
            raise NotFound(f"No job with id {job_id}.", param="id")
        deliveries = list(job.webhook_deliveries.all()) if job.webhook_url else None
        return Response(job_representation(job, request, deliveries=deliveries))


class JobCancelApi(JobApiView):
    @extend_schema(request=None, responses=JobOutputSerializer, summary="Cancel a queued or running job")
    def post(self, request: Request, job_id: Any) -> Response:
        job = job_cancel(principal=request.user, job_id=job_id)  # type: ignore[arg-type]
        return Response(job_representation(job, request))

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(models.Model):
    """One LLM request, from submission to its final state. Lives in the tenant's schema."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey("accounts.User", on_delete=models.CASCADE, related_name="jobs")
    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=64)
    # A flag may route the request to another model: what was asked, and each flag
    # that decided ({key: "on" | "off"}), to compare cohorts.
    requested_model = models.CharField(max_length=64, blank=True)
    flags = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)

    # The request as validated: messages and the sampling parameters passed on to the provider.
    messages = models.JSONField()
    params = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    stream = models.BooleanField(default=False)
    input_tokens_estimate = models.PositiveIntegerField(default=0)
    # Tokens taken from the caller's rate-limit buckets at admission (0: none were),
    # reconciled against what the call used.
    ratelimit_tokens = models.PositiveIntegerField(default=0)
    # Money, in micro-dollars: held against the caller's budgets at admission (the
    # worst case), then what the call actually cost (also in the ledger).
    reserved_micros = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(null=True, blank=True)
    # NULL, not "": the unique constraint below must ignore jobs without a key.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_hash = models.CharField(max_length=64, blank=True)

    # Caching: the plan made at submission (apps.cache.policy.CachePlan), and what
    # served the answer.
    cache = models.JSONField(default=dict, blank=True)
    cached = models.CharField(
        max_length=16, blank=True, choices=[("exact", "Exact match"), ("semantic", "Semantic match")]
    )
    cache_similarity = models.FloatField(null=True, blank=True)  # a semantic hit's cosine similarity

    # The answer.
    output = models.TextField(blank=True)
    # The tool calls the model answered with (OpenAI's shape), or None: a text answer.
    tool_calls = models.JSONField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    usage_estimated = models.BooleanField(default=False)
    provider_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    response_model = models.CharField(max_length=200, blank=True)
    response_id = models.CharField(max_length=200, blank=True)

    # Each model the job tried: {model, started_at, ended_at, outcome (succeeded,
    # failed, skipped), error_type, provider_status, message, retries}.
    attempt_log = models.JSONField(default=list, blank=True)
    # The fallback chain after `model` (model slugs, then "semantic_cache" if the
    # tenant's semantic cache is the last tier), and which step answered (1: `model`).
    fallbacks = models.JSONField(default=list, blank=True)
    answered_by = models.CharField(max_length=64, blank=True)
    tier = models.PositiveSmallIntegerField(null=True, blank=True)

    # Failure, when there is one: our type, the provider's status and message verbatim.
    error_type = models.CharField(max_length=64, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    error_status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_param = models.CharField(max_length=256, blank=True)  # the request field a provider's refusal named
    # Of input_tokens, what the provider's prompt cache served; of output_tokens, reasoning.
    cached_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning = models.TextField(blank=True)  # a reasoning model's thinking, where its server sent it
    refusal = models.TextField(blank=True)  # the model declined: its words, instead of an answer
    logprobs = models.JSONField(null=True, blank=True)  # OpenAI's logprobs.content entries, when asked for
    # The choices after the first when a request asked for n > 1: [{index, output,
    # tool_calls, refusal, logprobs, finish_reason}] (the first is the fields above).
    choices = models.JSONField(null=True, blank=True)
    service_tier = models.CharField(max_length=32, blank=True)  # the tier the provider says served the call
    system_fingerprint = models.CharField(max_length=200, blank=True)  # as the provider sent it

    # Completion webhook: where the final state is POSTed (the request's, or the tenant's default).
    webhook_url = models.URLField(max_length=2000, blank=True)

    # Worker bookkeeping: how many times a worker claimed the job, and until when
    # the current claim holds (a redelivered message may take over after that).
    attempts = models.PositiveSmallIntegerField(default=0)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=["user", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="jobs_job_unique_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "-created_at"], name="jobs_job_user_created"),
            models.Index(fields=["status", "created_at"], name="jobs_job_status_created"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.model} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class WebhookDelivery(models.Model):
    """One attempt to deliver a job's completion webhook."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="webhook_deliveries")
    url = models.URLField(max_length=2000)
    attempt = models.PositiveSmallIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    succeeded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("job", "attempt")
        constraints = [
            models.UniqueConstraint(fields=["job", "attempt"], name="jobs_webhookdelivery_unique_attempt"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.attempt} {self.status_code or self.error}"

import redis
from django.contrib import admin
from django.db import models

from apps.core.admin_sites import operator_site
from apps.llm.breaker import breaker_state
from tasks.queues import llm_queue

from .models import LLMModel


@admin.register(LLMModel, site=operator_site)
class LLMModelAdmin(admin.ModelAdmin[LLMModel]):
    list_display = (
        "slug",
        "provider",
        "base_url",
        "context_window",
        "max_output_tokens",
        "input_price_per_mtok",
        "output_price_per_mtok",
        "enabled",
        "queue",
        "breaker",
    )
    list_filter = ("provider", "enabled")
    list_editable = ("enabled",)
    search_fields = ("slug", "base_url")
    readonly_fields = ("queue", "created_at", "updated_at")
    # A base URL typed without a scheme means https (Django 6's default).
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    @admin.display(description="queue")
    def queue(self, row: LLMModel) -> str:
        """The Celery queue the model's jobs go to (tasks/queues.py decides, not the
        catalog: the admin is an adapter and may ask)."""
        return llm_queue(row.slug)

    @admin.display(description="circuit breaker")
    def breaker(self, row: LLMModel) -> str:
        """The model's shared breaker as it stands (apps/llm/breaker.py)."""
        try:
            state = breaker_state(row.slug)
        except redis.RedisError:
            return "unknown (Redis unreachable)"
        if state.state == "open":
            return f"open ({state.seconds_left:g}s left)"
        if state.state == "closed" and state.failures:
            return f"closed ({state.failures} recent failures)"
        return state.state

"""Admission counts a request's tokens in its model's encoding: o200k_base for
the GPT-4o family (installed offline by `make install`), cl100k_base for the rest,
and cl100k_base (logged) when o200k_base is not installed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from django_tenants.utils import tenant_context

from apps.catalog.models import LLMModel
from apps.controls.models import RateLimit
from apps.jobs.models import Job
from apps.llm import tokens
from apps.llm.tokenizer_files import O200K_FILE
from tests.support import Personas

# Scripts where the two encodings differ most (o200k_base was built for them).
TEXT = "नमस्ते दुनिया, यह एक परीक्षण है। こんにちは世界、これはテストです。"


def test_encoding_follows_the_catalog_then_tiktokens_table_then_cl100k():
    assert tokens.encoding_for_model("gpt-4o-mini") == "o200k_base"
    assert tokens.encoding_for_model("gpt-4.1") == "o200k_base"
    assert tokens.encoding_for_model("gpt-4") == "cl100k_base"
    assert tokens.encoding_for_model("SmolLM2-135M-Instruct") == "cl100k_base"
    assert tokens.encoding_for_model("SmolLM2-135M-Instruct", "o200k_base") == "o200k_base"
    assert tokens.encoding_for_model("gpt-4o", "cl100k_base") == "cl100k_base"


def test_a_gpt_4o_request_is_counted_and_limited_in_o200k(personas: Personas, upstream):
    LLMModel.objects.create(
        slug="four-o",
        upstream_model="gpt-4o-mini",
        base_url=upstream.base_url,
        context_window=128_000,
        max_output_tokens=100,
    )
    RateLimit.objects.create(tenant=personas.alice.tenant, tokens_per_minute=60_000, burst_tokens=10_000)
    messages = [{"role": "user", "content": TEXT}]
    o200k = tokens.count_message_tokens(messages, "o200k_base")
    cl100k = tokens.count_message_tokens(messages, "cl100k_base")
    assert o200k < cl100k - 15  # the two really differ on this text
    response = personas.alice.client().post(
        "/api/v1/jobs", {"model": "four-o", "messages": messages, "max_tokens": 100}, format="json"
    )
    assert response.status_code == 202
    with tenant_context(personas.alice.tenant):
        job = Job.objects.get(pk=response.json()["id"])
    assert job.input_tokens_estimate == o200k
    assert job.ratelimit_tokens == o200k + 100
    assert 10_000 - o200k - 100 <= int(response["x-ratelimit-remaining-tokens"]) <= 10_000 - o200k - 100 + 2


@pytest.fixture
def fresh_encodings() -> Iterator[None]:
    tokens._encoding.cache_clear()
    yield
    tokens._encoding.cache_clear()


def test_without_o200k_installed_counting_falls_back_to_cl100k(
    settings, tmp_path: Path, fresh_encodings: None, caplog: pytest.LogCaptureFixture
):
    assert tokens.count_text_tokens(TEXT, "o200k_base") < tokens.count_text_tokens(TEXT, "cl100k_base")
    tokens._encoding.cache_clear()
    settings.TOKENIZER_DIR = str(tmp_path)  # empty: nothing installed
    (tmp_path / O200K_FILE).write_bytes(b"not the ranks")  # and a corrupt file is not used
    with caplog.at_level(logging.WARNING, logger="apps.llm.tokens"):
        assert tokens.count_text_tokens(TEXT, "o200k_base") == tokens.count_text_tokens(TEXT, "cl100k_base")
    assert "counting with cl100k_base" in caplog.text

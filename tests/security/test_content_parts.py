"""Content parts other than text (images, audio, files): their shape is checked
(400 naming the field), what a model cannot take is refused (the catalog's
`input_modalities`), remote image URLs never reach a self-hosted provider, file
ids are refused, and what passes is held at a worst case instead of 0 tokens."""

from __future__ import annotations

import base64
import struct
from typing import Any

import openai
import pytest
from django_tenants.utils import tenant_context

from apps.catalog.models import LLMModel, Provider
from apps.jobs.models import Job
from apps.llm.content import image_size, image_tokens
from apps.llm.tokens import count_message_tokens
from tests.support import Personas

TEXT = {"type": "text", "text": "What is in this picture?"}


def _png(width: int, height: int) -> str:
    """A data: URL whose PNG header says width x height (all the platform reads)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\x00\x00\x00\x00"
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def _image(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def _body(*parts: dict[str, Any], model: str = "local-small", role: str = "user") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": role, "content": [TEXT, *parts]}]}


def _error(response: Any) -> dict[str, Any]:
    assert response.status_code == 400, response.json()
    return dict(response.json()["error"])


def _takes(slug: str, *modalities: str, **fields: Any) -> None:
    LLMModel.objects.filter(slug=slug).update(input_modalities=["text", *modalities], **fields)


@pytest.mark.parametrize(
    ("part", "param", "code"),
    [
        ({"type": "image_url", "image_url": {}}, "messages.0.content.1.image_url.url", "invalid_content_part"),
        (_image("data:image/png;base64,@@@@"), "messages.0.content.1.image_url.url", "invalid_content_part"),
        (_image("data:text/html;base64,AAAA"), "messages.0.content.1.image_url.url", "invalid_content_part"),
        (_image("file:///etc/passwd"), "messages.0.content.1.image_url.url", "invalid_content_part"),
        (_image(_png(8, 8), detail="ultra"), "messages.0.content.1.image_url.detail", "invalid_content_part"),
        (_image(_png(8, 8), colour="red"), "messages.0.content.1.image_url.colour", "unknown_parameter"),
        ({"type": "image_url", "image_url": "x"}, "messages.0.content.1.image_url", "invalid_content_part"),
        (
            {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}},
            "messages.0.content.1.input_audio.format",
            "invalid_content_part",
        ),
        (
            {"type": "input_audio", "input_audio": {"data": 5, "format": "wav"}},
            "messages.0.content.1.input_audio.data",
            "invalid_content_part",
        ),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages.0.content.1.file.file_id", "unsupported_content"),
        (
            {"type": "file", "file": {"filename": "a.pdf"}},
            "messages.0.content.1.file.file_data",
            "invalid_content_part",
        ),
        ({"type": "video_url", "video_url": {"url": "x"}}, "messages.0.content.1.type", "unsupported_content"),
        ({"type": "text"}, "messages.0.content.1.text", "invalid_content_part"),
        ("just a string", "messages.0.content.1", "invalid_content_part"),
    ],
)
def test_malformed_parts_are_400_naming_the_field(personas: Personas, part: Any, param: str, code: str):
    error = _error(personas.alice.client().post("/api/v1/jobs", _body(part), format="json"))
    assert (error["param"], error["code"]) == (param, code)
    assert error["message"].startswith(param)


def test_only_user_messages_carry_media(personas: Personas):
    _takes("local-small", "image")
    body = _body(_image(_png(8, 8)), role="system")
    error = _error(personas.alice.client().post("/api/v1/jobs", body, format="json"))
    assert error["param"] == "messages.0.content.1.type"


def test_a_model_that_takes_only_text_refuses_an_image_naming_the_part(personas: Personas):
    error = _error(personas.alice.client().post("/api/v1/jobs", _body(_image(_png(8, 8))), format="json"))
    assert (error["param"], error["code"]) == ("messages.0.content.1", "unsupported_content")
    assert "local-small does not take image input" in error["message"]
    # Audio is refused by a model that takes images only.
    _takes("local-small", "image")
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    error = _error(personas.alice.client().post("/api/v1/jobs", _body(_image(_png(8, 8)), audio), format="json"))
    assert error["param"] == "messages.0.content.2"


def test_remote_image_urls_need_an_internet_provider_and_the_operators_consent(personas: Personas):
    client = personas.alice.client()
    remote = _image("http://10.0.0.5/admin.png")
    _takes("routing-probe", "image")
    error = _error(client.post("/api/v1/jobs", _body(remote, model="routing-probe"), format="json"))
    assert (error["param"], error["code"]) == ("messages.0.content.1.image_url.url", "remote_media_not_allowed")
    # A self-hosted server would fetch it from inside our network: refused even when ticked.
    _takes("routing-probe", "image", provider=Provider.VLLM, allow_remote_media=True)
    error = _error(client.post("/api/v1/jobs", _body(remote, model="routing-probe"), format="json"))
    assert error["code"] == "remote_media_not_allowed"
    # An internet provider, and the operator allowed it: it passes, held at the per-part maximum.
    _takes("routing-probe", "image", provider=Provider.OPENAI, allow_remote_media=True, max_tokens_per_part=2000)
    response = client.post("/api/v1/jobs", _body(remote, model="routing-probe"), format="json")
    assert response.status_code == 202, response.json()
    job = Job.objects.get(pk=response.json()["id"])
    text_only = count_message_tokens([{"role": "user", "content": [TEXT]}])
    assert job.input_tokens_estimate == text_only + 2000


def test_parts_are_held_at_a_worst_case_and_count_against_the_context(personas: Personas):
    client = personas.alice.client()
    _takes("routing-probe", "image", "audio", "file", max_tokens_per_part=1445)
    text_only = count_message_tokens([{"role": "user", "content": [TEXT]}])
    # A 2048 x 2048 image at high detail: 4 tiles, OpenAI counts 85 + 4 x 170 = 765.
    response = client.post("/api/v1/jobs", _body(_image(_png(2048, 2048)), model="routing-probe"), format="json")
    assert response.status_code == 202, response.json()
    held = Job.objects.get(pk=response.json()["id"]).input_tokens_estimate - text_only
    assert 765 <= held < 1445
    # Low detail: the base only, held at a ninth of the maximum (at least 85).
    response = client.post(
        "/api/v1/jobs", _body(_image(_png(2048, 2048), detail="low"), model="routing-probe"), format="json"
    )
    assert 85 <= Job.objects.get(pk=response.json()["id"]).input_tokens_estimate - text_only < 765
    # Audio and files: the per-part maximum each.
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}
    response = client.post("/api/v1/jobs", _body(audio, pdf, model="routing-probe"), format="json")
    assert Job.objects.get(pk=response.json()["id"]).input_tokens_estimate == text_only + 2 * 1445
    # Three parts at the maximum do not fit a 4096-token context: refused, not 0 tokens.
    response = client.post("/api/v1/jobs", _body(audio, audio, audio, model="routing-probe"), format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("provider", [Provider.VLLM, Provider.OLLAMA, Provider.LLAMA_CPP, Provider.OTHER])
def test_images_are_counted_by_their_providers_rule(personas: Personas, provider: str):
    """OpenAI's tiles are OpenAI's: another provider's vision encoder counts an
    image its own way, so every image is held at the model's per-part maximum,
    whatever its size or detail."""
    client = personas.alice.client()
    text_only = count_message_tokens([{"role": "user", "content": [TEXT]}])
    small = _image(_png(64, 64), detail="low")
    _takes("routing-probe", "image", provider=Provider.OPENAI, max_tokens_per_part=1445)
    response = client.post("/api/v1/jobs", _body(small, model="routing-probe"), format="json")
    assert Job.objects.get(pk=response.json()["id"]).input_tokens_estimate - text_only < 765
    _takes("routing-probe", "image", provider=provider, max_tokens_per_part=1445)
    for part in (small, _image(_png(2048, 2048)), _image(_png(8, 8), detail="high")):
        response = client.post("/api/v1/jobs", _body(part, model="routing-probe"), format="json")
        assert response.status_code == 202, response.json()
        assert Job.objects.get(pk=response.json()["id"]).input_tokens_estimate == text_only + 1445


def test_parts_are_bounded_in_number_and_size(personas: Personas, settings):
    client = personas.alice.client()
    _takes("routing-probe", "image")
    settings.CONTENT_MAX_PARTS = 2
    small = _image(_png(8, 8), detail="low")
    error = _error(client.post("/api/v1/jobs", _body(small, small, small, model="routing-probe"), format="json"))
    assert (error["param"], error["code"]) == ("messages.0.content.3", "too_many_content_parts")
    settings.CONTENT_MAX_PART_BYTES = 1024
    big = _image("data:image/png;base64," + "A" * 2048)
    error = _error(client.post("/api/v1/jobs", _body(big, model="routing-probe"), format="json"))
    assert (error["param"], error["code"]) == ("messages.0.content.1.image_url.url", "content_part_too_large")


def test_image_headers_are_read_for_their_size():
    assert image_size(_png(640, 480)) == (640, 480)
    gif = "data:image/gif;base64," + base64.b64encode(b"GIF89a" + struct.pack("<HH", 300, 200)).decode()
    assert image_size(gif) == (300, 200)
    jpeg = b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + b"\x00" * 14
    jpeg += b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 1000, 3000) + b"\x00" * 10
    assert image_size("data:image/jpeg;base64," + base64.b64encode(jpeg).decode()) == (3000, 1000)
    assert image_size("data:image/png;base64,AAAA") is None
    # Unreadable: the maximum; the largest image (8 tiles): the maximum too.
    assert image_tokens("data:image/png;base64,AAAA", detail="high", cap=1445) == 1445
    assert image_tokens(_png(768, 2048), detail="auto", cap=1445) == 1445


def test_v1_clients_get_a_bad_request_naming_the_part(platform_server, committed_personas: Personas):
    sdk = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )
    messages: Any = [{"role": "user", "content": [TEXT, _image(_png(8, 8))]}]
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.chat.completions.create(model="local-small", messages=messages)
    assert raised.value.code == "unsupported_content"
    assert raised.value.param == "messages.0.content.1"


def test_an_image_reaches_a_vision_model_through_the_sdk_as_sent(
    platform_server, worker, committed_personas: Personas, upstream
):
    from apps.catalog.selectors import catalog_cache_clear

    sdk = openai.OpenAI(
        base_url=f"{platform_server.url}/v1", api_key=committed_personas.alice.key, max_retries=0, timeout=20
    )
    _takes("local-small", "image")
    catalog_cache_clear()
    try:
        image = _image(_png(640, 480), detail="high")
        messages: Any = [{"role": "user", "content": [TEXT, image]}]
        completion = sdk.chat.completions.create(model="local-small", messages=messages)
        assert completion.choices[0].message.content == "Echo: What is in this picture?"
        bodies = [r["body"] for r in upstream.stats()["last_requests"] if r["path"].endswith("/chat/completions")]
        assert bodies[-1]["messages"] == [{"role": "user", "content": [TEXT, image]}]
    finally:
        _takes("local-small")
        catalog_cache_clear()


def test_a_provider_without_usage_bills_the_parts_at_what_was_held(worker, committed_personas: Personas, upstream):
    """llama.cpp-like servers send no usage: the estimate counts the text with
    tiktoken (which sees nothing in a part) and each part at what admission held."""
    from apps.catalog.models import DEFAULT_MAX_TOKENS_PER_PART
    from apps.catalog.selectors import catalog_cache_clear
    from tests.support import job_until_final

    upstream.configure(stream_usage=False)
    _takes("local-small", "audio", max_tokens_per_part=900)
    catalog_cache_clear()
    try:
        audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "mp3"}}
        client = committed_personas.alice.client()
        response = client.post("/api/v1/jobs", _body(audio), format="json")
        assert response.status_code == 202, response.json()
        done = job_until_final(client, response.json()["id"])
        assert done["status"] == "succeeded", done
        assert done["usage"]["estimated"] is True
        text_only = count_message_tokens([{"role": "user", "content": [TEXT]}])
        assert done["usage"]["input_tokens"] == text_only + 900
    finally:
        LLMModel.objects.filter(slug="local-small").update(
            input_modalities=["text"], max_tokens_per_part=DEFAULT_MAX_TOKENS_PER_PART
        )
        catalog_cache_clear()


def test_a_hold_counts_the_input_as_the_dearest_counting_step_of_the_chain(personas: Personas):
    """A fallback that counts an image by another provider's rule (the whole
    per-part maximum) is held at its count, not the requested model's."""
    from decimal import Decimal

    from apps.billing.services import chain_worst_case
    from apps.catalog.selectors import model_get
    from apps.controls.models import FallbackPolicy, TenantBudget

    carol = personas.carol
    TenantBudget.objects.create(tenant=carol.tenant, period="day", limit_usd=Decimal("10"))
    _takes("routing-probe", "image", provider=Provider.OPENAI, max_tokens_per_part=1445)
    _takes("premium-large", "image", provider=Provider.VLLM, max_tokens_per_part=1445)
    small = _image(_png(64, 64), detail="low")
    text_only = count_message_tokens([{"role": "user", "content": [TEXT]}])
    body = {**_body(small, model="routing-probe"), "max_tokens": 10}
    alone = carol.client().post("/api/v1/jobs", body, format="json")
    assert alone.status_code == 202, alone.json()
    FallbackPolicy.objects.create(tier="premium", chain=["routing-probe", "premium-large"])
    chained = carol.client().post("/api/v1/jobs", body, format="json")
    assert chained.status_code == 202, chained.json()
    with tenant_context(carol.tenant):
        alone_job, chained_job = (Job.objects.get(pk=r.json()["id"]) for r in (alone, chained))
    assert alone_job.input_tokens_estimate == chained_job.input_tokens_estimate < text_only + 765
    steps = [model_get("routing-probe"), model_get("premium-large")]
    assert chained_job.reserved_micros == chain_worst_case(
        steps,  # type: ignore[arg-type]
        input_tokens=text_only + 1445,
        max_tokens=10,
    )
    assert chained_job.reserved_micros > alone_job.reserved_micros

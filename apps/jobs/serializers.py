"""Request validation for the job API. Errors name the field (`messages.0.role`)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from rest_framework import serializers

from .submit import JobRequest

# Passed through to the provider as they are.
SAMPLING_PARAMS = ("max_tokens", "temperature", "top_p", "stop")
ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 2048
MAX_STOP_SEQUENCES = 4
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE_LENGTH = 512


class StrictSerializer(serializers.Serializer[Any]):
    """Rejects fields it does not know: a typo like `max_token` is an error, not a
    silently ignored parameter."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {
                        unknown[0]: serializers.ErrorDetail(
                            f"Unknown parameter '{unknown[0]}'.", code="unknown_parameter"
                        )
                    }
                )
        return super().to_internal_value(data)


# Content parts other than text, in OpenAI's shapes: the keys each may carry.
PART_FIELDS: dict[str, frozenset[str]] = {
    "image_url": frozenset({"url", "detail"}),
    "input_audio": frozenset({"data", "format"}),
    "file": frozenset({"file_data", "filename", "file_id"}),
}
IMAGE_DETAILS = ("auto", "low", "high")
AUDIO_FORMATS = ("wav", "mp3")
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL = URLValidator(schemes=["http", "https"])


def _part_error(path: list[str], message: str, code: str = "invalid_content_part") -> serializers.ValidationError:
    """An error named by its place under the content field: ["1", "image_url", "url"]
    becomes `messages.0.content.1.image_url.url`."""
    detail: Any = [serializers.ErrorDetail(message, code=code)]
    for name in reversed(path):
        detail = {name: detail}
    return serializers.ValidationError(detail)


def _base64(value: Any, path: list[str], what: str) -> str:
    if not isinstance(value, str) or not value or len(value) % 4 or not _BASE64.fullmatch(value):
        raise _part_error(path, f"Must be {what} as base64.")
    return value


def _data_url(value: str, path: list[str], media_types: tuple[str, ...] | None) -> None:
    header, comma, payload = value.partition(",")
    media_type = header.removeprefix("data:").removesuffix(";base64")
    if not comma or not header.endswith(";base64") or (media_types is not None and media_type not in media_types):
        kinds = f" ({', '.join(media_types)})" if media_types else ""
        raise _part_error(path, f"Must be a data: URL with base64 content{kinds}, e.g. 'data:image/png;base64,...'.")
    _base64(payload, path, "the data")


def validate_part(part: Any, index: int) -> None:
    """One content part's shape, in OpenAI's form; errors name the field."""
    at = str(index)
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise _part_error([at], 'Each content part must be an object like {"type": "text", "text": "..."}.')
    kind = part["type"]
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise _part_error([at, "text"], "A text part needs its text, a string.")
        return
    fields = PART_FIELDS.get(kind)
    if fields is None:
        raise _part_error(
            [at, "type"], f"Unknown content part type {kind!r}: text, {', '.join(PART_FIELDS)}.", "unsupported_content"
        )
    unknown = sorted(set(part) - {"type", kind})
    if unknown:
        raise _part_error([at, unknown[0]], f"Unknown parameter '{unknown[0]}'.", "unknown_parameter")
    body = part.get(kind)
    if not isinstance(body, dict):
        raise _part_error([at, kind], f"A {kind} part needs an object under {kind!r}.")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise _part_error([at, kind, unknown[0]], f"Unknown parameter '{unknown[0]}'.", "unknown_parameter")
    for name, value in body.items():
        if isinstance(value, str) and len(value) > settings.CONTENT_MAX_PART_BYTES:
            raise _part_error(
                [at, kind, name],
                f"At most {settings.CONTENT_MAX_PART_BYTES} bytes per part (CONTENT_MAX_PART_BYTES).",
                "content_part_too_large",
            )
    if kind == "image_url":
        url = body.get("url")
        if not isinstance(url, str) or not url:
            raise _part_error([at, kind, "url"], "An image part needs its url: a data: URL or an http(s) URL.")
        if url.startswith("data:"):
            _data_url(url, [at, kind, "url"], IMAGE_MEDIA_TYPES)
        else:
            try:
                _URL(url)
            except DjangoValidationError:
                raise _part_error([at, kind, "url"], "Must be a data: URL (base64) or an http(s) URL.") from None
        if "detail" in body and body["detail"] not in IMAGE_DETAILS:
            raise _part_error([at, kind, "detail"], f"One of {', '.join(IMAGE_DETAILS)}.")
    elif kind == "input_audio":
        _base64(body.get("data"), [at, kind, "data"], "the audio")
        if body.get("format") not in AUDIO_FORMATS:
            raise _part_error([at, kind, "format"], f"One of {', '.join(AUDIO_FORMATS)}.")
    else:  # file
        if "file_id" in body:
            # An id resolves in the provider account the platform calls with: ours.
            raise _part_error(
                [at, kind, "file_id"],
                "File ids are not accepted: send the file inline as file_data.",
                "unsupported_content",
            )
        data = body.get("file_data")
        if not isinstance(data, str) or not data:
            raise _part_error([at, kind, "file_data"], "A file part needs its file_data (base64, or a data: URL).")
        if data.startswith("data:"):
            _data_url(data, [at, kind, "file_data"], None)
        else:
            _base64(data, [at, kind, "file_data"], "the file")
        filename = body.get("filename")
        if filename is not None and (not isinstance(filename, str) or not 0 < len(filename) <= 255):
            raise _part_error([at, kind, "filename"], "A string of 1 to 255 characters.")


class ContentField(serializers.Field[Any, Any, Any, Any]):
    """A message's content: a string, or a list of parts: text
    ({"type": "text", "text": "..."}) and OpenAI's image_url, input_audio and file
    parts, each checked for its shape and size."""

    default_error_messages = {
        "invalid": "Must be a string or a list of content parts.",
    }

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str):
            return data
        if isinstance(data, list) and data:
            for index, part in enumerate(data):
                validate_part(part, index)
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class MessageSerializer(StrictSerializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField()
    name = serializers.CharField(required=False, max_length=64)
    tool_call_id = serializers.CharField(required=False, max_length=128)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        content = attrs.get("content")
        if attrs.get("role") != "user" and isinstance(content, list):
            for index, part in enumerate(content):
                if part["type"] != "text":
                    raise _part_error(
                        ["content", str(index), "type"],
                        f"Only user messages may carry {part['type']} parts.",
                        "unsupported_content",
                    )
        return attrs


class StopField(serializers.Field[Any, Any, Any, Any]):
    default_error_messages = {"invalid": f"Must be a string or a list of at most {MAX_STOP_SEQUENCES} strings."}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, str) and data:
            return data
        if (
            isinstance(data, list)
            and 0 < len(data) <= MAX_STOP_SEQUENCES
            and all(isinstance(item, str) and item for item in data)
        ):
            return data
        self.fail("invalid")

    def to_representation(self, value: Any) -> Any:
        return value


class MetadataField(serializers.DictField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if len(value) > MAX_METADATA_KEYS:
            raise serializers.ValidationError(f"At most {MAX_METADATA_KEYS} keys.", code="invalid")
        for key, item in value.items():
            if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_LENGTH or len(key) > 64:
                raise serializers.ValidationError(
                    f"Keys up to 64 characters, values strings up to {MAX_METADATA_VALUE_LENGTH}.", code="invalid"
                )
        return value


class WebhookSerializer(StrictSerializer):
    url = serializers.URLField(max_length=2000)

    def validate_url(self, value: str) -> str:
        try:
            urlsplit(value).port  # noqa: B018 - raises on a port outside 0-65535
        except ValueError:
            raise serializers.ValidationError("The port must be a number from 1 to 65535.", code="invalid") from None
        return value


class CacheOptionSerializer(StrictSerializer):
    mode = serializers.ChoiceField(choices=["use", "refresh", "bypass", "only"], required=False, default="use")
    ttl = serializers.IntegerField(required=False, min_value=1, max_value=30 * 24 * 3600)
    semantic = serializers.BooleanField(required=False)


class JobCreateSerializer(StrictSerializer):
    model = serializers.CharField(max_length=64)
    messages = MessageSerializer(many=True, allow_empty=False, max_length=MAX_MESSAGES)  # type: ignore[call-arg]
    max_tokens = serializers.IntegerField(required=False, min_value=1)
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    stop = StopField(required=False)
    metadata = MetadataField(required=False)
    stream = serializers.BooleanField(required=False, default=False)
    webhook = WebhookSerializer(required=False)
    cache = CacheOptionSerializer(required=False)
    fallbacks = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=8, allow_empty=True
    )

    def validate_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        count = 0
        for index, message in enumerate(messages):
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for position, part in enumerate(content):
                if part["type"] == "text":
                    continue
                count += 1
                if count > settings.CONTENT_MAX_PARTS:
                    raise serializers.ValidationError(
                        {
                            str(index): {
                                "content": {
                                    str(position): [
                                        serializers.ErrorDetail(
                                            f"At most {settings.CONTENT_MAX_PARTS} image, audio or file parts"
                                            " per request (CONTENT_MAX_PARTS).",
                                            code="too_many_content_parts",
                                        )
                                    ]
                                }
                            }
                        }
                    )
        return messages

    def job_request(self, *, stream: bool | None = None) -> JobRequest:
        """The validated submission as the job service takes it (`stream` overrides
        the body's, for the /v1 API, which reads it before validation)."""
        data = self.validated_data
        return JobRequest(
            model=data["model"],
            messages=data["messages"],
            params={name: data[name] for name in SAMPLING_PARAMS if name in data},
            metadata=data.get("metadata", {}),
            stream=data["stream"] if stream is None else stream,
            webhook_url=data.get("webhook", {}).get("url", ""),
            cache=dict(data["cache"]) if "cache" in data else None,
            fallbacks=list(data["fallbacks"]) if "fallbacks" in data else None,
        )

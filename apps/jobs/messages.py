"""A chat request's messages, in OpenAI's shapes: roles, content parts (text,
image_url, input_audio, file, each checked for shape and size), an assistant's
tool calls (its content may then be null), a tool result's tool_call_id.
Errors name the field (`messages.0.tool_calls.0.function.name`)."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from rest_framework import serializers

ROLES = ("system", "developer", "user", "assistant", "tool", "function")  # function: the legacy tool role
TOOL_NAME = re.compile(r"\A[a-zA-Z0-9_-]{1,64}\Z")
MAX_TOOL_CALLS = 128
MAX_ARGUMENTS_LENGTH = 1_000_000


class StrictSerializer(serializers.Serializer[Any]):
    """Rejects fields it does not know: a typo like `max_token` is an error, not a
    silently ignored parameter. A field named in `null_means_absent` may be sent
    as null, which means it was not sent (what OpenAI's SDKs and frameworks do)."""

    null_means_absent: frozenset[str] = frozenset()

    def known_names(self) -> set[str] | frozenset[str]:
        """The field names this serializer takes (a subclass that builds only the
        fields a request sends knows them all without building them)."""
        return set(self.fields)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            if self.null_means_absent:
                data = {k: v for k, v in data.items() if not (v is None and k in self.null_means_absent)}
            unknown = sorted(set(data) - self.known_names())
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
    breakpoint_ = part.get("prompt_cache_breakpoint")
    if breakpoint_ is not None and not (isinstance(breakpoint_, dict) and breakpoint_.get("mode") == "explicit"):
        raise _part_error([at, "prompt_cache_breakpoint"], 'Must be {"mode": "explicit"} (with an optional ttl).')
    if kind in ("text", "refusal"):  # a refusal part: an assistant's, sent back with the conversation
        unknown = sorted(set(part) - {"type", kind, "prompt_cache_breakpoint"})
        if unknown:
            raise _part_error([at, unknown[0]], f"Unknown parameter '{unknown[0]}'.", "unknown_parameter")
        if not isinstance(part.get(kind), str):
            raise _part_error([at, kind], f"A {kind} part needs its {kind}, a string.")
        return
    fields = PART_FIELDS.get(kind)
    if fields is None:
        raise _part_error(
            [at, "type"],
            f"Unknown content part type {kind!r}: text, refusal, {', '.join(PART_FIELDS)}.",
            "unsupported_content",
        )
    unknown = sorted(set(part) - {"type", kind, "prompt_cache_breakpoint"})
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


class FunctionCallSerializer(StrictSerializer):
    name = serializers.RegexField(TOOL_NAME)
    arguments = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=MAX_ARGUMENTS_LENGTH)


class ToolCallSerializer(StrictSerializer):
    """One tool call an assistant made (sent back with the conversation)."""

    id = serializers.CharField(max_length=256)
    type = serializers.ChoiceField(choices=["function"])
    function = FunctionCallSerializer()


class MessageSerializer(StrictSerializer):
    null_means_absent = frozenset(
        {"name", "tool_call_id", "tool_calls", "function_call", "refusal", "annotations", "audio"}
    )

    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField(allow_null=True)
    name = serializers.CharField(required=False, max_length=64)
    tool_call_id = serializers.CharField(required=False, max_length=256)
    tool_calls = ToolCallSerializer(many=True, required=False, max_length=MAX_TOOL_CALLS)  # type: ignore[call-arg]
    function_call = FunctionCallSerializer(required=False)  # the legacy single call
    refusal = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    # What a response's message carries and clients send back with the conversation
    # (the SDK's message objects): taken, and not forwarded (providers refuse them).
    annotations = serializers.ListField(required=False, write_only=True)
    audio = serializers.DictField(required=False)  # an assistant's earlier audio answer: {"id": ...}

    def to_internal_value(self, data: Any) -> Any:
        # content may be absent only where it may be null: an assistant's tool calls.
        if isinstance(data, dict) and "content" not in data and data.get("role") == "assistant":
            data = {**data, "content": None}
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        role, content = attrs.get("role"), attrs.get("content")
        if role == "user" and isinstance(content, list):
            for index, part in enumerate(content):
                if part["type"] == "refusal":
                    raise _part_error(
                        ["content", str(index), "type"], "Only assistant messages carry refusal parts.", "invalid"
                    )
        if role != "user" and isinstance(content, list):
            for index, part in enumerate(content):
                if part["type"] not in ("text", "refusal") or (part["type"] == "refusal" and role != "assistant"):
                    raise _part_error(
                        ["content", str(index), "type"],
                        f"Only user messages may carry {part['type']} parts.",
                        "unsupported_content",
                    )
        calls = attrs.get("tool_calls") or attrs.get("function_call")
        if content is None and not (role == "assistant" and (calls or "refusal" in attrs)):
            raise serializers.ValidationError(
                {"content": [serializers.ErrorDetail("This field may not be null.", code="null")]}
            )
        if "tool_calls" in attrs and role != "assistant":
            raise serializers.ValidationError(
                {"tool_calls": [serializers.ErrorDetail("Only assistant messages carry tool calls.", code="invalid")]}
            )
        if "function_call" in attrs and role != "assistant":
            raise serializers.ValidationError(
                {"function_call": [serializers.ErrorDetail("Only assistant messages carry a function call.")]}
            )
        if role == "function" and not attrs.get("name"):
            raise serializers.ValidationError(
                {"name": [serializers.ErrorDetail("A function message needs the name of the function.", "required")]}
            )
        if role == "tool" and not attrs.get("tool_call_id"):
            raise serializers.ValidationError(
                {
                    "tool_call_id": [
                        serializers.ErrorDetail(
                            "A tool message needs the tool_call_id of the call it answers.", code="required"
                        )
                    ]
                }
            )
        attrs.pop("annotations", None)
        return attrs

"""The Chat Completions parameters beyond the messages, in OpenAI's shapes:
tools and tool_choice, response_format (text, JSON mode, JSON schema), the
sampling and penalty knobs, logprobs, reasoning and output options. Each is
checked for its shape here and forwarded to the provider as sent; what a model
can do with them is the catalog's question, asked at admission."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from apps.catalog.models import MAX_N

from .messages import TOOL_NAME, StrictSerializer

MAX_TOOLS = 128
MAX_SCHEMA_BYTES = 64 * 1024  # a tool's parameters, or a response schema, as JSON
MAX_LOGIT_BIAS = 300
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
VERBOSITIES = ("low", "medium", "high")


def _error(message: str, code: str = "invalid") -> serializers.ValidationError:
    return serializers.ValidationError(message, code=code)


class SchemaField(serializers.DictField):
    """A JSON schema: an object, at most MAX_SCHEMA_BYTES as JSON."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if len(json.dumps(value)) > MAX_SCHEMA_BYTES:
            raise _error(f"At most {MAX_SCHEMA_BYTES} bytes of JSON schema.")
        return dict(value)


class FunctionSerializer(StrictSerializer):
    null_means_absent = frozenset({"description", "parameters", "strict"})

    name = serializers.RegexField(
        TOOL_NAME, error_messages={"invalid": "Letters, digits, _ and -, at most 64 characters."}
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=8192)
    parameters = SchemaField(required=False)
    strict = serializers.BooleanField(required=False)


class ToolSerializer(StrictSerializer):
    """A function tool (the only kind Chat Completions providers take)."""

    type = serializers.ChoiceField(choices=["function"])
    function = FunctionSerializer()


class ToolChoiceField(serializers.Field[Any, Any, Any, Any]):
    """ "none", "auto", "required", or {"type": "function", "function": {"name": ...}}."""

    def to_internal_value(self, data: Any) -> Any:
        if data in ("none", "auto", "required"):
            return data
        if (
            isinstance(data, dict)
            and set(data) == {"type", "function"}
            and data["type"] == "function"
            and isinstance(data["function"], dict)
            and set(data["function"]) == {"name"}
            and isinstance(data["function"]["name"], str)
        ):
            return {"type": "function", "function": {"name": data["function"]["name"]}}
        raise _error('Must be "none", "auto", "required", or {"type": "function", "function": {"name": "..."}}.')

    def to_representation(self, value: Any) -> Any:
        return value


class FunctionCallChoiceField(serializers.Field[Any, Any, Any, Any]):
    """The legacy function_call: "none", "auto", or {"name": ...}."""

    def to_internal_value(self, data: Any) -> Any:
        if data in ("none", "auto"):
            return data
        if isinstance(data, dict) and set(data) == {"name"} and isinstance(data["name"], str):
            return {"name": data["name"]}
        raise _error('Must be "none", "auto", or {"name": "..."}.')

    def to_representation(self, value: Any) -> Any:
        return value


class JsonSchemaSerializer(StrictSerializer):
    null_means_absent = frozenset({"description", "schema", "strict"})

    name = serializers.RegexField(
        TOOL_NAME, error_messages={"invalid": "Letters, digits, _ and -, at most 64 characters."}
    )
    description = serializers.CharField(required=False, allow_blank=True, max_length=8192)
    schema = SchemaField(required=False)
    strict = serializers.BooleanField(required=False)


class ResponseFormatSerializer(StrictSerializer):
    """{"type": "text"}, {"type": "json_object"}, or {"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}."""

    type = serializers.ChoiceField(choices=["text", "json_object", "json_schema"])
    json_schema = JsonSchemaSerializer(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["type"] == "json_schema" and "json_schema" not in attrs:
            raise serializers.ValidationError(
                {"json_schema": [serializers.ErrorDetail("A json_schema response format needs its json_schema.")]}
            )
        if attrs["type"] != "json_schema" and "json_schema" in attrs:
            raise serializers.ValidationError(
                {"json_schema": [serializers.ErrorDetail("Only a json_schema response format takes a json_schema.")]}
            )
        return attrs


class LogitBiasField(serializers.Field[Any, Any, Any, Any]):
    """{token id (a string of digits): bias from -100 to 100}."""

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) > MAX_LOGIT_BIAS:
            raise _error(f"Must be an object of at most {MAX_LOGIT_BIAS} token ids, each with a bias from -100 to 100.")
        for key, value in data.items():
            if not key.isdigit() or type(value) not in (int, float) or not -100 <= value <= 100:
                raise _error("Each key a token id (digits), each value a bias from -100 to 100.")
        return dict(data)

    def to_representation(self, value: Any) -> Any:
        return value


class StreamOptionsSerializer(StrictSerializer):
    null_means_absent = frozenset({"include_usage", "include_obfuscation"})

    include_usage = serializers.BooleanField(required=False)
    include_obfuscation = serializers.BooleanField(required=False)


class AudioOutputSerializer(StrictSerializer):
    voice = serializers.CharField(max_length=64)
    format = serializers.ChoiceField(choices=["wav", "aac", "mp3", "flac", "opus", "pcm16"])


class PredictionSerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["content"])
    content = serializers.JSONField()


def chat_fields() -> dict[str, serializers.Field[Any, Any, Any, Any]]:
    """The fields of a Chat Completions request other than model, messages,
    max_tokens, temperature, top_p, stop, metadata and stream (which the job
    serializer declares itself)."""
    return {
        "tools": ToolSerializer(many=True, required=False, max_length=MAX_TOOLS),  # type: ignore[call-arg]
        # The legacy pair (before tools): sent to providers as tools, answered as function_call.
        "functions": FunctionSerializer(many=True, required=False, max_length=MAX_TOOLS),  # type: ignore[call-arg]
        "function_call": FunctionCallChoiceField(required=False),
        "tool_choice": ToolChoiceField(required=False),
        "parallel_tool_calls": serializers.BooleanField(required=False),
        "response_format": ResponseFormatSerializer(required=False),
        "seed": serializers.IntegerField(required=False, min_value=-(2**63), max_value=2**63 - 1),
        "presence_penalty": serializers.FloatField(required=False, min_value=-2, max_value=2),
        "frequency_penalty": serializers.FloatField(required=False, min_value=-2, max_value=2),
        "logit_bias": LogitBiasField(required=False),
        "logprobs": serializers.BooleanField(required=False),
        "top_logprobs": serializers.IntegerField(required=False, min_value=0, max_value=20),
        # How many choices: up to what the model's catalog entry allows (admission).
        "n": serializers.IntegerField(required=False, min_value=1, max_value=MAX_N),
        "max_completion_tokens": serializers.IntegerField(required=False, min_value=1),
        "reasoning_effort": serializers.ChoiceField(choices=REASONING_EFFORTS, required=False),
        "verbosity": serializers.ChoiceField(choices=VERBOSITIES, required=False),
        "modalities": serializers.ListField(
            child=serializers.ChoiceField(choices=["text", "audio"]), required=False, max_length=2
        ),
        "audio": AudioOutputSerializer(required=False),
        "prediction": PredictionSerializer(required=False),
        "web_search_options": serializers.DictField(required=False),
        "prompt_cache_key": serializers.CharField(required=False, max_length=1024),
        "prompt_cache_options": serializers.DictField(required=False),
        "prompt_cache_retention": serializers.ChoiceField(choices=["in_memory", "24h"], required=False),
        "moderation": serializers.DictField(required=False),
        "safety_identifier": serializers.CharField(required=False, max_length=1024),
        "user": serializers.CharField(required=False, allow_blank=True, max_length=1024),
        "store": serializers.BooleanField(required=False),
        "service_tier": serializers.ChoiceField(
            choices=["auto", "default", "flex", "priority", "scale", "fast"], required=False
        ),
        "stream_options": StreamOptionsSerializer(required=False),
        # Provider extras (the SDK's extra_body puts them at the top level): taken
        # where the model's catalog entry allows them (admission's Capabilities step).
        "top_k": serializers.IntegerField(required=False, min_value=-1),
        "min_p": serializers.FloatField(required=False, min_value=0, max_value=1),
        "repetition_penalty": serializers.FloatField(required=False, min_value=0, max_value=10),
        "chat_template_kwargs": serializers.DictField(required=False),
    }


# What the provider is sent as it was sent to us (beside messages and the output
# allowance), where its model takes it (apps.llm.capabilities: store and
# service_tier only to the models whose catalog entry allows them).
FORWARDED = (
    "n",
    "temperature",
    "top_p",
    "stop",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "prompt_cache_key",
    "prompt_cache_options",
    "prompt_cache_retention",
    "moderation",
    "safety_identifier",
    "user",
    "top_k",
    "min_p",
    "repetition_penalty",
    "chat_template_kwargs",
    "store",
    "service_tier",
)

# OpenAI's optional fields: null means absent (what SDKs and frameworks send).
NULLABLE = frozenset(
    {
        *FORWARDED,
        "max_tokens",
        "max_completion_tokens",
        "metadata",
        "stream",
        "stream_options",
    }
)


def chat_checks(data: dict[str, Any]) -> None:
    """Checks across fields; errors name the field."""

    def fail(field: str, message: str) -> None:
        raise serializers.ValidationError({field: [serializers.ErrorDetail(message, code="invalid")]})

    if "max_tokens" in data and "max_completion_tokens" in data:
        fail("max_completion_tokens", "Send max_tokens or max_completion_tokens, not both.")
    if "top_logprobs" in data and not data.get("logprobs"):
        fail("top_logprobs", "top_logprobs needs logprobs: true.")
    if data.get("functions") and data.get("tools"):
        fail("functions", "Send tools or the legacy functions, not both.")
    if "function_call" in data and not data.get("functions"):
        fail("function_call", "function_call needs functions.")
    call = data.get("function_call")
    if isinstance(call, dict) and call["name"] not in {f["name"] for f in data.get("functions") or []}:
        fail("function_call", f"function_call names {call['name']!r}, which is not among the functions.")
    if "tool_choice" in data and not data.get("tools"):
        fail("tool_choice", "tool_choice needs tools.")
    if "parallel_tool_calls" in data and not data.get("tools"):
        fail("parallel_tool_calls", "parallel_tool_calls needs tools.")
    choice = data.get("tool_choice")
    if isinstance(choice, dict):
        names = {tool["function"]["name"] for tool in data.get("tools") or []}
        if choice["function"]["name"] not in names:
            fail("tool_choice", f"tool_choice names {choice['function']['name']!r}, which is not among the tools.")
    listed = [tool["function"]["name"] for tool in data.get("tools") or []]
    if len(listed) != len(set(listed)):
        fail("tools", "Each tool needs a name of its own.")

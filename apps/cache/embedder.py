"""Embeddings for the semantic cache, behind one small interface.

`Embedder.embed(texts)` returns one vector per text. Two backends, chosen per
tenant in its cache policy: `OpenAICompatibleEmbedder` speaks OpenAI's
`/v1/embeddings` (OpenAI, vLLM, Ollama, TEI, llama.cpp), and `LocalEmbedder`
(local_embedder.py) runs all-MiniLM-L6-v2 on this machine's CPU. `name` tells
embedders apart: vectors from two embedders are never compared.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import openai
from django.conf import settings

from apps.llm.providers import NO_KEY, openai_client


class EmbedderError(Exception):
    """The embedder could not answer (unreachable, misconfigured, wrong size)."""


class PromptTooLong(EmbedderError):
    """The text is longer than the embedder reads: it is not matched (a cut
    prompt would look like every prompt that shares its beginning)."""


class Embedder(Protocol):
    @property
    def dimensions(self) -> int: ...

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


@dataclass(frozen=True)
class OpenAICompatibleEmbedder:
    base_url: str
    model: str
    dimensions: int
    api_key_env: str = ""

    @property
    def name(self) -> str:
        return f"{self.base_url}|{self.model}|{self.dimensions}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else NO_KEY
        if not key:
            raise EmbedderError(f"the embedder's API key variable ${self.api_key_env} is not set")
        client = openai_client(self.base_url, key, float(settings.EMBEDDER_TIMEOUT_SECONDS))
        try:
            response = client.embeddings.create(
                model=self.model, input=list(texts), dimensions=self.dimensions, encoding_format="float"
            )
        except openai.BadRequestError:
            # Models with a fixed size reject `dimensions`: ask again without it.
            try:
                response = client.embeddings.create(model=self.model, input=list(texts), encoding_format="float")
            except openai.OpenAIError as exc:
                raise EmbedderError(str(exc)) from exc
        except openai.OpenAIError as exc:
            raise EmbedderError(str(exc)) from exc
        vectors = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        if len(vectors) != len(texts) or any(len(v) != self.dimensions for v in vectors):
            sizes = sorted({len(v) for v in vectors})
            raise EmbedderError(f"{self.model} returned vectors of size {sizes}, not the policy's {self.dimensions}")
        return vectors

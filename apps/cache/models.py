from django.db import models
from pgvector.django import VectorField

# Vector sizes the semantic cache indexes (one partial HNSW index each): the
# common sizes of small (384: MiniLM, bge-small), base (768), large (1024) and
# OpenAI (1536) embedding models.
DIMENSIONS = (384, 768, 1024, 1536)


class SemanticEntry(models.Model):
    """An answer the semantic cache may reuse for a paraphrase. Lives in the
    tenant's schema: no query of another tenant can reach it."""

    model = models.CharField(max_length=64)
    # SHA-256 of the conversation before the last user message (system prompt
    # included) and the sampling parameters: a paraphrase matches only in the same context.
    partition = models.CharField(max_length=64)
    prompt = models.TextField(help_text="the last user message, normalized")
    dimensions = models.PositiveSmallIntegerField()
    embedding = VectorField()  # untyped; indexed per size by partial expression indexes (migration 0001)

    output = models.TextField()
    finish_reason = models.CharField(max_length=32)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    usage_estimated = models.BooleanField(default=False)
    response_model = models.CharField(max_length=200, blank=True)

    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    last_hit_at = models.DateTimeField()
    hit_count = models.PositiveIntegerField(default=0)

    class Meta:
        indexes = [
            models.Index(fields=["model", "partition"], name="cache_semantic_partition"),
            models.Index(fields=["last_hit_at"], name="cache_semantic_last_hit"),
            models.Index(fields=["expires_at"], name="cache_semantic_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.model}: {self.prompt[:60]}"

"""The OpenAI-compatible API under /v1: adapters over admission and the jobs."""

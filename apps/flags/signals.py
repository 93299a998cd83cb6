"""A saved or deleted flag bumps the Redis version: every process reloads its
flags at its next check (within FLAG_CACHE_SECONDS)."""

from __future__ import annotations

import logging
from typing import Any

import redis
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.core.redis import redis_client

from .models import Flag
from .selectors import VERSION_KEY, flags_cache_clear

logger = logging.getLogger(__name__)


def _bump() -> None:
    flags_cache_clear()  # this process at once
    try:
        redis_client().incr(VERSION_KEY)
    except redis.RedisError as exc:
        logger.warning("flag change not broadcast (other processes reload within a minute): %s", exc)


@receiver(post_save, sender=Flag)
@receiver(post_delete, sender=Flag)
def flag_changed(**kwargs: Any) -> None:
    transaction.on_commit(_bump)

"""Token buckets against the real Valkey: exact under concurrency, all-or-none
across buckets, honest Retry-After, reconciliation."""

from __future__ import annotations

import threading
import time
import uuid

import redis
from django.conf import settings

from apps.ratelimit.buckets import Bucket, Unit, buckets_adjust, buckets_peek, buckets_take


def _key(name: str) -> str:
    return f"aip:{{test}}:rl:{name}:{uuid.uuid4().hex[:8]}"


def _redis_time() -> float:
    seconds, micros = redis.Redis.from_url(settings.REDIS_URL).time()
    return seconds + micros / 1_000_000


def _tokens(bucket: Bucket) -> float:
    return float(redis.Redis.from_url(settings.REDIS_URL).hget(bucket.key, "tokens") or bucket.capacity)


def test_64_racing_clients_never_take_more_than_capacity_plus_refill():
    bucket = Bucket(_key("user"), capacity=500, per_second=200)
    cost = 7
    admitted = 0
    lock = threading.Lock()
    stop = threading.Event()

    def hammer() -> None:
        nonlocal admitted
        while not stop.is_set():
            if buckets_take([bucket], [cost]).admitted:
                with lock:
                    admitted += 1

    started = _redis_time()
    threads = [threading.Thread(target=hammer) for _ in range(64)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = _redis_time() - started
    taken = admitted * cost
    assert taken <= bucket.capacity + bucket.per_second * elapsed
    # And the bucket was really the limit (not an idle test): most of what refilled was taken.
    assert taken >= bucket.capacity + bucket.per_second * (elapsed - 1)


def test_all_or_none_across_buckets():
    user = Bucket(_key("user"), capacity=1000, per_second=1)
    tenant = Bucket(_key("tenant"), capacity=100, per_second=1)
    assert buckets_take([user, tenant], [90, 90]).admitted
    refused = buckets_take([user, tenant], [50, 50])
    assert not refused.admitted and refused.bucket == tenant
    assert 39 <= refused.retry_after <= 41  # 40 tokens short at 1 token/s
    assert _tokens(user) < 911  # only the first request was debited from the user bucket
    assert _tokens(user) > 909


def test_retry_after_is_honest_and_oversized_requests_never_pass():
    bucket = Bucket(_key("model"), capacity=100, per_second=50)
    first = buckets_take([bucket], [80])
    assert first.admitted and 19 <= first.levels[0] <= 21
    refused = buckets_take([bucket], [80])
    assert not refused.admitted and 0 < refused.retry_after <= 1.3
    time.sleep(refused.retry_after + 0.05)
    assert buckets_take([bucket], [80]).admitted  # retrying after Retry-After succeeds
    too_big = buckets_take([bucket], [101])
    assert not too_big.admitted and too_big.never


def test_reconcile_credits_unused_and_debits_excess_below_zero():
    bucket = Bucket.per_minute(_key("user"), tokens_per_minute=600)  # 10 tokens/s, burst 600
    assert buckets_take([bucket], [500]).admitted
    buckets_adjust([bucket], [400])  # estimated 500, used 100
    assert 499 <= _tokens(bucket) <= 520
    buckets_adjust([bucket], [-1000])  # used far more than estimated
    assert _tokens(bucket) < 0
    refused = buckets_take([bucket], [10])
    assert not refused.admitted and refused.retry_after > 40  # it must refill past zero first


def test_request_and_token_buckets_are_paid_together_and_peeking_takes_nothing():
    tokens = Bucket(_key("tokens"), capacity=1000, per_second=1)
    requests = Bucket(_key("requests"), capacity=2, per_second=0.01, unit=Unit.REQUESTS)
    assert buckets_take([tokens, requests], [100, 1]).admitted
    second = buckets_take([tokens, requests], [100, 1])
    assert second.admitted and 799 <= second.levels[0] <= 801 and 0 <= second.levels[1] <= 0.1
    third = buckets_take([tokens, requests], [100, 1])
    assert not third.admitted and third.bucket == requests and 90 <= third.retry_after <= 100
    assert 799 <= _tokens(tokens) <= 801  # the refused request took no tokens
    before = buckets_peek([tokens, requests])
    after = buckets_peek([tokens, requests])
    assert 799 <= before[0] <= after[0] <= 802 and before[1] <= after[1] < 1
    buckets_adjust([tokens, requests], [100, 1])  # a refund gives back both
    assert buckets_take([tokens, requests], [100, 1]).admitted

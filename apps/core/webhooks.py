"""Calls to a tenant's URL: the SSRF checks, the pinned-address POST and the
Standard Webhooks signature, shared by completion webhooks (apps.jobs.webhooks)
and budget alerts (apps.billing.alerts).

A signed request carries the headers `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`,
keyed with the tenant's `whsec_` secret.

The URL is a tenant's input, so it must never become a way into our network:

- only http:// and https:// URLs, with a valid port;
- the host is resolved once (`resolver`, bounded by WEBHOOK_DNS_TIMEOUT_SECONDS)
  and every address it resolves to must be public (or inside
  WEBHOOK_ALLOWED_NETWORKS), at submission and again at delivery;
- the delivery connects to the address that was checked (a network backend that
  ignores the host name), while the request keeps the URL's host: the Host
  header, and for https the SNI and the certificate's verification, name it. A
  second resolution (DNS rebinding) therefore never happens;
- no redirect is followed: a 3xx is a failed delivery;
- the whole exchange (connect, TLS, request, response headers) has one deadline
  of WEBHOOK_TIMEOUT_SECONDS, so a receiver that trickles bytes cannot hold a
  worker thread;
- what the tenant sees of an attempt is its status code, or a fixed error word
  (`address_not_allowed`, `invalid_url`, `no_response`); the callers log the
  details.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore2
from django.conf import settings
from django.db import connection

from apps.core.errors import InvalidRequest

# The fixed words an attempt's `error` may hold (the tenant sees them).
ERROR_ADDRESS_NOT_ALLOWED = "address_not_allowed"
ERROR_INVALID_URL = "invalid_url"
ERROR_NO_RESPONSE = "no_response"


def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the operating system's resolver)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# The seam through which every webhook host is resolved (tests replace it). It is
# called once per check; the connection then uses the address it returned.
resolver: Callable[[str, int], list[str]] = system_resolve

# getaddrinfo has no timeout of its own: lookups run here, and the caller waits at
# most WEBHOOK_DNS_TIMEOUT_SECONDS. The pool is small and bounded, so a resolver
# that hangs ties up these threads, never a web thread or an unbounded number.
LOOKUP_THREADS = 16
# A lookup that outlives its caller's wait keeps its thread until the resolver
# gives up (often 10 s or more): one tenant's hosts on a black-holed name server
# would otherwise take every thread and fail every tenant's checks. Each tenant
# may have this many lookups running in a process; the pool is a per-process
# resource, so its guard is too.
LOOKUPS_PER_TENANT = 4
_lookups = concurrent.futures.ThreadPoolExecutor(max_workers=LOOKUP_THREADS, thread_name_prefix="webhook-dns")
_running: dict[str, int] = {}
_running_lock = threading.Lock()


def _lookup_slot(tenant: str) -> bool:
    with _running_lock:
        if _running.get(tenant, 0) >= LOOKUPS_PER_TENANT:
            return False
        _running[tenant] = _running.get(tenant, 0) + 1
        return True


def _lookup_done(tenant: str) -> None:
    with _running_lock:
        left = _running.get(tenant, 1) - 1
        if left > 0:
            _running[tenant] = left
        else:
            _running.pop(tenant, None)


def _guarded(tenant: str, host: str, port: int) -> list[str]:
    try:
        return resolver(host, port)
    finally:
        _lookup_done(tenant)


class WebhookRefused(InvalidRequest):
    """The URL is not one we may call; `reason` is the fixed word recorded."""

    def __init__(self, message: str, *, reason: str, param: str, code: str = "invalid_request") -> None:
        super().__init__(message, code=code, param=param)
        self.reason = reason


class WebhookFailed(OSError):
    """A delivery that got no 2xx answer (no answer at all, or another status)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    host: str
    port: int
    address: str  # the checked address the delivery connects to


def _resolve(host: str, port: int, *, param: str) -> list[str]:
    # The tenant is the connection's schema (django-tenants sets it on the
    # connection); read here without apps.tenants, which core sits below.
    tenant = getattr(connection, "schema_name", "") or ""
    if not _lookup_slot(tenant):
        raise WebhookRefused(
            f"Too many webhook host lookups of yours are still running (at most {LOOKUPS_PER_TENANT});"
            f" {host!r} was not looked up. Retry shortly.",
            reason=ERROR_NO_RESPONSE,
            param=param,
        )
    future = _lookups.submit(_guarded, tenant, host, port)
    try:
        return future.result(timeout=settings.WEBHOOK_DNS_TIMEOUT_SECONDS)
    except concurrent.futures.TimeoutError as exc:
        future.cancel()
        raise WebhookRefused(
            f"The webhook host {host!r} did not resolve within {settings.WEBHOOK_DNS_TIMEOUT_SECONDS} s.",
            reason=ERROR_NO_RESPONSE,
            param=param,
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(
            f"The webhook host {host!r} does not resolve.", reason=ERROR_NO_RESPONSE, param=param
        ) from exc


def _allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    networks = [ipaddress.ip_network(net) for net in settings.WEBHOOK_ALLOWED_NETWORKS]
    return address.is_global or any(address in net for net in networks)


def webhook_target(url: str, *, param: str = "webhook.url") -> WebhookTarget:
    """Check a URL a tenant wants us to call (SSRF) and return where to connect:
    http(s) only, a valid port, and a host whose every address is public (or in
    WEBHOOK_ALLOWED_NETWORKS). Raises WebhookRefused (a 400 naming `param`)."""
    try:
        parsed = urlsplit(url)
        port = parsed.port
    except ValueError as exc:  # a port out of range or not a number
        raise WebhookRefused(
            f"The webhook URL has an invalid port: {exc}.", reason=ERROR_INVALID_URL, param=param
        ) from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise WebhookRefused(
            "The webhook URL must be an http:// or https:// URL with a host.", reason=ERROR_INVALID_URL, param=param
        )
    if port == 0:
        raise WebhookRefused("The webhook URL has an invalid port: 0.", reason=ERROR_INVALID_URL, param=param)
    host = parsed.hostname
    port = port or (443 if parsed.scheme == "https" else 80)
    addresses = _resolve(host, port, param=param)
    if not addresses:
        raise WebhookRefused(f"The webhook host {host!r} does not resolve.", reason=ERROR_NO_RESPONSE, param=param)
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])  # an IPv6 zone id is not part of the address
        if not _allowed(address):
            raise WebhookRefused(
                f"The webhook host {host!r} resolves to a non-public address.",
                code="webhook_url_not_allowed",
                reason=ERROR_ADDRESS_NOT_ALLOWED,
                param=param,
            )
    return WebhookTarget(url=url, host=host, port=port, address=addresses[0])


def webhook_url_check(url: str, *, param: str = "webhook.url") -> None:
    """Refuse URLs a tenant must not make us call (see webhook_target)."""
    webhook_target(url, param=param)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every read and write (and TLS upgrade) waits at most
    until the delivery's deadline."""

    def __init__(self, stream: httpcore2.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _timeout(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the webhook delivery's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._timeout(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._timeout(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        upgraded = self._stream.start_tls(
            ssl_context, server_hostname, self._timeout(timeout, httpcore2.ConnectTimeout)
        )
        return _DeadlineStream(upgraded, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore2.NetworkBackend):
    """Connects to the checked address whatever host the request names: the URL
    (Host header, SNI, certificate name) stays the tenant's, the socket goes only
    where the check allowed."""

    def __init__(self, target: WebhookTarget, deadline: float) -> None:
        self._target = target
        self._deadline = deadline
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        if host.strip("[]").lower() != self._target.host.strip("[]").lower() or port != self._target.port:
            raise httpcore2.ConnectError(f"refusing to connect to {host}:{port}, which was not checked")
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore2.ConnectTimeout("the webhook delivery's deadline passed")
        stream = self._backend.connect_tcp(
            self._target.address,
            port,
            timeout=left if timeout is None else min(timeout, left),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        raise httpcore2.ConnectError("webhooks never use unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def webhook_post(url: str, *, body: bytes, headers: dict[str, str], param: str = "webhook.url") -> int:
    """POST `body` to a tenant's URL, safely (see the module's docstring), and
    return the status code of the answer, whatever it is (a 3xx is not followed).
    Raises WebhookRefused when the URL may not be called and WebhookFailed when no
    answer came within WEBHOOK_TIMEOUT_SECONDS."""
    target = webhook_target(url, param=param)
    timeout = float(settings.WEBHOOK_TIMEOUT_SECONDS)
    deadline = time.monotonic() + timeout
    # No proxies from the environment, no cookies, no redirects: httpcore2 does none
    # of these, and the pool lives for this one request.
    pool = httpcore2.ConnectionPool(
        ssl_context=httpcore2.default_ssl_context(),
        max_connections=1,
        retries=0,
        network_backend=_PinnedBackend(target, deadline),
    )
    try:
        with (
            pool,
            pool.stream(
                "POST",
                url,
                headers=list(headers.items()),
                content=body,
                extensions={"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}},
            ) as response,
        ):
            return response.status  # the body is never read
    except (
        httpcore2.TimeoutException,
        httpcore2.NetworkError,
        httpcore2.ProtocolError,
        httpcore2.UnsupportedProtocol,
        ValueError,  # ssl.SSLError is an OSError
        OSError,
    ) as exc:
        raise WebhookFailed(f"no answer from {target.host}: {exc!r}") from exc


def webhook_sign(*, secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def webhook_headers(*, secret: str, message_id: str, body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for one delivery, signed now."""
    timestamp = int(time.time())
    return {
        "Content-Type": "application/json",
        "User-Agent": "aiplatform-webhooks/1",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_sign(secret=secret, message_id=message_id, timestamp=timestamp, body=body),
    }

"""End-to-end test of devtools.embedded: real PostgreSQL + Valkey from the wheels.

No Django needed (run with `-p no:django` until settings exist).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psycopg
import redis

from devtools import embedded


def _distinct_free_ports() -> tuple[int, int]:
    # The kernel may hand out the same ephemeral port twice in a row.
    first = embedded.free_port()
    second = embedded.free_port()
    while second == first:
        second = embedded.free_port()
    return first, second


def _port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_start_reuse_stop(tmp_path: Path) -> None:
    # tmp_path is under /tmp/pytest-of-root (0700): as root, start() must make
    # it traversable for the unprivileged account postgres runs as.
    datadir = tmp_path / "devdata"
    pg_port, redis_port = _distinct_free_ports()
    try:
        services = embedded.start(datadir, pg_port=pg_port, redis_port=redis_port)
        assert services.database_url == f"postgres://postgres@127.0.0.1:{pg_port}/aiplatform"
        assert services.redis_url == f"redis://127.0.0.1:{redis_port}/0"

        # TCP (not the Unix socket): the URL is what the app will use.
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert conn.info.dbname == "aiplatform"
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            row = conn.execute("SELECT '[1,2,3]'::vector::text").fetchone()
            assert row == ("[1,2,3]",)

        client = redis.Redis.from_url(services.redis_url)
        try:
            assert client.ping() is True
        finally:
            client.close()

        # Idempotent: a second start reuses the running servers, quickly.
        t0 = time.monotonic()
        again = embedded.start(datadir, pg_port=pg_port, redis_port=redis_port)
        assert time.monotonic() - t0 < 2.0
        assert again == services
        assert embedded.status(datadir) == embedded.Status(pg_port=pg_port, redis_port=redis_port)
    finally:
        embedded.stop(datadir)

    assert _port_closed(pg_port)
    assert _port_closed(redis_port)
    assert embedded.status(datadir) == embedded.Status(pg_port=None, redis_port=None)
    embedded.stop(datadir)  # quiet when nothing runs


def test_port_taken_by_stranger(tmp_path: Path) -> None:
    # Something else listens on the requested port: fail clearly, start nothing.
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken = stranger.getsockname()[1]
        redis_port = embedded.free_port()
        try:
            embedded.start(tmp_path / "devdata", pg_port=taken, redis_port=redis_port)
        except RuntimeError as exc:
            assert str(taken) in str(exc)
            assert "AIP_PG_PORT" in str(exc)
        else:
            raise AssertionError("start() should refuse a port in use")
        finally:
            embedded.stop(tmp_path / "devdata")
    assert _port_closed(redis_port)

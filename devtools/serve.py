"""Serve an ASGI app with uvicorn in a daemon thread on a loopback port: the test
upstream uses it, and tests use it to run the platform's own ASGI app for real.
`stop_process` ends a server (or worker) started as a subprocess."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from typing import Any


def stop_process(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM, then SIGKILL when it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ThreadedUvicorn:
    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0, name: str = "uvicorn") -> None:
        self.app = app
        self.host = host
        self.port = port
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        # Bound here so the port is known before the server thread runs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            log_config=None,  # don't reconfigure the host process's logging
            timeout_graceful_shutdown=3,
            timeout_keep_alive=30,
        )
        # uvicorn installs signal handlers only on the main thread, so run() is safe here.
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True)
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + 10.0
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._thread = None
                server.should_exit = True
                sock.close()
                raise RuntimeError(f"{self.name} failed to start")
            time.sleep(0.005)

    def stop(self) -> None:
        thread, server = self._thread, self._server
        if thread is None or server is None:
            return
        server.should_exit = True
        thread.join(timeout=10.0)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5.0)
        self._thread = None

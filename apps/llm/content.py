"""Content parts other than text (images, audio, files): what a model takes, and
what admission holds for them.

The serializer (apps/jobs/serializers.py) checks their shape and size; here, at
admission, against the model: a part of a kind the model does not take
(`LLMModel.input_modalities`) is refused, and so is a remote image URL unless the
operator allowed remote media for a provider on the internet (a self-hosted
server would fetch it from inside our network). Each part is held at a worst
case, since tiktoken counts it as nothing: a `data:` image whose dimensions its
header gives is held at its share of the model's per-part maximum by OpenAI's
tile formula (a high-detail image costs a base plus a price per 512-px tile, at
most 8 tiles); anything else at the catalog's per-part maximum
(`max_tokens_per_part`).
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from apps.catalog.models import Provider
from apps.core.errors import InvalidRequest

if TYPE_CHECKING:
    from apps.catalog.selectors import ModelSpec

# A part's `type` -> the modality the catalog names.
PART_MODALITY = {"image_url": "image", "input_audio": "audio", "file": "file"}
# OpenAI's high-detail scaling: fit in 2048 x 2048, then the shortest side to 768;
# the tiles of 512 px that covers are at most 2 x 4.
MAX_TILES = 8
# Enough of a base64 image to reach its dimensions (a JPEG's frame header may
# follow tens of kilobytes of EXIF); beyond it the part is held at the maximum.
_HEADER_CHARS = 256 * 1024


def media_parts(messages: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every non-text content part, with the parameter that names it
    (`messages.0.content.1`)."""
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for position, part in enumerate(content):
            if isinstance(part, Mapping) and part.get("type") != "text":
                yield f"messages.{index}.content.{position}", part


def content_admit(*, spec: ModelSpec, messages: Iterable[Mapping[str, Any]]) -> int:
    """The input tokens the request's non-text parts may cost at `spec`, or a 400
    naming the first part it cannot take."""
    return _media_tokens(spec, messages, refuse=True)


def content_tokens(*, spec: ModelSpec, messages: Iterable[Mapping[str, Any]]) -> int:
    """The same count without refusing anything: what a call's non-text parts are
    billed at when the provider reports no usage (tiktoken counts them as nothing),
    so what was held for them is what is charged."""
    return _media_tokens(spec, messages, refuse=False)


def part_refusal(spec: ModelSpec, param: str, part: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """Why `spec` cannot take one non-text part, as (the field, the message, the
    code), or None: a kind it does not take, or a remote image URL it may not
    fetch."""
    kind = str(part.get("type"))
    modality = PART_MODALITY.get(kind)
    if modality is None or modality not in spec.input_modalities:
        takes = ", ".join(spec.input_modalities)
        return (
            param,
            f"{param}: {spec.slug} does not take {modality or kind} input (it takes: {takes}).",
            "unsupported_content",
        )
    image = part.get("image_url") if kind == "image_url" else None
    url = str(image.get("url", "")) if isinstance(image, Mapping) else ""
    if image is not None and not url.startswith("data:") and not spec.allow_remote_media:
        return (
            f"{param}.image_url.url",
            f"{param}.image_url.url: {spec.slug} does not take image URLs; send the image inline"
            " as a data: URL (base64).",
            "remote_media_not_allowed",
        )
    return None


def _media_tokens(spec: ModelSpec, messages: Iterable[Mapping[str, Any]], *, refuse: bool) -> int:
    total = 0
    for param, part in media_parts(messages):
        refusal = part_refusal(spec, param, part) if refuse else None
        if refusal is not None:
            field, message, code = refusal
            raise InvalidRequest(message, code=code, param=field)
        image = part.get("image_url") if part.get("type") == "image_url" else None
        url = str(image.get("url", "")) if isinstance(image, Mapping) else ""
        # A remote image, audio, a file, or another provider's image (not OpenAI's
        # tiles: the model's own count, at most the cap): the per-part maximum.
        if image is None or not url.startswith("data:") or spec.provider != Provider.OPENAI:
            total += spec.max_tokens_per_part
            continue
        detail = str(image.get("detail") or "auto") if isinstance(image, Mapping) else "auto"
        total += image_tokens(url, detail=detail, cap=spec.max_tokens_per_part)
    return total


def image_tokens(data_url: str, *, detail: str, cap: int) -> int:
    """The hold for an inline image: its share of `cap` (the model's largest
    image) by its tiles, `cap * (tiles + 1) / 9`. That is at least OpenAI's count
    (base + tiles x per-tile) whenever a tile costs at least the base, as for
    every OpenAI vision model, since `cap` = base + 8 x per-tile. Low detail is
    the base alone (no tiles); unreadable dimensions: `cap`."""
    if detail == "low":
        tiles = 0
    else:
        size = image_size(data_url)
        if size is None:
            return cap
        tiles = _tiles(*size)
    return min(cap, math.ceil(cap * (tiles + 1) / (MAX_TILES + 1)))


def _tiles(width: int, height: int) -> int:
    if width <= 0 or height <= 0:
        return MAX_TILES
    scale = min(1.0, 2048 / max(width, height))
    scale *= min(1.0, 768 / (min(width, height) * scale))
    return min(MAX_TILES, math.ceil(width * scale / 512) * math.ceil(height * scale / 512))


def image_size(data_url: str) -> tuple[int, int] | None:
    """(width, height) from a base64 data: URL's PNG, GIF, WebP or JPEG header,
    reading only its start; None when it cannot tell."""
    _, _, payload = data_url.partition(",")
    chunk = payload[:_HEADER_CHARS]
    chunk = chunk[: len(chunk) - len(chunk) % 4]
    try:
        head = base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        return _size(head)
    except (struct.error, IndexError):
        return None


def _size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return int(width), int(height)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10])
        return int(width), int(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        chunk = head[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            width, height = struct.unpack("<HH", head[26:30])
            return int(width) & 0x3FFF, int(height) & 0x3FFF
        return None
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


# JPEG start-of-frame markers (not DHT C4, JPG C8, DAC CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            offset += 2
            continue
        (length,) = struct.unpack(">H", head[offset + 2 : offset + 4])
        if marker in _SOF:
            height, width = struct.unpack(">HH", head[offset + 5 : offset + 9])
            return int(width), int(height)
        offset += 2 + length
    return None

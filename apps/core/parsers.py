"""DRF parsers (a module of their own: DRF imports them while `apps.core.errors`,
which json_loads raises from, is still importing DRF)."""

from __future__ import annotations

from typing import Any

from rest_framework.parsers import JSONParser


class StrictJSONParser(JSONParser):
    """DRF's JSON parser with `apps.core.jsonbody.json_loads`'s rules."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        from .jsonbody import json_loads

        return json_loads(stream.read() if stream is not None else b"")

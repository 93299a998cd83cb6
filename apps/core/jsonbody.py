"""Request bodies as strict JSON: what Python's `json` module would accept but
Postgres, the providers or our own code cannot take is refused at the door, with
the field it is in.

- `NaN`, `Infinity` and `-Infinity` are not JSON (RFC 8259); Python accepts them.
- Nesting deeper than MAX_DEPTH: no request of ours needs it, and Python's decoder
  and every recursive walk after it would raise RecursionError (a 500).
- A NUL character (`\\u0000`) cannot be stored in a Postgres `jsonb` or `text`.
- A lone surrogate (`\\ud800`) is not a character: it cannot be encoded as UTF-8,
  so it cannot be stored or sent to a provider.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidRequest

MAX_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON; send a number.", code="parse_error")


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate, which is not a character"
    return None


def json_check(data: Any) -> None:
    """Refuse nesting deeper than MAX_DEPTH and strings (keys too) that cannot be
    stored or sent on, naming the field (`messages.0.content`)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            problem = _bad_string(value)
            if problem:
                raise InvalidRequest(f"{path or 'The body'} {problem}.", code="invalid_string", param=path or None)
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(
                    f"The body is nested more than {MAX_DEPTH} levels deep.", code="parse_error", param=path or None
                )
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                child = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and (problem := _bad_string(key)):
                    where = path or "the body"
                    raise InvalidRequest(f"A key in {where} {problem}.", code="invalid_string", param=path or None)
                stack.append((item, child, depth + 1))


def json_loads(raw: bytes | str) -> Any:
    """Parse a request body strictly (see the module docstring); raises InvalidRequest."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidRequest(f"The body is nested more than {MAX_DEPTH} levels deep.", code="parse_error") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise InvalidRequest(f"The body is not valid JSON: {exc}", code="parse_error") from None
    json_check(data)
    return data

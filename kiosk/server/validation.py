"""Reading REST request bodies and query strings; anything wrong is a 400 BAD_REQUEST."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, TypeVar

from aiohttp import web

from kiosk.protocol import ErrorCode, ProtocolError, decode_json, is_valid_id

_E = TypeVar("_E", bound=StrEnum)
_INTEGER = re.compile(r"^-?[0-9]{1,18}$")


def bad_request(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The body as a JSON object. Over the app's client_max_size, aiohttp raises 413 here."""
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = decode_json(raw)
    except ValueError:
        raise bad_request("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


def require_id(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"missing field {name!r}")
    if not is_valid_id(value):
        raise bad_request(f"{name!r} must match ^[A-Za-z0-9_.@-]{{1,100}}$")
    return value


def is_unicode_text(value: str) -> bool:
    """False for strings with lone surrogates (JSON allows "\\ud800"; UTF-8, and so the database, does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def require_text(body: dict[str, Any], name: str, max_length: int) -> str:
    value = body.get(name)
    if value is None:
        raise bad_request(f"missing field {name!r}")
    if not isinstance(value, str) or not 1 <= len(value) <= max_length or not is_unicode_text(value):
        raise bad_request(f"{name!r} must be a string of 1 to {max_length} characters")
    return value


def optional_text(body: dict[str, Any], name: str, max_length: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length or not is_unicode_text(value):
        raise bad_request(f"{name!r} must be a string of at most {max_length} characters")
    return value or None


def require_choice(value: Any, enum: type[_E], name: str) -> _E:
    if value is None:
        raise bad_request(f"missing {name!r}")
    if not isinstance(value, str) or value not in {str(m) for m in enum}:
        raise bad_request(f"{name!r} must be one of {', '.join(str(m) for m in enum)}")
    return enum(value)


def query_int(request: web.Request, name: str, default: int, low: int, high: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not _INTEGER.match(raw):
        raise bad_request(f"{name!r} must be an integer")
    value = int(raw)
    if value < low or (high is not None and value > high):
        upper = f" to {high}" if high is not None else " or more"
        raise bad_request(f"{name!r} must be {low}{upper}")
    return value


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw not in ("true", "false"):
        raise bad_request(f"{name!r} must be true or false")
    return raw == "true"

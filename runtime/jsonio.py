"""JSON rules shared by every reader and writer (training data, bulk, Ray, the server): strict output,
and how a value that is not what was expected is named in an error. Standard library only."""

from __future__ import annotations

import json


def json_text(obj, separators: tuple[str, str] | None = None) -> str:
    """Strict JSON (never NaN or Infinity), UTF-8-encodable: a lone surrogate (valid in a Python str, not in
    UTF-8) is written as a JSON escape instead of failing the whole answer."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=separators)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=separators)
    return text


def json_line(obj: dict) -> str:
    """One JSON line of output (json_text and a newline)."""
    return json_text(obj) + "\n"


def json_kind(value) -> str:
    """How a JSON value that is not what was expected is described in an error ("a number (3)", "null")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, (int, float)):
        shown = json.dumps(value)
        return f"a number ({shown if len(shown) <= 40 else shown[:37] + '...'})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__

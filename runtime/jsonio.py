"""JSON rules shared by every reader and writer (training data, bulk, Ray, the server): strict output,
and how a value that is not what was expected is named in an error. Standard library only."""

from __future__ import annotations

import json
import math


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


# The limits every bundle JSON reader applies (this one, runtime/js/src/json.js, runtime/cpp/bundle_check.h),
# so that a document is read the same way, or refused, in every language: arrays and objects nested at
# most this deep, integers JavaScript reads exactly, and no number that overflows a double.
MAX_JSON_DEPTH = 512
MAX_JSON_INTEGER = 2**53 - 1


def strict_json(text: str):
    """json.loads that refuses what other languages' parsers refuse or read differently: NaN, Infinity,
    -Infinity, a number beyond a double, an integer beyond +-(2**53 - 1), nesting deeper than MAX_JSON_DEPTH."""

    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    value = json.loads(text, parse_constant=refuse)
    todo = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"arrays and objects nested deeper than {MAX_JSON_DEPTH}")
            todo.extend((child, depth + 1) for child in (v.values() if isinstance(v, dict) else v))
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_JSON_INTEGER:
            raise ValueError(
                f"the integer {str(v)[:40]} is outside +-{MAX_JSON_INTEGER} (what JavaScript reads exactly)"
            )
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a number too large for a double")
    return value

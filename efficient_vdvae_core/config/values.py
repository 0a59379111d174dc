"""One raw .cfg value: evaluated safely, then checked against its key's kind and bounds."""
import math

from efficient_vdvae_core.config.rules import run_name_problem, shorten
from efficient_vdvae_core.config.schema import OPTIMIZERS, section_fields
from efficient_vdvae_core.safe_eval import parse_value

INT64_MAX = 2 ** 63 - 1  # the bound of every integer key that sets no smaller one


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _to_float(v):
    try:
        return float(v)
    except OverflowError:
        raise TypeError("too large for a floating-point number") from None


def _check_bounds(value, meta):
    """Why `value` (a number) is outside the bounds of `meta`, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    if meta["kind"] in ("int", "float") and meta["choices"] is not None and value not in meta["choices"]:
        return f"must be one of {', '.join(map(str, meta['choices']))}"
    low, high = meta["low"], meta["high"]
    if high is None and _is_int(value):
        high = INT64_MAX
    if low is not None and (value < low or (meta["low_open"] and value == low)):
        return f"must be {'>' if meta['low_open'] else '>='} {low}"
    if high is not None and (value > high or (meta["high_open"] and value == high)):
        return f"must be {'<' if meta['high_open'] else '<='} {high}" + (
            " (a 64-bit integer)" if high == INT64_MAX else "")
    return None


def _coerce_temperature(item):
    if _is_number(item):
        return _to_float(item)
    if isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str):
        if item[0] != "linear":
            raise TypeError(f"unknown temperature function {item[0]!r} (known: 'linear')")
        if not (_is_number(item[1]) and _is_number(item[2])):
            raise TypeError("('linear', a, b) needs two numbers")
        return ("linear", _to_float(item[1]), _to_float(item[2]))
    if isinstance(item, list) and item and all(_is_number(t) for t in item):
        return tuple(_to_float(t) for t in item)
    raise TypeError("each temperature setting must be a number, ('linear', a, b) or a list of numbers")


def _coerce_temperatures(value):
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError("expected a non-empty list of temperature settings")
    out = tuple(_coerce_temperature(item) for item in value)
    for item in out:
        numbers = (item,) if isinstance(item, float) else item[1:] if item[0] == "linear" else item
        if not all(math.isfinite(t) for t in numbers):
            raise TypeError("every temperature must be finite")
    return out


def _coerce_choice(value, choices):
    if value is None and "None" in choices:
        value = "None"
    if isinstance(value, str):
        lowered = {str(c).lower(): c for c in choices}
        if choices == tuple(OPTIMIZERS.values()):
            lowered = dict(OPTIMIZERS)
        if value.lower() in lowered:
            return lowered[value.lower()]
    if value in choices:
        return value
    raise TypeError(f"expected one of {', '.join(map(str, choices))}")


def _coerce_list(value, meta):
    kind = meta["kind"]
    if not isinstance(value, (list, tuple)) or not value:
        raise TypeError("expected a non-empty list")
    check = _is_int if kind == "int_list" else _is_number
    if not all(check(v) for v in value):
        raise TypeError(f"expected a list of {'integers' if kind == 'int_list' else 'numbers'}")
    out = tuple(v if kind == "int_list" else _to_float(v) for v in value)
    for v in out:
        problem = _check_bounds(v, meta)
        if problem:
            raise TypeError(f"every element {problem} (found {shorten(str(v))})")
    return out


def coerce(value, meta):
    """Check one evaluated value against its field kind; return the normalised value or raise TypeError."""
    kind = meta["kind"]
    if kind == "name":
        problem = run_name_problem(value)
        if problem:
            raise TypeError(problem)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError("expected True or False")
        return value
    if kind == "choice":
        return _coerce_choice(value, meta["choices"])
    if kind == "kernel":
        if _is_int(value):
            value = (value, value)
        if not (isinstance(value, (tuple, list)) and len(value) == 2
                and all(_is_int(v) and 1 <= v <= INT64_MAX for v in value)):
            raise TypeError("expected a kernel size: an integer or a pair (kh, kw) of positive integers")
        return tuple(value)
    if kind in ("int_list", "float_list"):
        return _coerce_list(value, meta)
    if kind == "temperatures":
        return _coerce_temperatures(value)
    if kind == "int":
        if not _is_int(value):
            raise TypeError("expected an integer")
        out = value
    elif kind == "float":
        if not _is_number(value):
            raise TypeError("expected a number")
        out = _to_float(value)
    else:
        raise AssertionError(kind)
    problem = _check_bounds(out, meta)
    if problem:
        raise TypeError(problem)
    return out


def evaluate_raw(section, key, raw):
    """Evaluate a raw string for (section, key); the run name is taken verbatim, quotes stripped."""
    meta = section_fields(section)[key].metadata
    if meta["kind"] == "name":
        try:
            value = parse_value(raw)
        except ValueError:
            value = raw.strip()
        return value if isinstance(value, str) else raw.strip()
    return parse_value(raw)

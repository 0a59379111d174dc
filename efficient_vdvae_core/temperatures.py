"""Prior temperatures for generation: one `synthesis.temperature_settings` entry -> one value per level.

A setting is a number (the same temperature everywhere), a ('linear', a, b) tuple, or a list with
one temperature per top-down level. Level 0 is the deepest, lowest-resolution level.
Temperatures multiply the prior std only; the output temperature is a separate key.
"""
import numbers

TEMPERATURE_FUNCTIONS = ("linear",)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _checked(value, what):
    t = float(value)
    if not t >= 0 or t == float("inf"):
        raise ValueError(f"temperature {what} must be a finite number >= 0 (got {value!r})")
    return t


def linear_temperatures(start, end, n_levels):
    """t_i = start + (end - start) * i / n_levels for i = 0..n_levels-1.

    Faithful to the original: the last level gets start + (n-1)/n * (end - start), so `end` itself
    is never reached; start > end gives a decreasing schedule.
    """
    slope = (end - start) / n_levels
    return [start + slope * i for i in range(n_levels)]


def level_temperatures(setting, n_levels):
    """Per-level temperatures (list of n_levels floats) for one temperature setting.

    Unlike the original, an int such as 1 is accepted as a temperature.
    """
    if n_levels < 1:
        raise ValueError(f"level_temperatures: n_levels must be >= 1 (got {n_levels})")
    if _is_number(setting):
        return [_checked(setting, "setting")] * n_levels
    if isinstance(setting, (tuple, list)) and setting and isinstance(setting[0], str):
        if len(setting) != 3 or not (_is_number(setting[1]) and _is_number(setting[2])):
            raise ValueError(f"temperature setting {setting!r}: expected (function name, start, end)")
        if setting[0] not in TEMPERATURE_FUNCTIONS:
            raise ValueError(f"temperature setting {setting!r}: unknown function {setting[0]!r} "
                             f"(known: {', '.join(TEMPERATURE_FUNCTIONS)})")
        start, end = _checked(setting[1], "start"), _checked(setting[2], "end")
        return linear_temperatures(start, end, n_levels)
    if isinstance(setting, (tuple, list)) and all(_is_number(t) for t in setting):
        if len(setting) != n_levels:
            raise ValueError(f"temperature setting {list(setting)!r}: a per-level list needs {n_levels} entries "
                             f"(one per top-down level, len(down_strides)), got {len(setting)}")
        return [_checked(t, "list entry") for t in setting]
    raise ValueError(f"temperature setting {setting!r}: expected a number, ('linear', start, end) "
                     "or a list of per-level numbers")


def layer_temperatures(setting, architecture):
    """Per-latent-layer temperatures (list of N_lat floats), in latent-layer order.

    `architecture` is an `efficient_vdvae_core.architecture.Architecture`; a level's extra blocks
    share its temperature.
    """
    per_level = level_temperatures(setting, architecture.n_levels)
    return [t for t, (_, extras) in zip(per_level, architecture.down_levels) for _ in range(1 + len(extras))]

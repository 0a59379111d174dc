"""RawConfig -> frozen, validated Config, and the round trips of a Config through text and plain dicts.

Every problem raises `ConfigError` with one line naming where the value came from (the file, or the
`--set` argument that gave it), the key and the value.
"""
import dataclasses

from efficient_vdvae_core.config.cfgfile import RawConfig, read_raw, with_overrides
from efficient_vdvae_core.config.rules import shorten, validate
from efficient_vdvae_core.config.schema import SECTIONS, Config, section_fields
from efficient_vdvae_core.config.values import coerce, evaluate_raw
from efficient_vdvae_core.errors import ConfigError
from efficient_vdvae_core.safe_eval import UnsafeValueError


def _where(raw, section, key):
    """Where the value of (section, key) came from, as a message prefix."""
    text = raw.values[section][key]
    if (section, key) in raw.overridden:
        return f"--set {section}.{key}={shorten(text)}"
    return f"{raw.source}: [{section}] {key} = {shorten(text)}"


def _quote_hint(raw, section, key):
    """How to write the raw text of a string key as a quoted string."""
    quoted = repr(raw.values[section][key])
    if (section, key) in raw.overridden:
        return f"; text must be quoted: --set \"{section}.{key}={shorten(quoted)}\""
    return f"; text must be quoted: {key} = {shorten(quoted)}"


def _value(raw, section, key, f):
    """The checked value of one key of `raw`; ConfigError naming it otherwise."""
    text = raw.values[section][key]
    hint = _quote_hint(raw, section, key) if f.metadata["kind"] == "str" else ""
    try:
        value = evaluate_raw(section, key, text)
    except UnsafeValueError as exc:
        raise ConfigError(f"{_where(raw, section, key)}: refused, {exc}; write a literal value") from None
    except ValueError as exc:
        raise ConfigError(f"{_where(raw, section, key)}: {exc}" + (hint if str(exc) != "empty value" else "")) from None
    try:
        return coerce(value, f.metadata)
    except TypeError as exc:
        raise ConfigError(f"{_where(raw, section, key)}: {exc}" + hint) from None


def build_config(raw):
    """Evaluate, type-check and validate a RawConfig into a frozen Config."""
    sections = {}
    for section, cls in SECTIONS.items():
        given = raw.values.get(section, {})
        kwargs = {}
        for key, f in section_fields(section).items():
            if key in given:
                kwargs[key] = _value(raw, section, key, f)
            elif f.default is dataclasses.MISSING:
                raise ConfigError(f"{raw.source}: missing key [{section}] {key}")
        sections[section] = cls(**kwargs)
    config = Config(**sections)
    validate(config, raw.source)
    return config


def load_config(path, overrides=()):
    """Read, override, evaluate and validate a .cfg file; returns (Config, RawConfig)."""
    raw = with_overrides(read_raw(path), overrides)
    return build_config(raw), raw


def config_to_text(config):
    """Serialise a Config to .cfg text that `build_config` reads back to an equal Config."""
    lines = []
    for section in SECTIONS:
        lines.append(f"[{section}]")
        for key, value in dataclasses.asdict(getattr(config, section)).items():
            if key == "name":
                lines.append(f"{key} = {value}")
            else:
                lines.append(f"{key} = {_literal(value)}")
        lines.append("")
    return "\n".join(lines)


def _literal(value):
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def config_from_dict(data, source="<checkpoint>"):
    """Rebuild a Config from `Config.to_dict()` output (e.g. stored in a checkpoint)."""
    if not isinstance(data, dict) or not all(isinstance(kv, dict) for kv in data.values()):
        raise ConfigError(f"{source}: not a config (expected a dict of sections)")
    values = {}
    for section, kv in data.items():
        values[section] = {k: (str(v) if k == "name" else _literal(_tuplify(v))) for k, v in kv.items()}
    return build_config(RawConfig(source=source, text="", values=values))


def _tuplify(value):
    if isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], str):
            return tuple(value)
        return tuple(_tuplify(v) for v in value)
    return value


def differing_keys(a, b):
    """Keys (as 'section.key') whose values differ between two Configs."""
    out = []
    da, db = a.to_dict(), b.to_dict()
    for section in da:
        for key in da[section]:
            if da[section][key] != db[section].get(key):
                out.append(f"{section}.{key}")
    return out

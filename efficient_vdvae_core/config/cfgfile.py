"""The text of a .cfg file: read into raw value strings by section and key, `--set` overrides, rewriting.

A .cfg file is INI: `[section]` header lines, `key = value` lines, and `#` or `;` comment lines. Each
header and each key starts at the beginning of its line and each value fits on its line: an indented
line, which INI readers take as the continuation of the value above, is refused on its line. A UTF-8
byte order mark at the start is ignored. Nothing is evaluated here (see `values`).
"""
import difflib
import re
import unicodedata
from dataclasses import dataclass, field

from efficient_vdvae_core.config.rules import shorten
from efficient_vdvae_core.config.schema import SECTIONS, section_fields
from efficient_vdvae_core.errors import ConfigError

BOM = "\ufeff"
_SECTION_LINE = re.compile(r"\[(?P<name>[^\]]*)\]\s*(?:[#;].*)?")
_KEY_LINE = re.compile(r"(?P<key>[^=\s\[#;][^=]*?)\s*=(?P<value>.*)")
_LOOKS_LIKE_KEY = re.compile(r"\w+\s*=")


@dataclass
class RawConfig:
    """The raw value strings of a .cfg file, by section and key, with the file's text."""
    source: str
    text: str
    values: dict  # section -> {key -> raw string}
    overridden: dict = field(default_factory=dict)  # (section, key) -> the `--set` that gave its value

    def get(self, section, key):
        return self.values.get(section, {}).get(key)


def read_raw(path):
    """Read a .cfg file into a RawConfig without evaluating anything."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (pass --config PATH)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text config file (byte {exc.start} is not UTF-8)") from None
    return parse_raw_text(text, str(path))


def _classify(line):
    """('blank' | 'section' | 'key' | 'indented' | 'other', section or key name, raw value) of one line."""
    stripped = line.strip()
    if not stripped or stripped.startswith(("#", ";")):
        return "blank", None, None
    if line[0].isspace():
        return "indented", None, None
    match = _SECTION_LINE.fullmatch(stripped)
    if match:
        return "section", match["name"].strip(), None
    match = _KEY_LINE.fullmatch(stripped)
    if match:
        return "key", match["key"], match["value"].strip()
    return "other", None, None


def parse_raw_text(text, source):
    """Parse INI text into a RawConfig, refusing unknown sections and keys; errors name the line."""
    if text.startswith(BOM):
        text = text[len(BOM):]
    values, section = {}, None
    for lineno, line in enumerate(text.split("\n"), 1):
        kind, name, raw = _classify(line)
        at = f"{source}: line {lineno}"
        if kind == "indented":
            content = shorten(repr(line.strip()))
            if _LOOKS_LIKE_KEY.match(line.strip()) or line.strip().startswith("["):
                indent = "a tab" if line[0] == "\t" else "whitespace"
                raise ConfigError(f"{at}: {content} starts with {indent}; start it at the beginning of the line "
                                  "(an indented line would continue the value above it)")
            raise ConfigError(f"{at}: {content} is indented, so it would continue the value of a key above; "
                              "write each value on one line, from the beginning of the line")
        if kind == "other":
            raise ConfigError(f"{at}: cannot parse {shorten(repr(line.strip()))} (expected 'key = value')")
        if kind == "section":
            if name in values:
                raise ConfigError(f"{at}: section [{name}] appears twice")
            if name not in SECTIONS:
                raise ConfigError(f"{at}: unknown section [{name}] (known: {', '.join(SECTIONS)})")
            section = name
            values[section] = {}
        elif kind == "key":
            if section is None:
                raise ConfigError(f"{at}: a key appears before any [section] header")
            if name in values[section]:
                raise ConfigError(f"{at}: key '{name}' appears twice in [{section}]")
            if name not in section_fields(section):
                raise ConfigError(f"{at}: {_unknown_key(section, name)}")
            values[section][name] = raw
    return RawConfig(source=source, text=text, values=values)


def _unknown_key(section, key):
    match = difflib.get_close_matches(key, list(section_fields(section)), n=1)
    return f"unknown key [{section}] {key}" + (f" (did you mean {match[0]}?)" if match else "")


def parse_override(text):
    """Split 'section.key=value' into (section, key, raw value)."""
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise ConfigError(f"--set {shorten(repr(text))}: contains a line break or another control character; "
                          "write it on one line")
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {shorten(text)}: expected section.key=value, e.g. --set train.batch_size=8")
    lhs, raw = text.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"--set {shorten(text)}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
    if key not in section_fields(section):
        raise ConfigError(f"--set {shorten(text)}: {_unknown_key(section, key)}")
    if not raw.strip():
        raise ConfigError(f"--set {text}: empty value; write the value after '=', e.g. --set {section}.{key}=...")
    return section, key, raw.strip()


def with_overrides(raw, overrides):
    """Return a RawConfig with `--set` overrides (list of 'section.key=value') applied."""
    values = {s: dict(kv) for s, kv in raw.values.items()}
    overridden = dict(raw.overridden)
    for text in overrides:
        section, key, value = parse_override(text)
        values.setdefault(section, {})[key] = value
        overridden[(section, key)] = text
    return RawConfig(source=raw.source, text=render_text(raw.text, values), values=values, overridden=overridden)


def render_text(text, values):
    """Rewrite `text` so that each key holds its raw value from `values` (comments kept)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    out, section, seen = [], None, set()
    section_end = {}
    for line in lines:
        kind, name, _ = _classify(line)
        if kind == "section":
            section = name
        elif kind == "key" and section and name in values.get(section, {}):
            line = f"{name} = {values[section][name]}"
            seen.add((section, name))
        out.append(line)
        if section:
            section_end[section] = len(out)
    inserts = {}
    for sec, kv in values.items():
        for key, raw in kv.items():
            if (sec, key) not in seen:
                inserts.setdefault(sec, []).append(f"{key} = {raw}")
    for sec in sorted(inserts, key=lambda s: -section_end.get(s, len(out) + 1)):
        if sec in section_end:
            out[section_end[sec]:section_end[sec]] = inserts[sec]
        else:
            out += ["", f"[{sec}]"] + inserts[sec]
    return "\n".join(out) + "\n"

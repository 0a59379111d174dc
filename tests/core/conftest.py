"""Helpers shared by the core tests: the repository's config files and edited copies of them."""
from pathlib import Path

import pytest

from efficient_vdvae_core.config import ConfigError, load_config, render_text

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs"


@pytest.fixture
def write_cfg(tmp_path):
    """Write an edited copy of an egs config to tmp_path and return its path.

    `values` maps 'section.key' to a raw value (replaced in place, or added to the section);
    `drop` removes keys; `append` adds raw text at the end.
    """
    def write(values=None, base="tiny", drop=(), append="", filename="given.cfg"):
        text = (EGS / f"{base}.cfg").read_text(encoding="utf-8")
        if drop:
            text = "\n".join(line for line in text.splitlines()
                             if line.split("=", 1)[0].strip() not in drop or line.startswith("#")) + "\n"
        if values:
            nested = {}
            for dotted, raw in values.items():
                section, key = dotted.split(".", 1)
                nested.setdefault(section, {})[key] = raw
            text = render_text(text, nested)
        path = tmp_path / filename
        path.write_text(text + append, encoding="utf-8")
        return path
    return write


def assert_one_line_error(path, *needles, overrides=()):
    """Loading `path` raises one ConfigError line that names the file and holds every needle; returns it."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message

"""The Docker build context is build/ alone (`cd build && docker build -t efficient_vdvae_image .`), and its
requirements.txt pins exactly the packages of pyproject.toml."""
import re

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

BUILD = REPO / "build"


def test_every_copy_source_is_in_the_build_folder():
    instructions = re.findall(r"^(COPY|ADD)\s+(.+)$", (BUILD / "Dockerfile").read_text(), flags=re.MULTILINE)
    assert instructions
    for _, args in instructions:
        *sources, _ = [a for a in args.split() if not a.startswith("--")]
        for source in sources:
            assert (BUILD / source).exists(), f"COPY {source}: not in the build context {BUILD}"
            assert ".." not in source.split("/")


def test_requirements_pin_the_packages_of_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = project["dependencies"] + [p for extra in ("torch", "jax", "test")
                                      for p in project["optional-dependencies"][extra]]
    lines = [line.strip() for line in (BUILD / "requirements.txt").read_text().splitlines()]
    assert [line for line in lines if line and not line.startswith("#")] == pins
    assert all("==" in pin for pin in pins)

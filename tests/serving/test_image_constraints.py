"""The image installs pinned dependency versions (image-constraints.txt), and the pins still fit.

A rebuild of the same commit must install what was tested, so the builder stage resolves against the
constraints file; these tests keep that file complete (every package the service needs is pinned) and
consistent with pyproject.toml's ranges, so that regenerating it is the only way versions move.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "image-constraints.txt"
IMAGE_EXTRAS = ("redis", "postgres")


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        requirement = Requirement(text)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{text}: a constraint pins one version"
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{name} is pinned twice"
        found[name] = specifier.version
    return found


def build_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]


def test_the_builder_stage_resolves_against_the_constraints_it_copies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "image-constraints.txt ./" in dockerfile
    assert "pip wheel --constraint image-constraints.txt " in dockerfile
    assert "!image-constraints.txt" in (ROOT / ".dockerignore").read_text().splitlines()


def test_every_requirement_of_the_image_is_pinned_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"]]
    for extra in IMAGE_EXTRAS:
        wanted += project["optional-dependencies"][extra]
    pinned = pins()
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not pinned in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"{name}=={pinned[name]} is outside pyproject.toml's {requirement.specifier}"
        )


@pytest.mark.integration
def test_the_pins_resolve_together_and_leave_nothing_unpinned(tmp_path: Path) -> None:
    """pip's own resolver, as the builder stage runs it: the pins must agree with each other, and every
    package it would install must be one of them (an unpinned one would float between builds)."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run",
            "--ignore-installed", "--quiet", "--report", str(report), "--constraint", str(CONSTRAINTS),
            f".[{','.join(IMAGE_EXTRAS)}]",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    installed = {
        canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    installed.pop("b12-iron-cds")
    build_only = {canonicalize_name(Requirement(text).name) for text in build_requirements()}
    assert installed == {name: version for name, version in pins().items() if name not in build_only}


def test_the_build_backend_of_the_service_wheel_is_pinned_and_installed_at_its_pin() -> None:
    """pip's isolated build would fetch the newest setuptools that pyproject.toml allows; the builder
    installs the pinned one and builds the service's wheel with it, without isolation."""
    pinned = pins()
    for text in build_requirements():
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"the build requirement {requirement.name} is not pinned in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pinned[name])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --constraint image-constraints.txt setuptools" in dockerfile
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /wheels ." in dockerfile

"""The project's Dockerfile read as instructions, so that tests check the image as it is written.

The image tests (tests/serving/test_image_runtime.py) run its runtime stage without Docker, and the
deploy/ tests hold the Kubernetes manifests to its user, port, environment and entrypoint; both read it here.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"

Instructions = list[tuple[str, str]]


def stages(text: str) -> list[Instructions]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    found: list[Instructions] = [[]]
    for line in joined.splitlines():
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            found.append([])
        found[-1].append((word.upper(), rest.strip()))
    return found[1:]


def runtime_stage() -> Instructions:
    """The last stage: what the image runs."""
    return stages(DOCKERFILE.read_text())[-1]


def image_env(instructions: Instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(rest))
    return env


def exec_form(instructions: Instructions, word: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT / CMD; a shell form would not get SIGTERM as PID 1."""
    rest = next(rest for found, rest in instructions if found == word)
    return json.loads(rest)


def healthcheck(instructions: Instructions) -> list[str]:
    rest = next(rest for found, rest in instructions if found == "HEALTHCHECK")
    return json.loads(rest[rest.index("CMD") + len("CMD") :].strip())

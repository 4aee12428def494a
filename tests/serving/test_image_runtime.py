"""The Dockerfile's runtime stage, run without Docker (this machine has no engine to build the image).

What the image promises and a source checkout cannot show: the service runs from the built wheel (its
schemas and data shipped in it, nothing read from the source tree), with the image's own environment,
entrypoint and health check, and writes nothing outside its data volume and /tmp, so
`docker run --read-only --tmpfs /tmp -v data:/var/lib/cds-service` works. The Dockerfile is read here,
not restated, so a change to its ENV, ENTRYPOINT, CMD or HEALTHCHECK is tested as written.

The test runs as whatever user CI has; root ignores file modes, so "writes nothing" is checked by
comparing the install and working directories before and after, not by relying on permissions.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.auth.auth_support import BASE_URL, Signer, ec_p384_key, write_clients
from tests.support.dockerfile import DOCKERFILE, exec_form, healthcheck, image_env, stages
from tests.support.processes import free_port, stop, wait_until_answers
from tests.support.served import HOOKS_NOW, clean_env, hook_example

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
IMAGE_VOLUME = "/var/lib/cds-service"
IMAGE_PORT = "8080"


def _copy_build_context(builder: list[tuple[str, str]], destination: Path) -> None:
    """What the builder stage's COPY instructions put in its WORKDIR, copied from the checkout."""
    destination.mkdir()
    copies = [shlex.split(rest) for word, rest in builder if word == "COPY"]
    assert copies, "the builder stage copies nothing"
    for *sources, target in copies:
        for name in sources:
            origin = ROOT / name
            inside = destination / target / origin.name if target.endswith("/") else destination / target
            if origin.is_dir():
                shutil.copytree(origin, inside, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                inside.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, inside)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    found = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns)
    return found


def _set_writable(root: Path, writable: bool) -> None:
    """Write permission off everywhere under ``root`` (the read-only image), or back on for the owner."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            mode = path.stat().st_mode
            write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
            path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


class Image:
    """The runtime stage laid out on this machine: the wheel installed into its own directory, a data
    volume, a /tmp, and an empty working directory standing for the rest of the (read-only) image."""

    def __init__(self, base: Path) -> None:
        builder, *_, runtime = stages(DOCKERFILE.read_text())
        self.instructions = runtime
        self.site = base / "site-packages"
        self.volume = base / "volume"
        self.tmp = base / "tmp"
        self.cwd = base / "image-root"
        for folder in (self.volume, self.tmp, self.cwd):
            folder.mkdir()
        wheels = base / "wheels"
        # As the builder stage does: from what it copies only, the build backend pyproject.toml asks
        # for fetched from the index (and nothing written into the checkout).
        source = base / "src"
        _copy_build_context(builder, source)
        self._pip("wheel", "--no-deps", "--wheel-dir", str(wheels), str(source))
        (wheel,) = wheels.glob("b12_iron_cds-*.whl")
        self.wheel = wheel
        self._pip("install", "--no-deps", "--no-index", "--target", str(self.site), str(wheel))

    @staticmethod
    def _pip(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    def in_image(self, value: str) -> str:
        """An image path mapped onto this machine's stand-ins for the volume and /tmp."""
        if value.startswith(IMAGE_VOLUME):
            return str(self.volume) + value[len(IMAGE_VOLUME) :]
        if value.startswith("/tmp/"):
            return str(self.tmp) + value[len("/tmp") :]
        return value

    def env(self, **settings: str) -> dict[str, str]:
        """The image's ENV (paths mapped), HOME as the image user's, the installed wheel first on the path.

        The dependencies come from this interpreter's site-packages, as the image has them from its
        wheels; only the service itself must come from the wheel, which
        `test_the_service_imports_from_the_wheel_not_the_checkout` checks."""
        image = {key: self.in_image(value) for key, value in image_env(self.instructions).items()}
        return clean_env(
            **image,
            HOME=str(self.volume),
            TMPDIR=str(self.tmp),
            PYTHONPATH=str(self.site),
            PATH=f"{self.site / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            **settings,
        )

    def command(self, port: int) -> list[str]:
        """ENTRYPOINT + CMD, listening on loopback and a free port instead of 0.0.0.0:8080."""
        argv = exec_form(self.instructions, "ENTRYPOINT") + exec_form(self.instructions, "CMD")
        argv = ["127.0.0.1" if arg == "0.0.0.0" else arg for arg in argv]  # noqa: S104 (replaced)
        argv = [str(port) if arg == IMAGE_PORT else arg for arg in argv]
        return [str(self.site / "bin" / argv[0]), *argv[1:]]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    built = Image(tmp_path_factory.mktemp("image"))
    yield built
    _set_writable(built.site, True)
    _set_writable(built.cwd, True)


def test_the_wheel_ships_the_schemas_and_the_command(image: Image) -> None:
    names = set(zipfile.ZipFile(image.wheel).namelist())
    schemas = {p.relative_to(ROOT).as_posix() for p in (ROOT / "cds_service/protocol/schemas").glob("*.json")}
    assert schemas
    assert schemas <= names, f"missing from the wheel: {sorted(schemas - names)}"
    assert (image.site / "bin" / "cds-service").is_file()


def test_the_service_imports_from_the_wheel_not_the_checkout(image: Image) -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import cds_service; print(cds_service.__file__)"],
        env=image.env(),
        cwd=image.cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found).is_relative_to(image.site), found


def test_the_image_serves_and_writes_only_to_its_volume_and_tmp(image: Image, tmp_path: Path) -> None:
    """Production settings (client JWTs required, so the replay store is used too), as the Dockerfile's
    `docker run --read-only` example starts it, with the clients file mounted from outside."""
    signer = Signer(iss="https://ehr.example.test", kid="image-test", alg="ES384", private_key=ec_p384_key())
    clients = write_clients(tmp_path, [{"iss": signer.iss, "jwks": {"keys": [signer.public_jwk()]}}])
    _set_writable(image.site, False)
    _set_writable(image.cwd, False)
    before = {"site": _snapshot(image.site), "cwd": _snapshot(image.cwd)}
    port = free_port()
    log_path = image.tmp / "serve.log"
    env = image.env(CDS_CLIENTS=str(clients), CDS_PUBLIC_BASE_URL=BASE_URL, CDS_NOW=HOOKS_NOW)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            image.command(port),
            cwd=image.cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    view = "/cds-services/b12-iron-patient-view"

    def signed(path: str, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or signer.token(path)}"}

    try:
        wait_until_answers(
            f"{base}/healthz", process, name="the image's entrypoint", timeout_s=60, log=log_path
        )
        program, *args = healthcheck(image.instructions)
        assert program == "python", "the health check is expected to ask the image's Python"
        # Docker puts the client's proxy settings into every container's environment; the check must
        # still go straight to the service (here the "proxy" is a loopback port nothing listens on).
        dead_proxy = f"http://127.0.0.1:{free_port()}"
        proxied = {"http_proxy": dead_proxy, "HTTP_PROXY": dead_proxy, "no_proxy": "", "NO_PROXY": ""}
        for check_env in (env, env | proxied):
            health = subprocess.run(
                [sys.executable, *(arg.replace(f":{IMAGE_PORT}/", f":{port}/") for arg in args)],
                env=check_env,
                cwd=image.cwd,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert health.returncode == 0, health.stderr
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        token = signer.token(view)
        answer = requests.post(
            base + view, json=hook_example("patient-view.json"), headers=signed(view, token), timeout=30
        )
        assert answer.status_code == 200, answer.text
        (card,) = answer.json()["cards"]
        replayed = requests.post(
            base + view, json=hook_example("patient-view.json"), headers=signed(view, token), timeout=30
        )
        assert replayed.status_code == 401
        feedback_path = f"{view}/feedback"
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": card["overrideReasons"][0]},
            "outcomeTimestamp": "2026-01-15T09:05:00Z",
        }
        feedback = requests.post(
            base + feedback_path, json={"feedback": [item]}, headers=signed(feedback_path), timeout=10
        )
        assert feedback.json() == {"received": 1, "stored": 1}
        assert "cds_hook_request_duration_seconds" in requests.get(f"{base}/metrics", timeout=10).text
    finally:
        stop(process, grace_s=40)
    assert process.returncode == 0, log_path.read_text(errors="replace")[-3000:]
    assert {"site": _snapshot(image.site), "cwd": _snapshot(image.cwd)} == before
    kept = {path.name for path in image.volume.iterdir()}
    assert {Path(env["CDS_FEEDBACK_DB"]).name, Path(env["CDS_STATE_DB"]).name} <= kept
    assert Path(env["PROMETHEUS_MULTIPROC_DIR"]).is_relative_to(image.tmp)

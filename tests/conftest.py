"""The fixtures: the stack's environment (app -> client), and the image (image -> containers).
A test that uses the image is marked `container`; `pytest -m "not container"` runs the rest."""

import os
import subprocess
from pathlib import Path

import pytest

from app import create_app
from deploy.settings import VARIABLES
from tests import figures
from tests.containers import ContainerFactory, docker_available, user_owned_folder

ROOT = Path(__file__).resolve().parent.parent
# pip reads these; forwarded to `docker build` so the image installs from the same mirror.
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")
# The example's own variables (app/config.py): scrubbed like the stack's.
EXAMPLE_VARIABLES = ("JOB_MAX_SECONDS", "APP_VERSION")


@pytest.fixture(autouse=True)
def stack_environment(monkeypatch, tmp_path):
    """The stack's variables from the developer's shell never leak into a test; the image's
    folders are temporary ones, and the example's bounds are low so that tests stay short."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    for name in [variable.name for variable in VARIABLES] + list(EXAMPLE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    for name in ("STACK_LOG_DIR", "STACK_RUN_DIR", "STACK_DATA_DIR"):
        folder = tmp_path / name.lower()
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    for program in ("nginx", "gunicorn", "app", "jobs"):  # as the entrypoint makes them
        (tmp_path / "stack_log_dir" / program).mkdir()
    monkeypatch.setenv("JOB_MAX_SECONDS", "5")
    monkeypatch.setenv("BACKGROUND_TASKS_MAX", "4")


@pytest.fixture
def app():
    """The example app, made as gunicorn makes it, from the test's environment."""
    return create_app()


@pytest.fixture
def client(app):
    """Flask's test client for the app."""
    return app.test_client()


def pytest_collection_modifyitems(items):
    for item in items:
        if "image" in item.fixturenames:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def image():
    """The image, built once from this checkout (or STACK_IMAGE, if given, as it is)."""
    if not docker_available():
        message = "no Docker engine answers `docker info`"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: the container tests must run in CI")
        pytest.skip(message)
    if os.environ.get("STACK_IMAGE"):
        return os.environ["STACK_IMAGE"]
    return build_image("flask-stack:test", ROOT)


def build_image(tag: str, context: Path, *build_args: str) -> str:
    """`docker build` of `context`, with the mirror's variables passed on; fails with its output."""
    mirror = [f"--build-arg={name}={os.environ[name]}" for name in PIP_BUILD_ARGS if name in os.environ]
    # Host networking lets the build reach a mirror or wheelhouse served on the host's loopback.
    command = ["docker", "build", "--network=host", *mirror, *build_args, "-t", tag, str(context)]
    build = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if build.returncode != 0:
        pytest.fail(f"docker build of {context} failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
    return tag


@pytest.fixture
def containers(image, request):
    """Starts containers of the image; prints their logs if the test failed; removes them."""
    factory = ContainerFactory(image)
    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    factory.remove_all(print_logs=failed)


@pytest.fixture
def log_dir(tmp_path):
    """A log folder owned by a non-root user, as on a developer's machine (uid 1000 under root)."""
    return user_owned_folder(tmp_path / "logs")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_terminal_summary(terminalreporter):
    """The reliability suite's figures (tests/test_reliability.py), as a table, after the run."""
    if figures.ROWS:
        terminalreporter.write_sep("-", "reliability figures")
        terminalreporter.write_line(figures.table())

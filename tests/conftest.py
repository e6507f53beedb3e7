import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from app import create_app
from deploy.settings import VARIABLES, Settings
from tests import figures
from tests.containers import ContainerFactory, docker_available, user_owned_folder

ROOT = Path(__file__).resolve().parent.parent
# pip reads these; forwarded to `docker build` so the image installs from the same mirror.
PIP_BUILD_ARGS = ("PIP_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX")


@pytest.fixture(autouse=True)
def scrub_stack_environment(monkeypatch):
    """The stack's variables from the developer's shell never leak into a test."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable.name, raising=False)


@pytest.fixture
def settings(tmp_path):
    """The defaults, with a low job bound so that tests stay short and a job queue in tmp_path."""
    return dataclasses.replace(Settings.from_env({}), job_max_seconds=5, background_tasks_max=4,
                               job_database=str(tmp_path / "jobs.db"))


@pytest.fixture
def app(settings):
    """The example app, as gunicorn would load it, with the test settings."""
    return create_app(settings)


@pytest.fixture
def client(app):
    """Flask's test client for the app."""
    return app.test_client()


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
    tag = "flask-stack:test"
    build_args = [f"--build-arg={name}={os.environ[name]}" for name in PIP_BUILD_ARGS if name in os.environ]
    # Host networking lets the build reach a mirror or wheelhouse served on the host's loopback.
    command = ["docker", "build", "--network=host", *build_args, "-t", tag, str(ROOT)]
    build = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if build.returncode != 0:
        pytest.fail(f"docker build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}")
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

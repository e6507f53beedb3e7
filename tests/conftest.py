"""The fixtures: the stack's environment (app -> client), and the image (image -> containers).
A test that uses the image is marked `container`; `pytest -m "not container"` runs the rest."""

import contextlib
import os
import signal
import subprocess
import sys
import uuid

import pytest

from deploy.settings import LOGS, VARIABLES
from tests import figures
from tests.containers import (
    ContainerFactory,
    JobsClient,
    docker,
    docker_available,
    free_port,
    user_owned_folder,
    wait_until,
)
from tests.support import ROOT, build_image, in_ci, redis_image, require_tool

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
    for program in {log.program for log in LOGS}:  # as the entrypoint makes them
        (tmp_path / "stack_log_dir" / program).mkdir()
    monkeypatch.setenv("JOB_MAX_SECONDS", "5")
    monkeypatch.setenv("BACKGROUND_TASKS_MAX", "4")


@pytest.fixture
def app():
    """The example app, made as gunicorn makes it, from the test's environment."""
    from app import create_app  # noqa: PLC0415  (the example only where a test asks for it: app/ may be gone)
    return create_app()


@pytest.fixture
def client(app):
    """Flask's test client for the app."""
    return app.test_client()


@pytest.fixture
def tasks_client():
    """The job API of an app that knows tests/job_tasks.py's tasks (on SQLite, or on the storage
    of `storage_environment` when the test uses it first)."""
    from tests import job_tasks  # noqa: PLC0415  (the example app, imported by the tests that use it)
    return JobsClient.of_flask(job_tasks.create_app().test_client())


@pytest.fixture
def consumer(tmp_path):
    """Starts `python -m deploy.jobs.consumer` with the test's environment (and GRACEFUL_TIMEOUT=1);
    stops them all after the test, killing one that does not stop."""
    started = []

    def start(**environment):
        env = {**os.environ, "GRACEFUL_TIMEOUT": "1", **environment}
        log = open(tmp_path / f"consumer-{len(started)}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "deploy.jobs.consumer"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        process.log_path = log.name
        started.append(process)
        return process

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)  # one the test stalled
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its process workers


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """Debian's redis-server on a free loopback port, for the Redis storage."""
    import redis  # noqa: PLC0415  (the Redis cases only)
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen([require_tool("redis-server", "redis-server"), "--port", str(port), "--bind",
                                "127.0.0.1", "--save", "", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: redis.Redis(port=port).ping(), 10, "redis-server answering")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def storage_environment(request, monkeypatch):
    """The queue's storage for the test: SQLite (the default) or a real Redis, emptied first."""
    if request.param == "redis":
        import redis  # noqa: PLC0415
        url = request.getfixturevalue("redis_server")
        redis.Redis.from_url(url).flushdb()
        monkeypatch.setenv("REDIS_URL", url)
    return request.param


def pytest_collection_modifyitems(items):
    for item in items:
        if "image" in item.fixturenames:
            item.add_marker(pytest.mark.container)


@pytest.fixture(scope="session")
def image():
    """The image, built once from this checkout (or STACK_IMAGE, if given, as it is)."""
    if not docker_available():
        message = "no Docker engine answers `docker info`"
        if in_ci():
            pytest.fail(f"{message}: the container tests must run in CI")
        pytest.skip(message)
    if os.environ.get("STACK_IMAGE"):
        return os.environ["STACK_IMAGE"]
    return build_image("flask-stack:test", ROOT)


@pytest.fixture
def containers(image, request):
    """Starts containers of the image; prints their logs if the test failed; removes them."""
    factory = ContainerFactory(image)
    yield factory
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    factory.remove_all(print_logs=failed)


@pytest.fixture(scope="session")
def ticking_image(image):
    """The image under test with tests/ticking/ticks: scheduled tasks, chosen by JOB_MODULES."""
    return build_image("flask-stack-test-ticking", ROOT / "tests" / "ticking", f"--build-arg=STACK_IMAGE={image}")


@pytest.fixture
def redis_network(image):
    """A Docker network with Debian's redis-server in a container on it, named `redis`."""
    redis = redis_image()
    network = f"flask-stack-test-{uuid.uuid4().hex[:8]}"
    docker("network", "create", network)
    try:
        docker("run", "-d", "--name", f"{network}-redis", "--network", network, "--network-alias", "redis", redis)
        yield network
    finally:
        docker("rm", "-f", f"{network}-redis", check=False)
        # The test's containers may still be on it (the `containers` fixture removes them, with
        # their logs if the test failed): take them off first, or the network stays behind.
        on_it = docker("network", "inspect", "-f", "{{range $id, $_ := .Containers}}{{$id}} {{end}}", network)
        for container in on_it.stdout.split():
            docker("network", "disconnect", "-f", network, container)
        docker("network", "rm", network)


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

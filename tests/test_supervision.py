"""supervisord in the real container: restarts, FATAL exits, bad configuration, graceful stop."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.containers import JobsClient, docker, user_owned_folder, wait_until


def wait_until_replaced(container, pidfile: str, old_pid: int) -> None:
    wait_until(lambda: int(container.exec("cat", pidfile, check=False).stdout or 0) not in (0, old_pid), 20,
               f"{pidfile} naming a new process", container=container, interval=0.2)
    container.wait_until_serving()


@pytest.mark.parametrize("program", ["gunicorn", "nginx"])
def test_a_killed_master_is_restarted(containers, log_dir, program):
    container = containers.start(logs=log_dir)
    pidfile = {"gunicorn": "/run/flask-stack/gunicorn.pid", "nginx": "/run/flask-stack/nginx/nginx.pid"}[program]
    old_pid = container.main_process_pid(pidfile)
    container.exec("sh", "-c", f"kill -9 {old_pid}")  # the shell's kill: the image has no procps
    wait_until_replaced(container, pidfile, old_pid)
    assert container.get("/job1?seconds=0").status == 200
    supervisord_log = (log_dir / "supervisord.log").read_text()
    assert f"exited: {program} (terminated by SIGKILL" in supervisord_log
    # Its orphaned workers were killed too, so the new master could take over the socket.
    assert f"killed what was left of {program}'s process group {old_pid}" in supervisord_log
    assert container.state()["Running"]


@pytest.mark.parametrize("name, value", [
    ("WEB_CONCURRENCY", "abc"),
    ("TRUSTED_PROXIES", "load-balancer"),
    ("LOG_LEVEL", "chatty"),
])
def test_a_bad_variable_stops_the_container_at_once_naming_it(containers, name, value):
    container = containers.start(env={name: value}, wait=False)
    assert container.wait_for_exit(deadline=20) == 2
    assert f"configuration error: {name}='{value}' is not valid: expected" in container.logs()


def test_an_app_that_cannot_load_makes_the_container_exit_non_zero(containers, log_dir):
    # Neither gunicorn (APP_MODULE) nor the consumer (JOB_MODULES follows it) can import it.
    container = containers.start(env={"APP_MODULE": "no_such_module:app"}, logs=log_dir, wait=False)
    assert container.wait_for_exit(deadline=90) == 1
    assert re.search(r"(gunicorn|jobs) entered FATAL", container.logs())
    assert "No module named 'no_such_module'" in (log_dir / "gunicorn/error.log").read_text()
    assert "JOB_MODULES: cannot import 'no_such_module'" in (log_dir / "jobs/consumer.log").read_text()


def test_docker_stop_finishes_the_request_in_flight_and_exits_0(containers):
    container = containers.start()
    with ThreadPoolExecutor(max_workers=1) as pool:
        in_flight = pool.submit(container.get, "/job1?seconds=3")
        time.sleep(1)  # the request is now waiting inside gunicorn
        started = time.monotonic()
        docker("stop", container.id, timeout=60)
        stop_took = time.monotonic() - started
        response = in_flight.result(timeout=10)
    assert (response.status, response.json()) == (200, {"task": "job1", "seconds": 3.0})
    assert container.state()["ExitCode"] == 0
    assert stop_took < 10, f"docker stop took {stop_took:.1f} s: Docker kills at 10 s"


def test_a_draining_container_is_not_ready_but_serves_until_drain_seconds_pass(containers):
    container = containers.start(env={"DRAIN_SECONDS": "4"})
    assert container.get("/readyz").status == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        started = time.monotonic()
        stopping = pool.submit(docker, "stop", "-t", "30", container.id, timeout=60)
        wait_until(lambda: container.get("/readyz").status == 503, 3, "/readyz answering 503 at once")
        assert container.get("/readyz").json()["failures"]["draining"].startswith("the container is stopping")
        served_while_draining = 0
        while time.monotonic() - started < 3:
            assert container.get("/").status == 200  # still serving every request
            served_while_draining += 1
        stopping.result(timeout=60)
        took = time.monotonic() - started
    assert container.state()["ExitCode"] == 0
    assert 4 <= took < 4 + 10, f"docker stop took {took:.1f} s with DRAIN_SECONDS=4"
    assert served_while_draining > 10
    assert "drain: told to stop" in container.logs()


def test_the_stack_runs_on_a_read_only_root(containers, log_dir, tmp_path):
    data = user_owned_folder(tmp_path / "data")
    container = containers.start("--read-only", "--tmpfs", "/run/flask-stack", "--tmpfs", "/tmp",
                                 "-v", f"{data}:/var/lib/app", logs=log_dir)
    container.wait_until_healthy()
    jobs = JobsClient.over_http(container.port)
    assert jobs.wait_for_status(jobs.submit("job1", seconds=0)["id"], container=container)["status"] == "done"
    assert container.get("/job?seconds=0").status == 202
    container.exec("rotate-logs")
    container.exec("reload")
    assert container.get("/").status == 200
    assert container.exec("touch", "/srv/new-file", check=False).returncode != 0  # the root is read-only
    assert (data / "jobs.db").exists() and (data / "instance").is_dir()
    assert (log_dir / "nginx/access.log.1").exists()

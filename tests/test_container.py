"""The image from outside: real containers running nginx, gunicorn and supervisord, real HTTP."""

import ipaddress
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.containers import docker, wait_for_line, wait_until

IMAGE_USER_UID = 10001


def test_endpoints_through_nginx(containers):
    container = containers.start()

    health = container.get("/healthz")
    assert (health.status, health.json()) == (200, {"status": "ok"})
    assert health.headers["Content-Type"] == "application/json"
    assert health.headers["Server"] == "nginx"  # no version
    assert re.fullmatch(r"[0-9a-f]{32}", health.headers["X-Request-ID"])
    assert container.get("/readyz").json() == {"status": "ready"}
    assert container.get("/").json() == {"service": "flask-stack example", "version": "dev"}

    job1 = container.get("/job1?seconds=0.2")
    assert (job1.status, job1.json()) == (200, {"task": "job1", "seconds": 0.2})

    job2 = container.get("/job2?arg1=hello&arg2=123&seconds=0.1")
    assert job2.json() == {"task": "job2", "arg1": "hello", "arg2": "123", "seconds": 0.1}

    started = time.monotonic()
    background = container.get("/job?seconds=2")
    assert (background.status, background.json()) == (202, {"started": ["job1", "job2"]})
    assert time.monotonic() - started < 1

    ip = container.get("/ip").json()
    assert set(ip) == {"client_ip", "forwarded_for", "host_ip"}
    ipaddress.ip_address(ip["host_ip"])


def test_bad_input_is_a_json_4xx_never_a_5xx(containers):
    container = containers.start()
    for path in ("/job1?seconds=abc", "/job1?seconds=-1", "/job1?seconds=61", "/job1?seconds=nan",
                 "/job2?arg1=a&arg2=b&seconds=1e9", "/job2?arg1=a", "/job?seconds=inf"):
        response = container.get(path)
        assert response.status == 400, path
        assert response.json()["error"] == "Bad Request", path
    assert container.get("/no/such/page").status == 404
    wrong_method = container.get("/healthz", method="DELETE")
    assert (wrong_method.status, wrong_method.json()["error"]) == (405, "Method Not Allowed")


def test_client_cannot_forge_its_address(containers):
    container = containers.start()
    honest = container.get("/ip").json()
    spoofed = container.get("/ip", headers={"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6"}).json()
    assert honest["client_ip"] != "6.6.6.6"
    assert spoofed["client_ip"] == honest["client_ip"]
    # nginx appended the real peer to the chain the client sent.
    assert spoofed["forwarded_for"] == ["6.6.6.6", honest["client_ip"]]


def test_trusted_proxies_let_a_load_balancer_name_the_client(containers):
    # From the container's side the test is the peer: make it the trusted load balancer.
    peer = containers.start().get("/ip").json()["client_ip"]
    container = containers.start(env={"TRUSTED_PROXIES": peer})
    # The load balancer appended the real client (203.0.113.7) to what its client sent.
    seen = container.get("/ip", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}).json()
    assert seen["client_ip"] == "203.0.113.7"


def owners(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_uid for path in [folder, *folder.rglob("*")]}


def test_logs_land_on_the_volume_owned_by_the_folder_owner(containers, log_dir):
    container = containers.start(logs=log_dir)
    response = container.get("/ip", headers={"X-Forwarded-For": "6.6.6.6"})
    request_id, client_ip = response.headers["X-Request-ID"], response.json()["client_ip"]
    container.get("/job?seconds=0.1")

    nginx_line = wait_for_line(log_dir / "nginx/access.log", request_id)
    assert nginx_line.startswith(f"{client_ip} ")  # the peer
    assert 'xff="6.6.6.6"' in nginx_line and '"GET /ip HTTP/1.1" 200' in nginx_line
    assert re.search(r"urt=\d+\.\d+", nginx_line)  # upstream time
    gunicorn_line = wait_for_line(log_dir / "gunicorn/access.log", request_id)
    assert gunicorn_line.startswith(f"{client_ip} ")  # the client as the app sees it
    wait_for_line(log_dir / "app/app.log", "background task job1 started")
    wait_for_line(log_dir / "app/app.log", "background task job2 finished")
    wait_for_line(log_dir / "gunicorn/error.log", "Booting worker")
    wait_for_line(log_dir / "supervisord.log", "spawned: 'nginx'")
    assert (log_dir / "nginx/error.log").exists()

    owner = log_dir.stat().st_uid
    assert owner != 0
    assert set(owners(log_dir).values()) == {owner}, owners(log_dir)


def processes(container) -> list[tuple[int, str]]:
    rows = docker("top", container.id, "-o", "uid,pid,args").stdout.splitlines()[1:]
    return [(int(uid), args) for uid, _, args in (row.split(None, 2) for row in rows)]


def listening_tcp_ports(container) -> set[int]:
    return {port for port, state in container.tcp_sockets() if state == "0A"}


def test_security_defaults(containers):
    # Without Docker's health check here: it comes and goes every 2 s (the next test checks its user).
    container = containers.start("--no-healthcheck")
    # Only nginx (80) and the metrics (9100, published only where the operator chooses) listen
    # on TCP; gunicorn and supervisord's control interface are unix sockets.
    assert listening_tcp_ports(container) == {80, 9100}
    status = container.exec("supervisorctl", "status", check=False).stdout
    # A program is STARTING for its first `startsecs` (gunicorn: 5 s), then RUNNING.
    for program in ("gunicorn", "nginx"):
        assert re.search(rf"{program} +(STARTING|RUNNING)", status), status
    socket_mode = container.exec("stat", "-c", "%a %u", "/run/flask-stack/supervisor.sock").stdout.split()
    assert socket_mode == ["700", str(IMAGE_USER_UID)]

    running = processes(container)
    command_lines = "\n".join(args for _, args in running)
    for program in ("bin/supervisord", "bin/gunicorn", "nginx: master", "nginx: worker"):
        assert program in command_lines
    assert all(uid == IMAGE_USER_UID for uid, _ in running), running


def test_the_health_check_runs_as_the_stack_s_user(containers):
    """Docker runs HEALTHCHECK's command as root (the image has no USER: the entrypoint needs
    root to adopt the log volume's owner); the check itself runs as the stack's user."""
    container = containers.start()
    healthcheck = json.loads(docker("inspect", "-f", "{{json .Config.Healthcheck.Test}}", container.id).stdout)
    assert healthcheck == ["CMD", "healthcheck"]
    assert container.exec("healthcheck").stdout == "GET /healthz: HTTP/1.1 200 OK\n"  # `docker exec` runs as root too
    # What it may read tells who it is: the stack's user and group, and neither of root's.
    group = container.exec("stat", "-c", "%g", "/run/flask-stack/supervisor.sock").stdout.strip()
    denied = "unhealthy: the stack has not started: [Errno 13] Permission denied: '/run/flask-stack/role'"
    for owner, mode, answer in (("root:root", "600", denied), (f"{IMAGE_USER_UID}:root", "600", None),
                                ("root:root", "060", denied), (f"root:{group}", "060", None)):
        container.exec("sh", "-c", f"chown {owner} /run/flask-stack/role && chmod {mode} /run/flask-stack/role")
        check = container.exec("healthcheck", check=False)
        expected = (1, answer) if answer else (0, "GET /healthz: HTTP/1.1 200 OK")
        assert (check.returncode, check.stdout.strip()) == expected, (owner, mode)
    # It becomes the control socket's owner, never root: not through a link in its place either.
    container.exec("sh", "-c", "mv /run/flask-stack/supervisor.sock /run/flask-stack/moved.sock "
                               "&& ln -s /etc/shadow /run/flask-stack/supervisor.sock")
    check = container.exec("healthcheck", check=False)
    assert (check.returncode, check.stdout.strip()) == (1, "unhealthy: /run/flask-stack/supervisor.sock is not "
                                                           "a socket of the stack's user: not checking as root")
    container.exec("rm", "/run/flask-stack/supervisor.sock")
    check = container.exec("healthcheck", check=False)
    assert (check.returncode, check.stdout.strip()) == \
        (1, "unhealthy: the stack is not running in this container (no /run/flask-stack/supervisor.sock)")


def test_runs_with_the_docker_user_option(containers, log_dir):
    owner = f"{log_dir.stat().st_uid}:{log_dir.stat().st_gid}"
    container = containers.start("--user", owner, logs=log_dir)
    assert container.get("/healthz").status == 200
    assert all(uid == log_dir.stat().st_uid for uid, _ in processes(container))
    assert set(owners(log_dir).values()) == {log_dir.stat().st_uid}


def test_a_root_owned_folder_is_given_to_the_image_user(containers, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    if os.getuid() != 0:
        # Only root can make a root-owned folder: let Docker make it, as it does for a
        # `-v` path that does not exist yet.
        folder.rmdir()
    container = containers.start(logs=folder)
    container.get("/healthz")
    wait_for_line(folder / "nginx/access.log", "/healthz")
    assert set(owners(folder).values()) == {IMAGE_USER_UID}


def test_an_unwritable_log_folder_stops_the_container_with_a_message(containers, tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir(mode=0o555)
    try:
        container = containers.start("--user", "12345:12345", logs=folder, wait=False)
        assert container.wait_for_exit(deadline=30) != 0
        assert "/var/log/app is not writable by uid 12345" in container.logs()
    finally:
        folder.chmod(0o755)


def test_hundreds_of_slow_requests_are_served_at_once(containers):
    container = containers.start()
    count = 300
    with ThreadPoolExecutor(max_workers=count) as pool:
        started = time.monotonic()
        statuses = list(pool.map(lambda _: container.get("/job1?seconds=1", timeout=30).status, range(count)))
        elapsed = time.monotonic() - started
    print(f"{count} concurrent 1-s requests through nginx: {elapsed:.2f} s")
    assert statuses == [200] * count
    assert elapsed < 10, (f"{count} concurrent 1-s requests took {elapsed:.2f} s; "
                         f"served one after another they take {count} s")


def test_cpu_threads_bounds_the_os_threads_of_cpu_heavy_requests(containers):
    """CPU_THREADS sizes each worker's pool of OS threads (gunicorn_config's post_worker_init):
    eight CPU-heavy requests at once (in_os_thread) run in two threads, not eight."""
    container = containers.start(env={"WEB_CONCURRENCY": "1", "CPU_THREADS": "2"})
    [worker] = container.children(container.pid_of("gunicorn"))

    def threads() -> int:
        return len(container.exec("ls", f"/proc/{worker}/task").stdout.split())
    idle = peak = threads()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [pool.submit(container.get, "/cpu?rounds=3000000", timeout=60) for _ in range(8)]
        while not all(answer.done() for answer in answers):
            peak = max(peak, threads())
            time.sleep(0.1)
    assert [answer.result().status for answer in answers] == [200] * 8
    assert peak - idle == 2, f"the worker ran {peak - idle} more threads under the load, not CPU_THREADS=2"


def test_docker_marks_the_container_healthy(containers):
    # Web: GET /healthz through nginx. Worker only: supervisord reports the consumer RUNNING.
    web = containers.start()
    worker = containers.start(env={"ROLE": "worker"}, wait=False)
    web.wait_until_healthy()
    worker.wait_until_healthy()


def test_the_health_check_fails_with_its_reason(containers):
    """What Docker's health log shows: the consumer's state in a worker-only container (which
    shares a web container's network here, so nginx answers on its port 80 too: the role
    decides), the answer of a web container whose app is down, the error when nginx is down."""
    web = containers.start("--no-healthcheck")
    worker = containers.start("--no-healthcheck", f"--network=container:{web.id}", publish=False, wait=False,
                              env={"ROLE": "worker", "METRICS_PORT": "0"})
    wait_until(lambda: worker.exec("healthcheck", check=False).returncode == 0, 30, "the worker's check passing")
    # A consumer that crashed is not healthy while supervisord starts it again (supervisorctl's
    # exit status is 0 then), only once it is RUNNING, 3 s later: a crash loop never passes.
    worker.exec("supervisorctl", "signal", "KILL", "jobs")
    # supervisord sees the exit within milliseconds; 2 s is within the 3 s it then starts it for.
    check = wait_until(lambda: (result := worker.exec("healthcheck", check=False)).returncode == 1 and result,
                       2, "the check failing after the kill")
    assert re.match(r"jobs +(STARTING|BACKOFF|EXITED)\b", check.stdout), check.stdout
    wait_until(lambda: worker.exec("healthcheck", check=False).returncode == 0, 30, "the check passing again")
    assert re.match(r"jobs +RUNNING\b", worker.exec("healthcheck").stdout)
    worker.exec("supervisorctl", "stop", "jobs")
    check = worker.exec("healthcheck", check=False)
    assert check.returncode == 1 and re.match(r"jobs +STOPPED", check.stdout), check.stdout
    web_check = "from deploy.healthcheck import web_check; print(web_check())"
    assert worker.exec("python3", "-c", web_check).stdout.strip() == "(True, 'GET /healthz: HTTP/1.1 200 OK')"

    # gunicorn's socket is supervisord's and outlives it: the request waits there for a gunicorn.
    web.exec("supervisorctl", "stop", "gunicorn")
    check = web.exec("healthcheck", check=False)
    assert (check.returncode, check.stdout.strip()) == (1, "unhealthy: GET /healthz: timed out")
    web.exec("supervisorctl", "stop", "nginx")
    check = web.exec("healthcheck", check=False)
    assert (check.returncode, check.stdout.strip()) == (1, "unhealthy: GET /healthz: [Errno 111] Connection refused")
    web.exec("rm", "/run/flask-stack/role")  # deploy/configure.py writes it at the start
    check = web.exec("healthcheck", check=False)
    assert (check.returncode, check.stdout.strip()) == \
        (1, "unhealthy: the stack has not started: [Errno 2] No such file or directory: '/run/flask-stack/role'")

"""A service that is not the example (tests/myservice), built into an image the README's way
("Your own app": a Dockerfile FROM the stack's image), checked from outside through nginx:
every feature of the stack, with none of the example's code."""

import gzip
import json
import re
import shutil
import socket
import subprocess
from datetime import UTC, datetime

import pytest
from simple_websocket import Client as WebSocketClient

from tests.containers import JobsClient, serving_container, user_owned_folder, wait_for_line
from tests.support import ROOT, build_image

MYSERVICE = ROOT / "tests" / "myservice"


@pytest.fixture(scope="module")
def myservice_image(image):
    """tests/myservice/Dockerfile, on the image under test."""
    return build_image("flask-stack-test-myservice", MYSERVICE, f"--build-arg=STACK_IMAGE={image}")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return user_owned_folder(tmp_path_factory.mktemp("myservice") / "logs")


@pytest.fixture(scope="module")
def service(myservice_image, logs, request):
    """One container of myservice, with a data volume, for the cases that leave it serving."""
    yield from serving_container(myservice_image, request, "--tmpfs", "/var/lib/app", logs=logs)


def test_it_becomes_healthy_without_a_health_route_of_its_own(service):
    service.wait_until_healthy()
    assert service.get("/readyz").json() == {"status": "ready"}


def test_its_routes_answer_through_nginx_with_the_real_client(service):
    hello = service.get("/hello", headers={"X-Forwarded-For": "6.6.6.6"})
    assert hello.status == 200
    assert hello.json()["hello"] == "from myservice"
    assert hello.json()["client"] != "6.6.6.6"  # ProxyFix is the stack's: any app has it
    assert re.fullmatch(r"[0-9a-f]{32}", hello.headers["X-Request-ID"])


def test_its_task_is_queued_by_the_web_app_and_run_by_the_consumer(service):
    jobs = JobsClient.over_http(service.port)
    job = jobs.submit("make_report", title="quarterly", pages=3)
    record = jobs.wait_for_status(job["id"], container=service)
    assert record["status"] == "done"
    assert record["result"] == {"report": "QUARTERLY", "pages": 3}


def test_the_prestart_hook_ran_before_the_stack_started(service, logs):
    ran = float(service.get("/prestart").json()["ran"])
    assert "running /docker-entrypoint.d/10-mark.sh" in service.logs()
    started = re.search(r"^(\S+ \S+) INFO supervisord started", (logs / "supervisord.log").read_text(), re.M)[1]
    supervisord_started = datetime.strptime(started, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
    assert ran <= supervisord_started.timestamp()


def test_readyz_turns_503_while_its_readiness_check_fails(service):
    service.exec("run-as-stack", "touch", "/srv/instance/maintenance")
    try:
        response = service.get("/readyz")
        assert response.status == 503
        assert response.json()["failures"] == {"not_in_maintenance": "returned False"}
        assert service.get("/healthz").status == 200
    finally:
        service.exec("run-as-stack", "rm", "/srv/instance/maintenance")
    assert service.get("/readyz").status == 200


def test_a_one_off_command_runs_as_the_stack_user_and_writes_the_instance_folder(service):
    init = service.exec("run-as-stack", "flask", "--app", "myservice", "init-db")
    assert "initialized the database" in init.stdout
    owner = service.exec("stat", "-c", "%u", "/var/lib/app/instance/myservice.sqlite").stdout.strip()
    stack_user = service.exec("stat", "-c", "%u", "/run/flask-stack/supervisor.sock").stdout.strip()
    assert owner == stack_user != "0"
    assert service.get("/greetings").json() == {"greetings": ["hello from the instance folder"]}


def test_its_nginx_include_answers(service):
    response = service.get("/from-nginx")
    assert (response.status, response.json()) == (200, {"from": "an nginx include"})


def test_static_files_come_from_nginx_with_cache_headers(service, logs):
    response = service.get("/static/hello.txt?marker=static")
    assert (response.status, response.body) == (200, b"static hello\n")
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert response.headers["Content-Type"] == "text/plain"
    assert service.get("/static/nope.txt").status == 404
    wait_for_line(logs / "nginx/access.log", "marker=static")
    service.get("/hello?marker=after-static")
    wait_for_line(logs / "gunicorn/access.log", "marker=after-static")  # written in order...
    assert "marker=static" not in (logs / "gunicorn/access.log").read_text()  # ...and gunicorn never saw it


def test_text_answers_are_gzipped_when_asked(service):
    plain = service.get("/big")
    packed = service.get("/big", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(packed.body)) == plain.json()
    assert len(packed.body) < len(plain.body) / 10


def test_a_websocket_echoes_through_nginx(service):
    ws = WebSocketClient.connect(f"ws://127.0.0.1:{service.port}/echo")
    try:
        for message in ("hello", "second frame", "x" * 5000):
            ws.send(message)
            assert ws.receive(timeout=5) == f"echo: {message}"
    finally:
        ws.close()


def test_a_request_without_upgrade_is_not_switched(service):
    # nginx passes Upgrade and Connection only for a request that asks for an upgrade.
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status_line = sock.makefile("rb").readline()
    assert not status_line.startswith(b"HTTP/1.1 101")


def test_behind_a_trusted_proxy_the_app_sees_https_and_from_an_untrusted_one_not(myservice_image, containers):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com", "X-Forwarded-Port": "443"}
    untrusted = containers.start(image=myservice_image)
    peer = untrusted.get("/hello").json()["client"]  # the test's address, as the container sees it
    assert untrusted.get("/go", headers=forwarded).headers["Location"] == f"http://127.0.0.1:{untrusted.port}/hello"
    assert untrusted.get("/where", headers=forwarded).json() == {"url": f"http://127.0.0.1:{untrusted.port}/hello"}

    trusted = containers.start(image=myservice_image, env={"TRUSTED_PROXIES": peer})
    assert trusted.get("/go", headers=forwarded).headers["Location"] == "https://api.example.com/hello"
    # A host list is not one host: that header alone is not believed (the request's Host stays).
    assert trusted.get("/where", headers={**forwarded, "X-Forwarded-Host": "evil.example, api.example.com"}
                       ).json() == {"url": "https://127.0.0.1/hello"}


def test_a_failing_prestart_hook_stops_the_container_naming_it(myservice_image, containers, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "05-ok.sh").write_text("#!/bin/sh\necho fine\n")
    (hooks / "20-migrate.sh").write_text("#!/bin/sh\necho 'migration 42 failed' >&2\nexit 3\n")
    (hooks / "30-never.sh").write_text("#!/bin/sh\ntouch /tmp/never\n")
    (hooks / "15-notes.txt").write_text("not a hook\n")
    for hook in hooks.glob("*.sh"):
        hook.chmod(0o755)
    container = containers.start("-v", f"{hooks}:/docker-entrypoint.d:ro", image=myservice_image, wait=False)
    assert container.wait_for_exit(deadline=30) == 1
    logs = container.logs()
    assert "skipping /docker-entrypoint.d/15-notes.txt: not executable" in logs
    assert "migration 42 failed" in logs
    assert "error: /docker-entrypoint.d/20-migrate.sh failed with exit status 3; the container stops" in logs
    assert "30-never.sh" not in logs


def test_a_secret_key_file_reaches_the_app_and_one_off_commands(myservice_image, containers, tmp_path):
    secret = tmp_path / "secret_key"
    secret.write_text("from-a-secret-file\n")
    secret.chmod(0o644)
    container = containers.start("-v", f"{secret}:/run/secrets/secret_key:ro", image=myservice_image,
                                 env={"SECRET_KEY_FILE": "/run/secrets/secret_key"})
    shown = container.exec("run-as-stack", "python3", "-c", "import os; print(os.environ['SECRET_KEY'])")
    assert shown.stdout.strip() == "from-a-secret-file"
    both = containers.start(image=myservice_image, env={"SECRET_KEY": "a", "SECRET_KEY_FILE": "/x"}, wait=False)
    assert both.wait_for_exit(deadline=20) == 2
    assert "SECRET_KEY and SECRET_KEY_FILE are both set" in both.logs()


def test_the_template_without_the_example_builds_and_serves_another_package(image, containers, tmp_path):
    # The other way of the README: this repository with app/ deleted and a package added
    # beside deploy/, built with the repository's own Dockerfile, nothing else changed.
    template = tmp_path / "template"
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if not name.startswith(("app/", "tests/")) and (ROOT / name).exists():
            (template / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, template / name)
    shutil.copytree(MYSERVICE / "myservice", template / "myservice")
    tag = build_image("flask-stack-test-template", template)
    container = containers.start(image=tag, env={"APP_MODULE": "myservice:create_app()"})
    container.wait_until_healthy()
    assert container.exec("test", "-e", "/srv/app", check=False).returncode == 1  # no example inside
    assert container.get("/hello").json()["hello"] == "from myservice"
    jobs = JobsClient.over_http(container.port)
    record = jobs.wait_for_status(jobs.submit("make_report", title="t")["id"], container=container)
    assert record["status"] == "done"

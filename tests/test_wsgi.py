"""The stack around any app (deploy/wsgi.py): the client's address, scheme and host from one
trusted hop, /healthz and /readyz, and each answer counted in the metrics, for the example and
for apps that know nothing of them."""

import logging
from pathlib import Path

import pytest
from flask import Flask, current_app, redirect, request, url_for
from prometheus_client import REGISTRY
from werkzeug.test import Client

from deploy import readiness_check
from deploy.settings import Settings
from deploy.wsgi import wrap


def served(app) -> Client:
    """A test client of `app` as gunicorn serves it: wrapped by the stack."""
    return Client(wrap(app, Settings.from_env()))


@pytest.fixture
def bare_app():
    """An app that knows nothing of the stack: no health routes, no extension."""
    app = Flask("bare")

    @app.get("/where")
    def where():
        return {"url": url_for("where", _external=True), "client": request.remote_addr}

    @app.get("/go")
    def go():
        return redirect(url_for("where", _external=True))

    return app


# --- The address logic: nginx appends the peer to X-Forwarded-For; the app trusts one hop ---

def test_client_is_the_hop_nginx_added(app):
    response = served(app).get("/ip", environ_base={"REMOTE_ADDR": ""}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.json["client_ip"] == "203.0.113.9"
    assert response.json["forwarded_for"] == ["203.0.113.9"]


def test_a_spoofed_forwarded_for_is_not_believed(app):
    # The client sent "X-Forwarded-For: 6.6.6.6"; nginx appended the real peer.
    response = served(app).get("/ip", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7"})
    assert response.json["client_ip"] == "198.51.100.7"
    assert response.json["forwarded_for"] == ["6.6.6.6", "198.51.100.7"]


def test_without_a_proxy_the_peer_is_the_client(app):
    response = served(app).get("/ip", environ_base={"REMOTE_ADDR": "192.0.2.33"})
    assert response.json["client_ip"] == "192.0.2.33"
    assert response.json["forwarded_for"] == []


def test_any_app_sees_the_scheme_host_and_port_nginx_passes(bare_app):
    headers = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "api.example.com", "X-Forwarded-Port": "443"}
    client = served(bare_app)
    assert client.get("/where", headers=headers).json == {"url": "https://api.example.com/where",
                                                          "client": "198.51.100.7"}
    assert client.get("/go", headers=headers).headers["Location"] == "https://api.example.com/where"


def test_without_forwarded_headers_the_app_sees_the_request_as_it_came(bare_app):
    response = served(bare_app).get("/where", headers={"Host": "localhost:8080"})
    assert response.json["url"] == "http://localhost:8080/where"


# --- Health: the stack answers for any app ----------------------------------------------------

def test_an_app_without_health_routes_is_live_and_ready(bare_app):
    client = served(bare_app)
    healthz, readyz = client.get("/healthz"), client.get("/readyz")
    assert (healthz.status_code, healthz.json) == (200, {"status": "ok"})
    assert (readyz.status_code, readyz.json) == (200, {"status": "ready"})
    assert readyz.headers["Content-Type"] == "application/json"


def test_health_answers_get_and_head_only(bare_app):
    response = served(bare_app).post("/readyz")
    assert (response.status_code, response.headers["Allow"]) == (405, "GET, HEAD")
    assert response.json["error"] == "Method Not Allowed"
    assert served(bare_app).head("/healthz").status_code == 200


def test_the_stack_wins_over_an_app_health_route_and_says_so(bare_app, caplog):
    @bare_app.get("/healthz")
    def own_health():
        return {"mine": True}

    with caplog.at_level(logging.WARNING, "deploy.health"):
        client = served(bare_app)
    assert client.get("/healthz").json == {"status": "ok"}
    assert "the app's own route for /healthz is never called" in caplog.text
    assert client.get("/where").status_code == 200  # the rest of the app is untouched


def test_a_failing_readiness_check_makes_readyz_503_naming_it(bare_app):
    state = {"database": "up"}

    def database_is_up():
        if state["database"] != "up":
            raise ConnectionError("database refused the connection")

    readiness_check(bare_app, database_is_up)
    client = served(bare_app)
    assert client.get("/readyz").status_code == 200
    state["database"] = "down"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json == {"status": "not ready",
                             "failures": {"database_is_up": "ConnectionError: database refused the connection"}}
    assert client.get("/healthz").status_code == 200  # liveness checks no dependency


def test_a_check_returning_false_fails_and_runs_in_the_app_context(bare_app):
    readiness_check(bare_app, lambda: current_app.name != "bare")
    assert served(bare_app).get("/readyz").json["failures"] == {"<lambda>": "returned False"}


def test_an_unreachable_job_store_makes_readyz_503(bare_app, monkeypatch, tmp_path):
    monkeypatch.setenv("JOB_DATABASE", str(tmp_path / "no-such-folder" / "jobs.db"))
    response = served(bare_app).get("/readyz")
    assert response.status_code == 503
    assert "unable to open database file" in response.json["failures"]["job store"]


def test_a_draining_container_is_not_ready_but_live(bare_app):
    client = served(bare_app)
    (Path(Settings.from_env().stack_run_dir) / "draining").touch()
    assert client.get("/readyz").json["failures"]["draining"].startswith("the container is stopping")
    assert client.get("/healthz").status_code == 200


# --- The app's requests in the metrics (METRICS_PORT; the container's Prometheus test reads them too) ---

def answered(**labels) -> float:
    """Requests counted so far with these labels, in this process (the counters outlive a test)."""
    return REGISTRY.get_sample_value("flask_stack_http_requests_total", labels) or 0.0


def timed(**labels) -> float:
    return REGISTRY.get_sample_value("flask_stack_http_request_duration_seconds_count", labels) or 0.0


def test_a_flask_app_s_requests_are_counted_by_method_rule_and_status(bare_app):
    @bare_app.get("/items/<int:number>")
    def item(number):
        return {"number": number} if number else ({"error": "no item 0"}, 404)

    client = served(bare_app)
    where = {"method": "GET", "route": "/items/<int:number>"}
    before = answered(**where, status="200"), answered(**where, status="404"), timed(**where)
    nowhere = {"route": "(no route)", "status": "404"}
    before_nowhere = answered(method="GET", **nowhere), answered(method="OTHER", **nowhere)
    for number in (1, 2, 0):
        client.get(f"/items/{number}")
    client.get("/no-such-page")
    client.open("/no-such-page", method="BREW")  # not a known method: one label, OTHER, for all of them
    assert (answered(**where, status="200"), answered(**where, status="404"), timed(**where)) == \
        (before[0] + 2, before[1] + 1, before[2] + 3)
    assert (answered(method="GET", **nowhere), answered(method="OTHER", **nowhere)) == \
        (before_nowhere[0] + 1, before_nowhere[1] + 1)


def test_an_app_that_is_not_flask_is_counted_under_one_route():
    def plain_app(environ, start_response):
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"made"]

    client = served(plain_app)
    labels = {"method": "POST", "route": "(any)", "status": "201"}
    before = answered(**labels)
    for path in ("/a", "/b/c"):
        assert client.post(path).status_code == 201
    assert answered(**labels) == before + 2

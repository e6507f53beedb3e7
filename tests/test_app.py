"""The example app with Flask's test client: each endpoint and its bad input."""

import ipaddress
import socket
import time

import pytest

from app import create_app, network


def test_index_names_the_service_and_its_version(client, monkeypatch):
    assert client.get("/").json == {"service": "flask-stack example", "version": "dev"}
    monkeypatch.setenv("APP_VERSION", "2.1")
    assert create_app().test_client().get("/").json["version"] == "2.1"


def test_debug_is_off_and_no_secret_key_is_made_up(app, monkeypatch):
    assert app.debug is False
    assert app.config["SECRET_KEY"] is None
    monkeypatch.setenv("SECRET_KEY", "from-the-environment")
    assert create_app().config["SECRET_KEY"] == "from-the-environment"


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", "86401"])
def test_a_bad_job_max_seconds_stops_the_app_naming_it(monkeypatch, raw):
    monkeypatch.setenv("JOB_MAX_SECONDS", raw)
    with pytest.raises(ValueError, match=rf"JOB_MAX_SECONDS='{raw}' is not valid: expected a number greater than 0"):
        create_app()


def test_job1_runs_in_the_request(client):
    started = time.monotonic()
    response = client.get("/job1?seconds=0.2")
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert response.json == {"task": "job1", "seconds": 0.2}


def test_job2_echoes_its_arguments(client):
    response = client.get("/job2?arg1=hello&arg2=123&seconds=0")
    assert response.status_code == 200
    assert response.json == {"task": "job2", "arg1": "hello", "arg2": "123", "seconds": 0.0}


def test_job2_names_missing_arguments(client):
    response = client.get("/job2?arg1=hello&seconds=0")
    assert response.status_code == 400
    assert "arg2" in response.json["message"]


def test_default_seconds_are_capped_by_the_bound():
    # job1 lasts 10 s by default: never longer than JOB_MAX_SECONDS.
    client = create_app({"JOB_MAX_SECONDS": 0.1}).test_client()
    assert client.get("/job1").json == {"task": "job1", "seconds": 0.1}


@pytest.mark.parametrize("seconds", ["abc", "-1", "5.01", "1e9", "nan", "inf", "-inf", "", "0x10", "1 2"])
def test_bad_seconds_is_a_json_400(client, seconds):
    for path in ("/job1", "/job2?arg1=a&arg2=b&", "/job"):
        separator = "" if path.endswith("&") else "?"
        response = client.get(f"{path}{separator}seconds={seconds}")
        assert response.status_code == 400, path
        assert response.json["error"] == "Bad Request"
        assert "seconds must be a number from 0 to 5" in response.json["message"]


def test_background_job_answers_at_once_and_logs_start_and_end(client, caplog):
    caplog.set_level("INFO")
    started = time.monotonic()
    response = client.get("/job?seconds=1.5")
    assert time.monotonic() - started < 1, "the answer waited for the background tasks"
    assert response.status_code == 202
    assert response.json == {"started": ["job1", "job2"]}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sum("finished" in m for m in caplog.messages) < 2:
        time.sleep(0.05)
    messages = caplog.messages
    for name in ("job1", "job2"):
        assert f"background task {name} started" in messages
        assert any(m.startswith(f"background task {name} finished") for m in messages)


def test_background_tasks_are_bounded(client):
    # The test bound is 4 tasks per worker; each /job starts 2.
    assert client.get("/job?seconds=1").status_code == 202
    assert client.get("/job?seconds=1").status_code == 202
    response = client.get("/job?seconds=1")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "at most 4 background tasks" in response.json["message"]


def test_unknown_path_and_wrong_method_are_json(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json["error"] == "Not Found"
    response = client.post("/job1")
    assert response.status_code == 405
    assert response.json["error"] == "Method Not Allowed"
    assert "GET" in response.headers["Allow"]


def test_unexpected_error_is_a_json_500_without_traceback(app, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.json["error"] == "Internal Server Error"
    assert b"secret detail" not in response.data
    assert "secret detail" in caplog.text  # logged for the operator


def test_host_ip_is_an_address_of_this_host(client):
    host_ip = client.get("/ip").json["host_ip"]
    ipaddress.ip_address(host_ip)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host_ip, 0))  # only an address of this host can be bound


def test_host_ip_falls_back_when_there_is_no_route(monkeypatch):
    class NoRoute(socket.socket):
        def connect(self, address):
            raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(network.socket, "socket", NoRoute)
    assert network.outward_address() == "127.0.0.1"


def test_cpu_work_answers_with_its_result(client):
    response = client.get("/cpu?rounds=1000")
    assert response.status_code == 200
    assert response.json["rounds"] == 1000 and len(response.json["digest"]) == 64


@pytest.mark.parametrize("rounds", ["0", "-5", "abc", "1.5", "99999999", ""])
def test_cpu_work_refuses_bad_rounds(client, rounds):
    response = client.get(f"/cpu?rounds={rounds}")
    assert response.status_code == 400
    assert "rounds must be a whole number from 1 to 5000000" in response.json["message"]


def test_compute_answers_get_and_post(client):
    assert client.get("/compute?n=4").json == {"n": 4, "sum_of_squares": 14}
    assert client.post("/compute", json={"n": 4}).json == {"n": 4, "sum_of_squares": 14}
    assert client.get("/compute").json["n"] == 20000


@pytest.mark.parametrize("query, body", [("n=0", None), ("n=abc", None), ("n=1000001", None),
                                         (None, {"n": True}), (None, {"n": "x"}), (None, [1])])
def test_compute_refuses_a_bad_n(client, query, body):
    response = client.get(f"/compute?{query}") if query else client.post("/compute", json=body)
    assert response.status_code == 400
    assert response.json["message"] == "n must be a whole number from 1 to 1000000"

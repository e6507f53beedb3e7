"""deploy/configure.py: the entrypoint's first step. A bad variable stops it; a good
configuration becomes nginx's settings (checked by a real `nginx -t`) and shell lines."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.configure import (
    NATIVE_THREAD_VARIABLES,
    nginx_http_settings,
    nginx_main_settings,
    nginx_server_settings,
)
from deploy.settings import Settings, usable_cpus
from tests.support import ROOT, require_tool


def configure(*arguments: str, **environment) -> subprocess.CompletedProcess:
    env = {**os.environ, **environment}
    return subprocess.run([sys.executable, "-m", "deploy.configure", *arguments],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def nginx_folder() -> Path:
    return Path(os.environ["STACK_RUN_DIR"]) / "nginx"


def test_writes_the_nginx_settings_from_the_environment():
    result = configure(CLIENT_MAX_BODY_SIZE="1m", PROXY_READ_TIMEOUT="120", KEEP_ALIVE="5",
                       GRACEFUL_TIMEOUT="4", LOG_LEVEL="warning")
    assert result.returncode == 0, result.stderr
    http = (nginx_folder() / "http.conf").read_text()
    assert "client_max_body_size 1048576;" in http
    assert "proxy_read_timeout 120s;" in http
    assert "keepalive_timeout 5s;" in http
    assert "real_ip" not in http  # no proxy is trusted by default
    main = (nginx_folder() / "main.conf").read_text()
    assert f"error_log {os.environ['STACK_LOG_DIR']}/nginx/error.log warn;" in main
    assert "worker_shutdown_timeout 4s;" in main
    assert (nginx_folder() / "nginx.conf").read_text().endswith(f"include {ROOT / 'nginx.conf'};\n")


def test_nginx_accepts_what_it_writes(tmp_path):
    require_tool("nginx", "nginx")
    static = tmp_path / "static"
    static.mkdir()
    assert configure(TRUSTED_PROXIES="10.0.0.0/8", STATIC_PATH=str(static), ALLOWED_HOSTS="a.example,*.b.example",
                     CLIENT_RATE_LIMIT="10/s", LOG_TARGET="both", LOG_FORMAT="json").returncode == 0
    for folder in ("nginx", "gunicorn"):
        (Path(os.environ["STACK_LOG_DIR"]) / folder).mkdir(exist_ok=True)
    check = subprocess.run(["nginx", "-t", "-p", f"{nginx_folder()}/", "-c", str(nginx_folder() / "nginx.conf")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_a_bad_variable_exits_2_naming_it():
    result = configure(WEB_CONCURRENCY="abc")
    assert result.returncode == 2
    assert result.stderr == ("configuration error: WEB_CONCURRENCY='abc' is not valid: "
                             "expected a whole number from 1 to 64\n")
    assert not (nginx_folder() / "http.conf").exists()


def test_trusted_proxies_turn_on_the_realip_module_and_the_forwarded_headers():
    http = nginx_http_settings(Settings.from_env({**os.environ, "TRUSTED_PROXIES": "10.0.0.0/8,172.16.0.1"}))
    assert "set_real_ip_from 10.0.0.0/8;" in http
    assert "set_real_ip_from 172.16.0.1/32;" in http
    assert "real_ip_header X-Forwarded-For;" in http
    assert "real_ip_recursive on;" in http
    geo = "geo $realip_remote_addr $trusted_proxy {\n    default 0;\n    10.0.0.0/8 1;\n    172.16.0.1/32 1;\n}"
    assert geo in http


def test_static_files_are_served_by_nginx_only_when_a_folder_is_given():
    assert "location" not in nginx_server_settings(Settings.from_env())
    static = nginx_server_settings(Settings.from_env({**os.environ, "STATIC_PATH": "/srv/shop/static",
                                                      "STATIC_URL": "/assets/", "STATIC_MAX_AGE": "600"}))
    assert "location ^~ /assets/ {\n    alias /srv/shop/static/;" in static
    assert 'add_header Cache-Control "public, max-age=600" always;' in static


def test_log_level_names_map_to_nginx_levels():
    for level, nginx_level in [("debug", "debug"), ("info", "notice"), ("warning", "warn"),
                               ("error", "error"), ("critical", "crit")]:
        main = nginx_main_settings(Settings.from_env({**os.environ, "LOG_LEVEL": level}))
        assert f"error.log {nginx_level};" in main


def test_role_selects_the_programs_supervisord_starts():
    for role, switches in [("all", "WEB_AUTOSTART=true JOBS_AUTOSTART=true"),
                           ("web", "WEB_AUTOSTART=true JOBS_AUTOSTART=false"),
                           ("worker", "WEB_AUTOSTART=false JOBS_AUTOSTART=true")]:
        result = configure("environment", ROLE=role, DRAIN_SECONDS="5")
        drain = "true" if role != "worker" else "false"  # only a web container drains
        assert result.stdout.startswith(f"export {switches} DRAIN_AUTOSTART={drain} "), result.stdout


def test_the_role_is_written_for_the_health_check():
    for role in ("all", "web", "worker"):
        result = configure(ROLE=role)
        assert result.returncode == 0, result.stderr
        assert (Path(os.environ["STACK_RUN_DIR"]) / "role").read_text() == f"{role}\n"


@pytest.mark.parametrize("target, files, streams", [("files", True, False), ("stdout", False, True),
                                                     ("both", True, True)])
def test_log_target_sends_every_log_to_files_stdout_or_both(target, files, streams):
    result = configure(LOG_TARGET=target, LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    log_dir = os.environ["STACK_LOG_DIR"]
    http = (nginx_folder() / "http.conf").read_text()
    main = (nginx_folder() / "main.conf").read_text()
    assert (f"access_log {log_dir}/nginx/access.log json;" in http) == files
    assert ("access_log /dev/stdout json;" in http) == streams
    assert (f"error_log {log_dir}/nginx/error.log" in main) == files
    assert ("error_log stderr" in main) == streams
    supervisord_log = f"{log_dir}/supervisord.log" if files else "/dev/null"
    assert f"LOGROTATE_AUTOSTART={str(files).lower()}\n" in result.stdout
    assert f"SUPERVISORD_LOGFILE={supervisord_log}\n" in result.stdout


def test_metrics_get_a_fresh_folder_and_nginx_status_or_nothing():
    run_dir = Path(os.environ["STACK_RUN_DIR"])
    (run_dir / "metrics").mkdir()
    (run_dir / "metrics" / "counter_123.db").write_text("from the last start")
    result = configure()
    assert f"export PROMETHEUS_MULTIPROC_DIR={run_dir}/metrics" in result.stdout
    assert list((run_dir / "metrics").iterdir()) == []
    assert "stub_status;" in (nginx_folder() / "http.conf").read_text()
    off = configure(METRICS_PORT="0")
    assert "export PROMETHEUS_MULTIPROC_DIR=\n" in off.stdout
    assert "stub_status" not in (nginx_folder() / "http.conf").read_text()


def test_secrets_given_as_files_are_exported_for_every_process(tmp_path):
    secret = tmp_path / "secret_key"
    secret.write_text("it's a \"secret\" $(not run)\n")
    result = configure("environment", SECRET_KEY_FILE=str(secret))
    assert result.returncode == 0, result.stderr
    show = 'printf %s "$SECRET_KEY"; echo; echo "${SECRET_KEY_FILE-unset}"'
    shell = subprocess.run(["sh", "-c", f"{result.stdout}\n{show}"], capture_output=True, text=True, check=True)
    assert shell.stdout == "it's a \"secret\" $(not run)\nunset\n"


def test_per_client_limits_and_allowed_hosts():
    defaults = nginx_http_settings(Settings.from_env())
    assert "limit_conn per_client 512;" in defaults and "limit_req " not in defaults
    assert "map $host $stack_host_allowed {\n    default 1;" in defaults
    limited = nginx_http_settings(Settings.from_env({**os.environ, "CLIENT_MAX_CONNECTIONS": "0",
                                                     "CLIENT_RATE_LIMIT": "30/m",
                                                     "ALLOWED_HOSTS": "api.example.com,*.example.org"}))
    assert "limit_conn per_client" not in limited
    assert "limit_req_zone $binary_remote_addr zone=per_client_rate:10m rate=30r/m;" in limited
    assert "limit_req zone=per_client_rate burst=30 nodelay;" in limited
    assert ("map $host $stack_host_allowed {\n    hostnames;\n    default 0;\n    api.example.com 1;\n"
            "    *.example.org 1;\n}") in limited


def test_a_missing_allowed_hosts_or_jobs_token_is_a_warning_at_start():
    warnings = configure().stderr
    assert "warning: ALLOWED_HOSTS is not set" in warnings
    assert "warning: JOBS_TOKEN is not set: anyone who reaches port 80 can queue, read and cancel jobs" in warnings
    assert configure(ALLOWED_HOSTS="api.example.com", JOBS_TOKEN="t" * 20).stderr == ""
    assert configure(ROLE="worker").stderr == ""  # a worker serves neither
    refused = configure(JOBS_TOKEN="short").stderr
    assert "JOBS_TOKEN='short' is not valid: expected at least 16 printable ASCII" in refused


def exported(shell_lines: str) -> dict[str, str]:
    """The variables the entrypoint's `eval` of these lines would export, as a shell sees them."""
    shell = subprocess.run(["sh", "-c", f"{shell_lines}\nenv"], capture_output=True, text=True, check=True,
                           env={"PATH": os.environ["PATH"]})
    return dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)


@pytest.mark.parametrize("environment, processes", [
    ({"WEB_CONCURRENCY": "1"}, 1),
    ({"WEB_CONCURRENCY": "2", "JOB_WORKER_TYPE": "process", "JOB_WORKERS": "2"}, 4),
    ({"WEB_CONCURRENCY": "2", "ROLE": "worker"}, 1),  # a consumer of threads: one process computes
    ({"WEB_CONCURRENCY": "64"}, 64),
])
def test_native_libraries_start_about_as_many_threads_as_cpus_in_all(environment, processes, monkeypatch):
    for name in NATIVE_THREAD_VARIABLES:  # unless a developer's shell sets them
        monkeypatch.delenv(name, raising=False)
    result = configure("environment", **environment)
    assert result.returncode == 0, result.stderr
    threads = str(max(1, usable_cpus() // processes))
    variables = exported(result.stdout)
    assert [variables[name] for name in NATIVE_THREAD_VARIABLES] == [threads] * 3


def test_native_thread_counts_the_user_set_are_kept(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    result = configure("environment", OMP_NUM_THREADS="3")
    assert "OMP_NUM_THREADS" not in result.stdout
    assert "OPENBLAS_NUM_THREADS=" in result.stdout

import os
import subprocess
import sys
from pathlib import Path

from deploy.configure import nginx_http_settings, nginx_main_settings
from deploy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def configure(tmp_path, **environment):
    env = {"PATH": os.environ["PATH"], **environment}
    return subprocess.run([sys.executable, "-m", "deploy.configure", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_writes_the_nginx_settings_from_the_environment(tmp_path):
    result = configure(tmp_path, CLIENT_MAX_BODY_SIZE="1m", PROXY_READ_TIMEOUT="120",
                       KEEP_ALIVE="5", GRACEFUL_TIMEOUT="4", LOG_LEVEL="warning")
    assert result.returncode == 0, result.stderr
    http = (tmp_path / "http.conf").read_text()
    assert "client_max_body_size 1048576;" in http
    assert "proxy_read_timeout 120s;" in http
    assert "keepalive_timeout 5s;" in http
    assert "real_ip" not in http  # no proxy is trusted by default
    main = (tmp_path / "main.conf").read_text()
    assert "error_log /var/log/app/nginx/error.log warn;" in main
    assert "worker_shutdown_timeout 4s;" in main


def test_a_bad_variable_exits_2_naming_it(tmp_path):
    result = configure(tmp_path, WEB_CONCURRENCY="abc")
    assert result.returncode == 2
    assert result.stderr == ("configuration error: WEB_CONCURRENCY='abc' is not valid: "
                             "expected a whole number from 1 to 64\n")
    assert not (tmp_path / "http.conf").exists()


def test_trusted_proxies_turn_on_the_realip_module():
    http = nginx_http_settings(Settings.from_env({"TRUSTED_PROXIES": "10.0.0.0/8,172.16.0.1"}))
    assert "set_real_ip_from 10.0.0.0/8;" in http
    assert "set_real_ip_from 172.16.0.1/32;" in http
    assert "real_ip_header X-Forwarded-For;" in http
    assert "real_ip_recursive on;" in http


def test_log_level_names_map_to_nginx_levels():
    for level, nginx_level in [("debug", "debug"), ("info", "notice"), ("warning", "warn"),
                               ("error", "error"), ("critical", "crit")]:
        main = nginx_main_settings(Settings.from_env({"LOG_LEVEL": level}))
        assert f"error.log {nginx_level};" in main


def test_role_selects_the_programs_supervisord_starts(tmp_path):
    for role, switches in [("all", "WEB_AUTOSTART=true JOBS_AUTOSTART=true"),
                           ("web", "WEB_AUTOSTART=true JOBS_AUTOSTART=false"),
                           ("worker", "WEB_AUTOSTART=false JOBS_AUTOSTART=true")]:
        result = configure(tmp_path, ROLE=role)
        assert result.stdout == switches + "\n"

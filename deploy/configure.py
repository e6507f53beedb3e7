"""Validate the environment, then write what nginx and the entrypoint need from it.

Run by the entrypoint before anything starts:

    python -m deploy.configure               validate; write nginx's settings; print the shell
                                             lines for the entrypoint to `eval`
    python -m deploy.configure environment   validate; print the shell lines only (run-as-stack)

Exit status 2 and one line per bad variable on stderr when the configuration is unusable.
The shell lines export which supervisord programs start (ROLE, DRAIN_SECONDS) as
NAME=true|false for supervisord.conf's %(ENV_NAME)s, and the secrets given as files
(NAME_FILE) as NAME, so that every process sees them as plain variables.

nginx reads no environment variables: this writes $STACK_RUN_DIR/nginx/, where nginx runs
(`nginx -p $STACK_RUN_DIR/nginx/ -c $STACK_RUN_DIR/nginx/nginx.conf`): nginx.conf includes
the image's /srv/nginx.conf, whose relative includes (main.conf, http.conf, server.conf)
are the files written here.
"""

import os
import shlex
import shutil
import sys
from pathlib import Path

from deploy.settings import ConfigError, Settings, secret_values

STACK_NGINX_CONF = Path(__file__).resolve().parent.parent / "nginx.conf"

# nginx's `info` reports every client connection closing: LOG_LEVEL=info means its `notice`.
NGINX_LOG_LEVELS = {"info": "notice", "warning": "warn", "critical": "crit"}


def log_files(settings: Settings) -> bool:
    return settings.log_target in ("files", "both")


def log_streams(settings: Settings) -> bool:
    return settings.log_target in ("stdout", "both")


def nginx_main_settings(settings: Settings) -> str:
    level = NGINX_LOG_LEVELS.get(settings.log_level, settings.log_level)
    lines = [f"error_log {settings.stack_log_dir}/nginx/error.log {level};"] if log_files(settings) else []
    lines += [f"error_log stderr {level};"] if log_streams(settings) else []
    # A stop or reload closes connections still open after this, so `docker stop` ends in time.
    lines += [f"worker_shutdown_timeout {settings.graceful_timeout}s;"]
    return "\n".join(lines) + "\n"


def nginx_http_settings(settings: Settings) -> str:
    access_log = f"{settings.stack_log_dir}/nginx/access.log"
    lines = [f"access_log {access_log} {settings.log_format};"] if log_files(settings) else []
    lines += [f"access_log /dev/stdout {settings.log_format};"] if log_streams(settings) else []
    lines += [
        f"client_max_body_size {settings.client_max_body_size};",
        f"keepalive_timeout {settings.keep_alive}s;",
        f"proxy_read_timeout {settings.proxy_read_timeout}s;",
        # The peers whose X-Forwarded-* headers nginx believes ($trusted_proxy: 1 or 0).
        "geo $realip_remote_addr $trusted_proxy {",
        "    default 0;",
        *(f"    {network} 1;" for network in settings.trusted_proxies),
        "}",
    ]
    if settings.trusted_proxies:
        # Behind a trusted load balancer the client is the rightmost untrusted X-Forwarded-For entry.
        lines += [f"set_real_ip_from {network};" for network in settings.trusted_proxies]
        lines += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    lines += [
        # fail_timeout=0: never mark the only upstream as down after an error. No `keepalive`:
        # each request takes a new connection from gunicorn's accept queue, in order.
        "upstream gunicorn {",
        f"    server unix:{settings.stack_run_dir}/gunicorn.sock fail_timeout=0;",
        "}",
    ]
    if settings.metrics_port:
        # Connections and requests for deploy/metrics.py: reachable inside the container only.
        lines += [
            "server {",
            f"    listen unix:{settings.stack_run_dir}/nginx-status.sock;",
            "    access_log off;",
            "    location = /stub_status {",
            "        stub_status;",
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def nginx_server_settings(settings: Settings) -> str:
    if not settings.static_path:
        return "# STATIC_PATH is not set: nginx serves no static files itself.\n"
    return (
        f"# STATIC_PATH: nginx serves {settings.static_url} from {settings.static_path}/; gunicorn never sees these.\n"
        f"location ^~ {settings.static_url} {{\n"
        f"    alias {settings.static_path}/;\n"
        f"    add_header Cache-Control \"public, max-age={settings.static_max_age}\" always;\n"
        "    include response-headers.conf;\n"
        "}\n"
    )


# Headers on every answer, nginx's own and the app's. A location with an add_header of its
# own inherits none from the server, so each location includes this.
RESPONSE_HEADERS = "add_header X-Request-ID $stack_request_id always;\n"


def write_nginx_settings(settings: Settings) -> None:
    directory = Path(settings.stack_run_dir) / "nginx"
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "nginx.conf": f"# Written by deploy/configure.py at the container's start.\ninclude {STACK_NGINX_CONF};\n",
        "main.conf": nginx_main_settings(settings),
        "http.conf": nginx_http_settings(settings),
        "server.conf": nginx_server_settings(settings),
        "response-headers.conf": RESPONSE_HEADERS,
    }
    for name, text in files.items():
        (directory / name).write_text(text)


def metrics_folder(settings: Settings) -> str:
    """prometheus-client's multiprocess folder; empty (single-process mode) without metrics."""
    return f"{settings.stack_run_dir}/metrics" if settings.metrics_port else ""


class FolderError(Exception):
    """A folder the stack writes to is not writable."""


def prepare_folders(settings: Settings) -> None:
    """Check that the log folder (when logs go to files) and the data folder, and what they
    hold, are writable; make the log folders of the programs."""
    folders = [settings.stack_data_dir] + ([settings.stack_log_dir] if log_files(settings) else [])
    for folder in folders:
        for path in [Path(folder), *Path(folder).glob("*"), *Path(folder).glob("*/*")]:
            if not os.access(path, os.W_OK):
                raise FolderError(f"{path} is not writable by uid {os.getuid()} gid {os.getgid()}. Make the "
                                  "mounted folder writable by that user (chown), or run without --user.")
    if log_files(settings):
        for program in ("nginx", "gunicorn", "app", "jobs"):
            (Path(settings.stack_log_dir) / program).mkdir(exist_ok=True)
    (Path(settings.stack_data_dir) / "instance").mkdir(exist_ok=True)
    if settings.metrics_port:  # emptied at each start, as prometheus-client asks
        shutil.rmtree(metrics_folder(settings), ignore_errors=True)
        Path(metrics_folder(settings)).mkdir()


def shell_lines(settings: Settings, environ=os.environ) -> str:
    """What the entrypoint evaluates: the programs' switches, supervisord's log, whether logs
    go to files, and the secrets read from files."""
    web = settings.role in ("all", "web")
    jobs = settings.role in ("all", "worker")
    supervisord_log = f"{settings.stack_log_dir}/supervisord.log" if log_files(settings) else "/dev/null"
    switches = {"WEB_AUTOSTART": web, "JOBS_AUTOSTART": jobs, "DRAIN_AUTOSTART": web and settings.drain_seconds > 0,
                "LOGROTATE_AUTOSTART": log_files(settings)}
    lines = ["export " + " ".join(f"{name}={str(on).lower()}" for name, on in switches.items()),
             f"export DRAIN_SECONDS={settings.drain_seconds} SUPERVISORD_LOGFILE={supervisord_log}",
             f"export PROMETHEUS_MULTIPROC_DIR={metrics_folder(settings)}",
             f"LOG_FILES={str(log_files(settings)).lower()}"]
    for name, value in secret_values(environ).items():
        lines.append(f"export {name}={shlex.quote(value)}")
        lines.append(f"unset {name}_FILE")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        for line in str(error).splitlines():
            print(f"configuration error: {line}", file=sys.stderr)
        return 2
    if argv[1:] != ["environment"]:
        try:
            prepare_folders(settings)
        except FolderError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        write_nginx_settings(settings)
    print(shell_lines(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

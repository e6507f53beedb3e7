"""Validate the environment, then write what nginx and the entrypoint need from it.

Run by the entrypoint before anything starts:

    python -m deploy.configure               validate; write nginx's settings and the role; print
                                             the shell lines for the entrypoint to `eval`
    python -m deploy.configure environment   validate; print the shell lines only (run-as-stack)

Exit status 2 and one line per bad variable on stderr when the configuration is unusable.
The shell lines export which supervisord programs start (ROLE, DRAIN_SECONDS) as
NAME=true|false for supervisord.conf's %(ENV_NAME)s, the secrets given as files
(NAME_FILE) as NAME, so that every process sees them as plain variables, and the thread
counts of native libraries (native_threads) that the user has not set.

nginx reads no environment variables: this writes $STACK_RUN_DIR/nginx/, where nginx runs
(`nginx -p $STACK_RUN_DIR/nginx/ -c $STACK_RUN_DIR/nginx/nginx.conf`): nginx.conf includes
the image's /srv/nginx.conf, whose relative includes (main.conf, http.conf, server.conf)
are the files written here. $STACK_RUN_DIR/role holds ROLE for the health check
(deploy/healthcheck.py), which would spend most of its CPU importing the settings.
"""

import os
import secrets
import shlex
import shutil
import sys
from pathlib import Path

from deploy.healthcheck import ROLE_FILE
from deploy.settings import LOGS, ConfigError, Settings, secret_values, usable_cpus

STACK_NGINX_CONF = Path(__file__).resolve().parent.parent / "nginx.conf"

# nginx's `info` reports every client connection closing: LOG_LEVEL=info means its `notice`.
NGINX_LOG_LEVELS = {"info": "notice", "warning": "warn", "critical": "crit"}


def nginx_main_settings(settings: Settings) -> str:
    level = NGINX_LOG_LEVELS.get(settings.log_level, settings.log_level)
    lines = [f"error_log {settings.stack_log_dir}/nginx/error.log {level};"] if settings.logs_to_files else []
    lines += [f"error_log stderr {level};"] if settings.logs_to_streams else []
    # A stop or reload closes connections still open after this, so `docker stop` ends in time.
    lines += [f"worker_shutdown_timeout {settings.graceful_timeout}s;"]
    # One worker per CPU the container may use (its CPU quota, not the host's CPUs as `auto` counts).
    lines += [f"worker_processes {usable_cpus()};"]
    return "\n".join(lines) + "\n"


def nginx_http_settings(settings: Settings) -> str:
    access_log = f"{settings.stack_log_dir}/nginx/access.log"
    lines = [f"access_log {access_log} {settings.log_format};"] if settings.logs_to_files else []
    lines += [f"access_log /dev/stdout {settings.log_format};"] if settings.logs_to_streams else []
    lines += [
        f"client_max_body_size {settings.client_max_body_size};",
        f"keepalive_timeout {settings.keep_alive}s;",
        f"proxy_read_timeout {settings.proxy_read_timeout}s;",
        # The peers whose X-Forwarded-* headers nginx believes ($trusted_proxy: 1 or 0).
        "geo $realip_remote_addr $trusted_proxy {",
        "    default 0;",
        *(f"    {network} 1;" for network in settings.trusted_proxies),
        "}",
        *nginx_host_check(settings),
        *nginx_client_limits(settings),
    ]
    if settings.trusted_proxies:
        # Behind a trusted load balancer the client is the rightmost untrusted X-Forwarded-For entry.
        lines += [f"set_real_ip_from {network};" for network in settings.trusted_proxies]
        lines += ["real_ip_header X-Forwarded-For;", "real_ip_recursive on;"]
    lines += [
        # fail_timeout=0: never mark the only upstream as down after an error. Connections to
        # gunicorn are kept open and reused (deploy/gunicorn_worker.py serves them fairly): up to
        # 64 idle ones per nginx worker, each closed after 4 s idle (before gunicorn's 5 s, so
        # nginx never sends on one gunicorn is closing) or 1000 requests, to spread them anew
        # over gunicorn's workers.
        "upstream gunicorn {",
        f"    server unix:{settings.stack_run_dir}/gunicorn.sock fail_timeout=0;",
        "    keepalive 64;",
        "    keepalive_timeout 4s;",
        "    keepalive_requests 1000;",
        "}",
    ]
    if settings.metrics_port:
        # Connections and requests for deploy/metrics/exposition.py: reachable inside the container only.
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
RESPONSE_HEADERS = ("add_header X-Request-ID $stack_request_id always;\n"
                    "add_header X-Content-Type-Options nosniff always;\n")


def nginx_host_check(settings: Settings) -> list[str]:
    """$stack_host_allowed: 1 for a Host in ALLOWED_HOSTS (any, when it is not set), else 0."""
    if not settings.allowed_hosts:
        return ["map $host $stack_host_allowed {", "    default 1;  # ALLOWED_HOSTS is not set: any host", "}"]
    return ["map $host $stack_host_allowed {", "    hostnames;", "    default 0;",
            *(f"    {name} 1;" for name in settings.allowed_hosts), "}"]


def nginx_client_limits(settings: Settings) -> list[str]:
    """Per client address (the one nginx trusts, after the realip module): requests in progress
    and, if set, their rate; more is a 429."""
    lines = ["limit_conn_status 429;", "limit_req_status 429;", "limit_conn_log_level warn;",
             "limit_req_log_level warn;"]
    if settings.client_max_connections:
        lines += ["limit_conn_zone $binary_remote_addr zone=per_client:10m;",
                  f"limit_conn per_client {settings.client_max_connections};"]
    if settings.client_rate_limit:
        rate, unit = settings.client_rate_limit.split("r/")
        lines += [f"limit_req_zone $binary_remote_addr zone=per_client_rate:10m rate={settings.client_rate_limit};",
                  f"limit_req zone=per_client_rate burst={rate} nodelay;  # short bursts of a {unit}'s worth"]
    return lines


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


def write_role(settings: Settings) -> None:
    (Path(settings.stack_run_dir) / ROLE_FILE).write_text(f"{settings.role}\n")


def metrics_folder(settings: Settings) -> str:
    """prometheus-client's multiprocess folder; empty (single-process mode) without metrics."""
    return f"{settings.stack_run_dir}/metrics" if settings.metrics_port else ""


class FolderError(Exception):
    """A folder the stack writes to is not writable."""


def prepare_folders(settings: Settings) -> None:
    """Check that the log folder (when logs go to files) and the data folder, and what they
    hold, are writable; make the log folders of the programs."""
    folders = [settings.stack_data_dir] + ([settings.stack_log_dir] if settings.logs_to_files else [])
    for folder in folders:
        for path in [Path(folder), *Path(folder).glob("*"), *Path(folder).glob("*/*")]:
            if not os.access(path, os.W_OK):
                raise FolderError(f"{path} is not writable by uid {os.getuid()} gid {os.getgid()}. Make the "
                                  "mounted folder writable by that user (chown), or run without --user.")
    if settings.logs_to_files:
        for program in {log.program for log in LOGS}:
            (Path(settings.stack_log_dir) / program).mkdir(exist_ok=True)
    (Path(settings.stack_data_dir) / "instance").mkdir(exist_ok=True)
    if settings.metrics_port:  # emptied at each start, as prometheus-client asks
        shutil.rmtree(metrics_folder(settings), ignore_errors=True)
        Path(metrics_folder(settings)).mkdir()


def make_control_password(settings: Settings) -> str:
    """supervisord's control socket gets a password of its own at each start, kept in a file
    that only this user (and root) can read, for deploy/supervisorctl."""
    password = secrets.token_urlsafe(24)
    path = Path(settings.stack_run_dir) / "supervisor-password"
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(password)
    return password


# OpenMP, OpenBLAS and MKL start one thread per CPU in every process that uses them, and
# OpenMP one team per calling thread: with a worker per CPU, the CPUs run many times more
# threads than they have, which is slower than one. The stack sets each, unless the user did.
NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def computing_processes(settings: Settings) -> int:
    """The processes that run the app's code at once: the web workers and, with
    JOB_WORKER_TYPE=process, the consumer's job processes (at least one)."""
    web = settings.web_concurrency if settings.runs_web else 0
    jobs = settings.job_workers if settings.runs_jobs and settings.job_worker_type == "process" else 0
    return max(1, web + jobs)


def native_threads(settings: Settings) -> int:
    """Threads each process's native libraries may start, so that all of them together start
    about as many as the container's CPUs."""
    return max(1, usable_cpus() // computing_processes(settings))


def shell_lines(settings: Settings, environ=os.environ) -> str:
    """What the entrypoint evaluates: the programs' switches, supervisord's log, whether logs
    go to files, native libraries' threads, the secrets read from files, and redis-py's folder
    when the queue is in Redis."""
    supervisord_log = f"{settings.stack_log_dir}/supervisord.log" if settings.logs_to_files else "/dev/null"
    switches = {"WEB_AUTOSTART": settings.runs_web, "JOBS_AUTOSTART": settings.runs_jobs,
                "DRAIN_AUTOSTART": settings.runs_web and settings.drain_seconds > 0,
                "LOGROTATE_AUTOSTART": settings.logs_to_files}
    lines = ["export " + " ".join(f"{name}={str(on).lower()}" for name, on in switches.items()),
             f"export DRAIN_SECONDS={settings.drain_seconds} SUPERVISORD_LOGFILE={supervisord_log}",
             f"export PROMETHEUS_MULTIPROC_DIR={metrics_folder(settings)}",
             f"LOG_FILES={str(settings.logs_to_files).lower()}"]
    # The image keeps redis-py off the path (Dockerfile) unless the queue is in Redis.
    if settings.redis_url and environ.get("STACK_REDIS_CLIENT"):
        path = ":".join(filter(None, (environ.get("PYTHONPATH"), environ["STACK_REDIS_CLIENT"])))
        lines.append(f"export PYTHONPATH={shlex.quote(path)}")
    unset = [name for name in NATIVE_THREAD_VARIABLES if not environ.get(name)]
    if unset:
        lines.append("export " + " ".join(f"{name}={native_threads(settings)}" for name in unset))
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
        write_role(settings)
        print(f"export SUPERVISOR_PASSWORD={make_control_password(settings)}")
        if not settings.allowed_hosts and settings.runs_web:
            print("warning: ALLOWED_HOSTS is not set: requests for any Host reach the app, which then builds "
                  "absolute URLs (redirects, links in mails) with the client's Host; set it to your names",
                  file=sys.stderr)
        if not settings.jobs_token and settings.runs_web:
            print("warning: JOBS_TOKEN is not set: anyone who reaches port 80 can queue, read and cancel jobs "
                  "under /jobs, and the jobs dashboard is off; set JOBS_TOKEN (or JOBS_TOKEN_FILE)",
                  file=sys.stderr)
    print(shell_lines(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The one place that reads the stack's configuration.

Every environment variable the stack understands is listed in `VARIABLES` with its default
and the values it accepts. `Settings.from_env()` reads and validates them all at once; a bad
value raises `ConfigError` naming the variable and what it accepts. The container's
entrypoint runs this before anything starts (`python -m deploy.configure`), and gunicorn's
config, the WSGI wrapper and the job consumer read the same validated object.

A variable marked secret may instead be given as a file, NAME_FILE (Docker and Kubernetes
secrets), as the official database images do: the file's content, without its trailing
newline, is the value. Setting both is an error naming both.
"""

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """One or more environment variables hold values the stack cannot use."""


def usable_cpus() -> int:
    """CPUs this process may use: its affinity, lowered by a cgroup CPU quota (`docker run --cpus`)."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def _cgroup_cpu_quota() -> float | None:
    """The cgroup's CPU quota in CPUs (v2 `cpu.max`, else v1 `cfs_quota_us`), or None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def default_web_concurrency() -> int:
    """One gevent worker per usable CPU (each is one event loop), at most 8."""
    return min(usable_cpus(), 8)


# Parsers: each takes the raw string and returns the value, or raises ValueError with the
# accepted values in words. from_env() adds the variable's name and the value it saw.

def whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if re.fullmatch(r"\d+", raw.strip()) and low <= int(raw) <= high:
            return int(raw)
        raise ValueError(f"a whole number from {low} to {high}")
    return parse


def true_or_false(raw: str) -> bool:
    if raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ValueError("true or false")


def one_of(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip().lower() in choices:
            return raw.strip().lower()
        raise ValueError("one of " + ", ".join(choices))
    return parse


def wsgi_app_path(raw: str) -> str:
    # gunicorn's syntax: `package.module:variable`, or `package.module:factory()` to call a factory.
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*(\(.*\))?", raw.strip()):
        return raw.strip()
    raise ValueError("module:variable, e.g. myservice.wsgi:app or myservice:create_app()")


def module_names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if names and all(re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name) for name in names):
        return names
    raise ValueError("Python module names separated by commas, e.g. myservice.tasks,myservice.reports")


def size_in_bytes(raw: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", raw.strip().lower())
    if match:
        return int(match[1]) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[match[2]]
    raise ValueError("a size in bytes with an optional k, m or g suffix, e.g. 10m")


def redis_url(raw: str) -> str:
    if raw.strip() == "" or re.fullmatch(r"(rediss?|unix)://\S+", raw.strip()):
        return raw.strip()
    raise ValueError("redis://[:password@]host[:port][/db], rediss://... or unix:///path, or empty for SQLite")


def absolute_path(raw: str) -> str:
    if raw.strip().startswith("/"):
        return raw.strip()
    raise ValueError("an absolute path")


def folder(raw: str) -> str:
    # nginx reads it too: no characters that would end or bend a directive.
    if re.fullmatch(r"/[\w./-]*", raw.strip()):
        return raw.strip().rstrip("/") or "/"
    raise ValueError("an absolute path of letters, digits and . _ - /")


def optional_folder(raw: str) -> str:
    if raw.strip() == "":
        return ""
    try:
        return folder(raw)
    except ValueError:
        raise ValueError("an absolute path of letters, digits and . _ - /, or empty for none") from None


def url_prefix(raw: str) -> str:
    if re.fullmatch(r"/([\w.~-]+/)+", raw.strip()):
        return raw.strip()
    raise ValueError("a URL path that starts and ends with /, e.g. /static/")


def networks(raw: str) -> tuple[str, ...]:
    items = [item for item in re.split(r"[,\s]+", raw.strip()) if item]
    try:
        return tuple(str(ipaddress.ip_network(item, strict=False)) for item in items)
    except ValueError:
        raise ValueError("IP addresses or CIDR networks separated by commas, e.g. 10.0.0.0/8,192.168.1.10") from None


def any_text(raw: str) -> str:
    return raw


def request_rate(raw: str) -> str:
    # nginx's own syntax for limit_req: N requests a second or a minute.
    match = re.fullmatch(r"(\d+)/([sm])", raw.strip().lower())
    if raw.strip() == "" or (match and int(match[1]) > 0):
        return f"{match[1]}r/{match[2]}" if match else ""
    raise ValueError("requests a second or a minute, e.g. 20/s or 600/m, or empty for no limit")


def host_names(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in raw.split(",") if name.strip())
    if all(re.fullmatch(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name)
           for name in names):
        return names
    raise ValueError("host names or *.domain patterns separated by commas, e.g. api.example.com,*.example.org")


def time_zone(raw: str) -> str:
    from zoneinfo import ZoneInfo  # noqa: PLC0415  (its data is read only here)
    try:
        ZoneInfo(raw.strip())
    except (ValueError, LookupError, OSError):
        raise ValueError("an IANA time zone name, e.g. UTC or Europe/Paris") from None
    return raw.strip()


def token(raw: str) -> str:
    if raw == "" or re.fullmatch(r"[\x21-\x7e]{16,}", raw):
        return raw
    raise ValueError("at least 16 printable ASCII characters without spaces (e.g. `openssl rand -hex 32`), "
                     "or empty for no token")


def metrics_port(raw: str) -> int:
    if re.fullmatch(r"\d+", raw.strip()) and 0 <= int(raw) <= 65535 and int(raw) != 80:
        return int(raw)
    raise ValueError("a port from 1 to 65535 other than 80 (nginx's, the public one), or 0 for no metrics")


@dataclass(frozen=True)
class Variable:
    name: str
    parse: Callable[[str], object]
    # The raw default: a string, or a function of the values parsed before this variable.
    default: str | Callable[[dict], str]
    meaning: str
    secret: bool = False  # may be given as a file: NAME_FILE


def _module_of_app(values: dict) -> str:
    return values["app_module"].split(":", 1)[0]


def _in_data_dir(name: str) -> Callable[[dict], str]:
    return lambda values: f"{values['stack_data_dir']}/{name}"


VARIABLES = (
    # The container's folders: set once, by the image (the Dockerfile's ENV); the shell
    # scripts and supervisord.conf read the same variables, and deploy/configure.py writes
    # them into nginx's settings. Not for users to change at run time.
    Variable("STACK_LOG_DIR", folder, "",
             "the image's log folder, where a host folder is mounted (set by the Dockerfile)"),
    Variable("STACK_RUN_DIR", folder, "",
             "the image's folder for sockets, pid files and generated settings, a tmpfs (set by the Dockerfile)"),
    Variable("STACK_DATA_DIR", folder, "",
             "the image's data folder: the job queue's database, the app's instance folder (set by the Dockerfile)"),
    Variable("APP_MODULE", wsgi_app_path, "app:create_app()",
             "the WSGI application gunicorn serves"),
    Variable("JOB_MODULES", module_names, _module_of_app,
             "modules the job consumer imports to register the tasks (default: the module of APP_MODULE)"),
    Variable("ROLE", one_of("all", "web", "worker"), "all",
             "programs the container runs: all (nginx, gunicorn, job consumer), web (no consumer), "
             "worker (consumer only)"),
    Variable("WEB_CONCURRENCY", whole_number(1, 64), lambda values: str(default_web_concurrency()),
             "gunicorn worker processes (default: the CPUs the container may use, at most 8)"),
    Variable("WORKER_CONNECTIONS", whole_number(1, 100_000), "1000",
             "concurrent requests each gevent worker serves"),
    Variable("TIMEOUT", whole_number(1, 3600), "30",
             "seconds a silent gunicorn worker may block its event loop before it is killed and replaced"),
    Variable("GRACEFUL_TIMEOUT", whole_number(1, 3600), "8",
             "seconds nginx and gunicorn give in-flight requests on stop or reload (below Docker's 10 s stop timeout)"),
    Variable("DRAIN_SECONDS", whole_number(0, 3600), "0",
             "seconds the stack keeps serving after SIGTERM, /readyz answering 503, before it stops gracefully"),
    Variable("KEEP_ALIVE", whole_number(0, 3600), "75",
             "seconds nginx keeps an idle client connection open (0: no keep-alive)"),
    Variable("LOG_LEVEL", one_of(*LOG_LEVELS), "info",
             "level of gunicorn's and the app's logs, and of nginx's error log"),
    Variable("LOG_TARGET", one_of("files", "stdout", "both"), "files",
             "where the logs go: files on the log volume, stdout (`docker logs`, each line marked with its log), "
             "or both"),
    Variable("LOG_FORMAT", one_of("text", "json"), "text",
             "text lines, or one JSON object per line (nginx's and supervisord's own error lines stay text)"),
    Variable("METRICS_PORT", metrics_port, "9100",
             "the container port of the Prometheus metrics (never nginx's port 80); 0: no metrics"),
    Variable("CLIENT_MAX_BODY_SIZE", size_in_bytes, "10m",
             "largest request body nginx accepts (larger: 413)"),
    Variable("PROXY_READ_TIMEOUT", whole_number(1, 86_400), "90",
             "seconds nginx waits for the app to answer (longer: 504)"),
    Variable("ALLOWED_HOSTS", host_names, "",
             "the Host names this service answers to (e.g. api.example.com,*.example.org); any other is a 400 "
             "(default: any, with a warning at start)"),
    Variable("CLIENT_MAX_CONNECTIONS", whole_number(0, 1_000_000), "512",
             "requests one client address may have in progress at once (more: 429); 0: no limit"),
    Variable("CLIENT_RATE_LIMIT", request_rate, "",
             "requests a client address may make a second or a minute, e.g. 20/s (more: 429; default: no limit)"),
    Variable("TRUSTED_PROXIES", networks, "",
             "load balancers in front of this container whose X-Forwarded-* headers nginx believes (default: none)"),
    Variable("STATIC_PATH", optional_folder, "",
             "a folder nginx serves itself at STATIC_URL, never reaching gunicorn (default: none)"),
    Variable("STATIC_URL", url_prefix, "/static/",
             "the URL prefix of STATIC_PATH's files"),
    Variable("STATIC_MAX_AGE", whole_number(0, 31_536_000), "3600",
             "seconds browsers and caches may keep a static file (Cache-Control max-age)"),
    Variable("BACKGROUND_TASKS_MAX", whole_number(1, 10_000), "100",
             "after-response tasks each gunicorn worker holds at once (more: 503)"),
    Variable("CPU_THREADS", whole_number(1, 64), lambda values: str(usable_cpus()),
             "OS threads per web worker for CPU-heavy work in a request (default: usable CPUs)"),
    Variable("PRELOAD_APP", true_or_false, "false",
             "load the app (and its model) once, in gunicorn's master, before the workers are forked: they share "
             "its memory; `reload app` then restarts gunicorn"),
    Variable("MAX_REQUESTS", whole_number(0, 10_000_000), "100000",
             "requests a gunicorn worker serves before it is replaced, plus up to 10% jitter (0: never)"),
    Variable("LOG_ROTATE_SIZE", size_in_bytes, "50m",
             "size past which a log of nginx, gunicorn, the app or the jobs is rotated (0: only by `rotate-logs`)"),
    Variable("LOG_ROTATE_KEEP", whole_number(1, 1000), "5",
             "rotated files kept of each log (access.log.1 is the newest)"),
    Variable("REDIS_URL", redis_url, "",
             "the job queue's Redis, shared by several containers (default: SQLite in JOB_DATABASE)", secret=True),
    Variable("JOB_DATABASE", absolute_path, _in_data_dir("jobs.db"),
             "the job queue's SQLite file when REDIS_URL is not set; mount a volume at its folder"),
    Variable("JOB_WORKERS", whole_number(1, 64), "2",
             "jobs the consumer runs at once"),
    Variable("JOB_WORKER_TYPE", one_of("thread", "process", "greenlet"), "thread",
             "how the consumer runs them: process for CPU-bound jobs, thread or greenlet for I/O-bound"),
    Variable("JOB_QUEUE_MAX", whole_number(1, 1_000_000), "1000",
             "jobs waiting in the queue before POST /jobs answers 503"),
    Variable("JOB_LEASE_SECONDS", whole_number(3, 86_400), "30",
             "a running job whose consumer has not renewed its lease for this long (killed, host lost) is ended"),
    Variable("JOB_RESULT_TTL", whole_number(0, 315_360_000), "604800",
             "seconds a finished job's record is kept (0: for ever); scheduled, queued and running jobs never expire"),
    Variable("JOB_RESULT_MAX_BYTES", size_in_bytes, "1m",
             "largest result a job may return, as JSON (larger: the job fails, saying so)"),
    Variable("SCHEDULE_TIMEZONE", time_zone, "UTC",
             "the time zone of the scheduled tasks' cron expressions (IANA name)"),
    Variable("JOBS_TOKEN", token, "",
             "the bearer token every /jobs request must carry, and the dashboard's password (default: none, "
             "with a warning at start; the dashboard is off)", secret=True),
    Variable("SECRET_KEY", any_text, "",
             "your app's secret (Flask's SECRET_KEY); the stack only passes it on, also from SECRET_KEY_FILE",
             secret=True),
)


@dataclass(frozen=True)
class Log:
    """One of the stack's logs: its source (the mark of its lines on a shared stream), its
    file under STACK_LOG_DIR (LOG_TARGET=files or both) and its stream (stdout or both)."""
    source: str
    file: str
    stream: str

    @property
    def program(self) -> str:
        """The program that writes it, which is also its folder."""
        return self.file.split("/", 1)[0]


# Every log file of the stack but supervisord's own (which supervisord writes and rotates):
# the one list that the log folders, the Python loggers (deploy/logs.py), the rotation
# (deploy/rotate-logs) and the stream marks (deploy/supervisor_container.py) follow.
LOGS = (
    Log("nginx.access", "nginx/access.log", "stdout"),
    Log("nginx.error", "nginx/error.log", "stderr"),
    Log("gunicorn.access", "gunicorn/access.log", "stdout"),
    Log("gunicorn.error", "gunicorn/error.log", "stderr"),
    Log("app", "app/app.log", "stderr"),
    Log("jobs", "jobs/consumer.log", "stderr"),
)
LOG_OF = {log.source: log for log in LOGS}


@dataclass(frozen=True)
class Settings:
    stack_log_dir: str
    stack_run_dir: str
    stack_data_dir: str
    app_module: str
    job_modules: tuple[str, ...]
    role: str
    web_concurrency: int
    worker_connections: int
    timeout: int
    graceful_timeout: int
    drain_seconds: int
    keep_alive: int
    log_level: str
    log_target: str
    log_format: str
    metrics_port: int
    client_max_body_size: int
    proxy_read_timeout: int
    allowed_hosts: tuple[str, ...]
    client_max_connections: int
    client_rate_limit: str
    trusted_proxies: tuple[str, ...]
    static_path: str
    static_url: str
    static_max_age: int
    background_tasks_max: int
    cpu_threads: int
    preload_app: bool
    max_requests: int
    log_rotate_size: int
    log_rotate_keep: int
    redis_url: str
    job_database: str
    job_workers: int
    job_worker_type: str
    job_queue_max: int
    job_lease_seconds: int
    job_result_ttl: int
    job_result_max_bytes: int
    schedule_timezone: str
    jobs_token: str
    secret_key: str

    # What follows from the variables, in one place.
    @property
    def logs_to_files(self) -> bool:
        return self.log_target in ("files", "both")

    @property
    def logs_to_streams(self) -> bool:
        return self.log_target in ("stdout", "both")

    @property
    def runs_web(self) -> bool:
        """nginx and gunicorn run in this container."""
        return self.role in ("all", "web")

    @property
    def runs_jobs(self) -> bool:
        """The job consumer runs in this container."""
        return self.role in ("all", "worker")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Read every variable (unset or empty: its default); report all bad ones together."""
        values, errors = {}, []
        for variable in VARIABLES:
            try:
                raw = raw_value(variable, environ)
            except ConfigError as error:
                errors.append(str(error))
                continue
            try:
                if not raw:
                    raw = variable.default if isinstance(variable.default, str) else variable.default(values)
                values[variable.name.lower()] = variable.parse(raw)
            except ValueError as accepted:
                errors.append(f"{variable.name}={raw!r} is not valid: expected {accepted}")
            except KeyError:  # its default follows a variable that is not valid (reported already)
                pass
        if errors:
            raise ConfigError("\n".join(errors))
        return cls(**values)


def raw_value(variable: Variable, environ: Mapping[str, str]) -> str:
    """The variable's raw value; for a secret, read from NAME_FILE when that is set instead."""
    file_name = f"{variable.name}_FILE"
    if not (variable.secret and environ.get(file_name)):
        return environ.get(variable.name, "")
    if environ.get(variable.name):
        raise ConfigError(f"{variable.name} and {file_name} are both set: set only one of them")
    path = environ[file_name]
    try:
        with open(path) as f:
            return f.read().rstrip("\r\n")
    except OSError as error:
        raise ConfigError(f"{file_name}={path!r} cannot be read: {error.strerror}") from None


def secret_values(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The secrets given as files, by name: what the entrypoint exports for every process."""
    return {variable.name: raw_value(variable, environ) for variable in VARIABLES
            if variable.secret and environ.get(f"{variable.name}_FILE")}

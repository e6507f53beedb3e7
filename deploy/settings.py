"""The one place that reads the image's configuration.

Every environment variable the stack understands is listed in `VARIABLES` with its default
and the values it accepts. `Settings.from_env()` reads and validates them all at once; a bad
value raises `ConfigError` naming the variable and what it accepts. The container's
entrypoint runs this before anything starts (`python -m deploy.configure`), and gunicorn's
config and the example app read the same validated object.
"""

import ipaddress
import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Mapping

LOG_DIR = "/var/log/app"
RUN_DIR = "/run/flask-stack"
DATA_DIR = "/var/lib/app"

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


def number(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if low < value <= high:
            return value
        raise ValueError(f"a number greater than {low:g} and at most {high:g}")
    return parse


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


def networks(raw: str) -> tuple[str, ...]:
    items = [item for item in re.split(r"[,\s]+", raw.strip()) if item]
    try:
        return tuple(str(ipaddress.ip_network(item, strict=False)) for item in items)
    except ValueError:
        raise ValueError("IP addresses or CIDR networks separated by commas, e.g. 10.0.0.0/8,192.168.1.10") from None


@dataclass(frozen=True)
class Variable:
    name: str
    parse: Callable[[str], object]
    default: Callable[[], str]
    meaning: str


def _fixed(value: str) -> Callable[[], str]:
    return lambda: value


VARIABLES = (
    Variable("WEB_CONCURRENCY", whole_number(1, 64), lambda: str(default_web_concurrency()),
             "gunicorn worker processes (default: the CPUs the container may use, at most 8)"),
    Variable("WORKER_CONNECTIONS", whole_number(1, 100_000), _fixed("1000"),
             "concurrent requests each gevent worker serves"),
    Variable("TIMEOUT", whole_number(1, 3600), _fixed("30"),
             "seconds a silent gunicorn worker may block its event loop before it is killed and replaced"),
    Variable("GRACEFUL_TIMEOUT", whole_number(1, 3600), _fixed("8"),
             "seconds nginx and gunicorn give in-flight requests on stop or reload (below Docker's 10 s stop timeout)"),
    Variable("KEEP_ALIVE", whole_number(0, 3600), _fixed("75"),
             "seconds nginx keeps an idle client connection open (0: no keep-alive)"),
    Variable("LOG_LEVEL", one_of(*LOG_LEVELS), _fixed("info"),
             "level of gunicorn's and the app's logs, and of nginx's error log"),
    Variable("APP_MODULE", wsgi_app_path, _fixed("app.wsgi:app"),
             "the WSGI application gunicorn serves"),
    Variable("CLIENT_MAX_BODY_SIZE", size_in_bytes, _fixed("10m"),
             "largest request body nginx accepts (larger: 413)"),
    Variable("PROXY_READ_TIMEOUT", whole_number(1, 86_400), _fixed("90"),
             "seconds nginx waits for the app to answer (longer: 504); above JOB_MAX_SECONDS"),
    Variable("TRUSTED_PROXIES", networks, _fixed(""),
             "load balancers in front of this container whose X-Forwarded-For nginx believes (default: none)"),
    Variable("JOB_MAX_SECONDS", number(0, 86_400), _fixed("60"),
             "largest `seconds` the example /job1 and /job2 accept"),
    Variable("BACKGROUND_TASKS_MAX", whole_number(1, 10_000), _fixed("100"),
             "background tasks (/job) each worker holds at once (more: 503)"),
    Variable("MAX_REQUESTS", whole_number(0, 10_000_000), _fixed("10000"),
             "requests a gunicorn worker serves before it is replaced, plus up to 10% jitter (0: never)"),
    Variable("LOG_ROTATE_SIZE", size_in_bytes, _fixed("50m"),
             "size past which a log of nginx, gunicorn or the app is rotated (0: only by `rotate-logs`)"),
    Variable("LOG_ROTATE_KEEP", whole_number(1, 1000), _fixed("5"),
             "rotated files kept of each log (access.log.1 is the newest)"),
    Variable("ROLE", one_of("all", "web", "worker"), _fixed("all"),
             "programs the container runs: all (nginx, gunicorn, job consumer), web (no consumer), worker (consumer only)"),
    Variable("REDIS_URL", redis_url, _fixed(""),
             "the job queue's Redis, shared by several containers (default: SQLite in JOB_DATABASE)"),
    Variable("JOB_DATABASE", absolute_path, _fixed(f"{DATA_DIR}/jobs.db"),
             "the job queue's SQLite file when REDIS_URL is not set; mount a volume at its folder"),
    Variable("JOB_WORKERS", whole_number(1, 64), _fixed("2"),
             "jobs the consumer runs at once"),
    Variable("JOB_WORKER_TYPE", one_of("thread", "process", "greenlet"), _fixed("thread"),
             "how the consumer runs them: process for CPU-bound jobs, thread or greenlet for I/O-bound"),
    Variable("JOB_QUEUE_MAX", whole_number(1, 1_000_000), _fixed("1000"),
             "jobs waiting in the queue before POST /jobs answers 503"),
    Variable("CPU_THREADS", whole_number(1, 64), lambda: str(usable_cpus()),
             "OS threads per web worker for CPU-heavy work in a request (default: usable CPUs)"),
)


@dataclass(frozen=True)
class Settings:
    web_concurrency: int
    worker_connections: int
    timeout: int
    graceful_timeout: int
    keep_alive: int
    log_level: str
    app_module: str
    client_max_body_size: int
    proxy_read_timeout: int
    trusted_proxies: tuple[str, ...]
    job_max_seconds: float
    background_tasks_max: int
    max_requests: int
    log_rotate_size: int
    log_rotate_keep: int
    role: str
    redis_url: str
    job_database: str
    job_workers: int
    job_worker_type: str
    job_queue_max: int
    cpu_threads: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "Settings":
        """Read every variable (unset or empty: its default); report all bad ones together."""
        values, errors = {}, []
        for variable in VARIABLES:
            raw = environ.get(variable.name) or variable.default()
            try:
                values[variable.name.lower()] = variable.parse(raw)
            except ValueError as accepted:
                errors.append(f"{variable.name}={raw!r} is not valid: expected {accepted}")
        if errors:
            raise ConfigError("\n".join(errors))
        return cls(**values)

"""Durable background jobs on huey: SQLite by default, Redis when REDIS_URL is set.

The web workers enqueue; the consumer (`python -m app.worker`, a supervisord program) runs
the jobs. Each job has a record (status, arguments, timestamps, result or error) in huey's
key-value store beside the queue, so every gunicorn worker, the consumer and a restarted
container see the same state. huey's signals move a record through its statuses:

    queued -> running -> done | failed        canceled (DELETE while queued)
                      -> interrupted          its process stopped or died while running it
                      -> queued               a retry, when the task declares retries

Tasks are registered with `@jobs.task()` (see app/tasks.py); their annotated parameters are
the JSON arguments POST /jobs accepts.
"""

import inspect
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from huey import RedisHuey, SqliteHuey
from huey import signals as huey_signals

from deploy.settings import Settings

QUEUE_NAME = "flask-stack"
JSON_TYPES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


class InvalidJob(ValueError):
    """The request names no registered task, or its arguments do not fit the task."""


@dataclass
class TaskSpec:
    name: str
    function: Callable[..., Any]
    retries: int = 0
    retry_delay: float = 0
    check: Callable[[dict, dict], None] | None = None
    parameters: dict[str, inspect.Parameter] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(
            f"{name} ({JSON_TYPES[p.annotation]}{'' if p.default is p.empty else ', optional'})"
            for name, p in self.parameters.items()) or "no arguments"


class TaskRegistry:
    """The tasks POST /jobs may run, collected by the `task` decorator."""

    def __init__(self):
        self.specs: dict[str, TaskSpec] = {}

    def task(self, name: str | None = None, *, retries: int = 0, retry_delay: float = 0,
             check: Callable[[dict, dict], None] | None = None):
        """Register a function as a job. Its parameters must be annotated with str, int, float
        or bool. `check(args, config)` may raise ValueError to refuse values (a 400)."""
        def decorator(function):
            parameters = dict(inspect.signature(function).parameters)
            for parameter in parameters.values():
                if parameter.annotation not in JSON_TYPES:
                    raise TypeError(f"{function.__name__}({parameter.name}): annotate it with str, int, float or bool")
            spec_name = name or function.__name__
            self.specs[spec_name] = TaskSpec(spec_name, function, retries, retry_delay, check, parameters)
            return function
        return decorator

    def validate(self, task_name: Any, args: Any, config: dict) -> tuple[TaskSpec, dict]:
        """The task and its arguments, converted; InvalidJob names what is accepted."""
        spec = self.specs.get(task_name) if isinstance(task_name, str) else None
        if spec is None:
            raise InvalidJob(f"unknown task {task_name!r}; tasks: {', '.join(sorted(self.specs))}")
        if not isinstance(args, dict):
            raise InvalidJob(f"args must be a JSON object; {spec.name} takes {spec.describe()}")
        unknown = sorted(set(args) - set(spec.parameters))
        missing = [n for n, p in spec.parameters.items() if p.default is p.empty and n not in args]
        if unknown or missing:
            problem = f"unknown argument {', '.join(unknown)}" if unknown else f"missing argument {', '.join(missing)}"
            raise InvalidJob(f"{problem}; {spec.name} takes {spec.describe()}")
        converted = {}
        for name, value in args.items():
            expected = spec.parameters[name].annotation
            fits = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                value, fits = float(value), True
            if not fits:
                raise InvalidJob(f"{name} must be {JSON_TYPES[expected]}; {spec.name} takes {spec.describe()}")
            converted[name] = value
        if spec.check:
            try:
                spec.check(converted, config)
            except ValueError as error:
                raise InvalidJob(str(error)) from None
        return spec, converted


jobs = TaskRegistry()


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def process_start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), or None if it does not exist.
    With the pid it names one process: pids are reused, start times with them are not."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start_time(os.getpid())}


class JobQueue:
    """The huey instance with the registered tasks, and the job records beside it."""

    def __init__(self, settings: Settings, registry: TaskRegistry = jobs):
        if settings.redis_url:
            self.huey = RedisHuey(QUEUE_NAME, url=settings.redis_url, results=False)
        else:
            self.huey = SqliteHuey(QUEUE_NAME, filename=settings.job_database, results=False)
        self.registry = registry
        self.queue_max = settings.job_queue_max
        self.tasks = {
            spec.name: self.huey.task(name=spec.name, retries=spec.retries, retry_delay=spec.retry_delay)(spec.function)
            for spec in registry.specs.values()
        }
        self._connect_signals()

    # --- records ---------------------------------------------------------------------
    def record(self, job_id: str) -> dict | None:
        return self.huey.get(f"job:{job_id}", peek=True)

    def _save(self, record: dict) -> None:
        self.huey.put(f"job:{record['id']}", record)

    def _update(self, job_id: str, **changes) -> None:
        record = self.record(job_id)
        if record is not None:
            self._save({**record, **changes})

    # --- the web side ----------------------------------------------------------------
    def submit(self, spec: TaskSpec, args: dict) -> dict:
        """Enqueue a validated job; QueueFull when JOB_QUEUE_MAX jobs already wait."""
        if self.huey.pending_count() >= self.queue_max:
            raise QueueFull(f"{self.queue_max} jobs are already waiting; try again later")
        task = self.tasks[spec.name].s(**args)
        record = {"id": task.id, "task": spec.name, "args": args, "status": "queued", "attempt": 1,
                  "created_at": now(), "started_at": None, "finished_at": None,
                  "result": None, "error": None}
        self._save(record)  # before the consumer can see the task
        self.huey.enqueue(task)
        return record

    def cancel(self, record: dict) -> dict:
        """Cancel a queued job (its record, as read); JobNotCancelable once it has started."""
        if record["status"] != "queued":
            raise JobNotCancelable(f"job {record['id']} is {record['status']}: only a queued job can be canceled")
        self.huey.revoke_by_id(record["id"])
        canceled = {**record, "status": "canceled", "finished_at": now()}
        self._save(canceled)
        return canceled

    # --- the consumer side -----------------------------------------------------------
    def _connect_signals(self) -> None:
        on = self.huey.signal

        @on(huey_signals.SIGNAL_EXECUTING)
        def running(signal, task):
            self._update(task.id, status="running", started_at=now(), worker=this_process())

        @on(huey_signals.SIGNAL_ERROR)
        def failed(signal, task, exc=None):
            self._update(task.id, status="failed", finished_at=now(), error=f"{type(exc).__name__}: {exc}")

        @on(huey_signals.SIGNAL_RETRYING)
        def retrying(signal, task):
            record = self.record(task.id) or {}
            self._update(task.id, status="queued", attempt=record.get("attempt", 1) + 1, error=None)

        @on(huey_signals.SIGNAL_INTERRUPTED)
        def interrupted(signal, task):
            self._update(task.id, status="interrupted", finished_at=now(),
                         error="the consumer stopped while the job was running")

        @on(huey_signals.SIGNAL_REVOKED, huey_signals.SIGNAL_CANCELED)
        def canceled(signal, task):
            self._update(task.id, status="canceled", finished_at=now())

        # `done` is set here rather than on SIGNAL_COMPLETE: only this hook sees the result.
        @self.huey.post_execute()
        def save_result(task, task_value, exc):
            if exc is None:
                self._update(task.id, status="done", finished_at=now(), result=task_value)

    def mark_orphans_interrupted(self) -> list[str]:
        """Jobs left `running` by a consumer of this host that no longer exists (it was
        killed, or the container stopped before it could finish): mark them interrupted."""
        host, marked = socket.gethostname(), []
        for key in list(self.huey.storage.result_items()):
            if not key.startswith("job:"):
                continue
            record = self.record(key[len("job:"):])
            worker = (record or {}).get("worker") or {}
            if (record and record["status"] == "running" and worker.get("host") == host
                    and process_start_time(worker["pid"]) != worker["start"]):
                self._update(record["id"], status="interrupted", finished_at=now(),
                             error="the consumer died while the job was running")
                marked.append(record["id"])
        return marked


class QueueFull(Exception):
    """JOB_QUEUE_MAX jobs are already waiting."""


class JobNotCancelable(Exception):
    """The job has started or finished."""

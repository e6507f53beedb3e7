"""The tasks a job may run, registered by the `task` decorator.

Nothing here imports Flask: a module of tasks imports `task` and stays importable by the
job consumer alone. The queue (deploy/jobs/queue.py) makes each task a huey task when a job
first needs it, so a task registered after the queue was made is found too.

A task's definition is checked when it is registered, that is when its module is imported:
a bad one raises TaskDefinitionError naming the task and the value, which stops the consumer
and the web app at their start (deploy/jobs/consumer.py, deploy/wsgi.py) without a traceback.
"""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from deploy.jobs.ticks import Cron, Every, parse_every, zone_named

JSON_TYPES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
MAX_GRACE = 3600.0  # the default grace of a late tick: the smaller of the task's interval and this


class InvalidJob(ValueError):
    """The request names no registered task, or its arguments do not fit the task."""


class TaskDefinitionError(ValueError):
    """A `@task(...)` whose options cannot work; the message names the task and the value."""


@dataclass
class TaskSpec:
    name: str
    function: Callable[..., Any]
    retries: int = 0
    retry_delay: float = 0
    retry_backoff: float = 1
    check: Callable[[dict, Mapping], None] | None = None
    timeout: float | None = None
    schedule: Every | Cron | None = None
    timezone: str | None = None  # a cron's own time zone; None: SCHEDULE_TIMEZONE
    overlap: bool = False
    grace: float | None = None  # seconds a missed tick may still run late; None: the default
    parameters: dict[str, inspect.Parameter] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(
            f"{name} ({JSON_TYPES[p.annotation]}{'' if p.default is p.empty else ', optional'})"
            for name, p in self.parameters.items()) or "no arguments"

    def retry_delay_after(self, attempt: int) -> float:
        """Seconds before the retry that follows attempt `attempt` (1 for the first): retry_delay,
        multiplied by retry_backoff at each retry."""
        return self.retry_delay * self.retry_backoff ** (attempt - 1)

    def late_grace(self) -> float:
        """Seconds after its tick within which a missed tick still runs (once)."""
        return self.grace if self.grace is not None else min(self.schedule.default_grace(), MAX_GRACE)


def _number(name: str, value: Any, low: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise ValueError(f"{name}={value!r}: expected {what}")
    return value


class TaskRegistry:
    """The tasks POST /jobs may run, and the scheduled ones."""

    def __init__(self):
        self.specs: dict[str, TaskSpec] = {}

    def task(self, name: str | None = None, *, retries: int = 0, retry_delay: float = 0,
             retry_backoff: float = 1, check: Callable[[dict, Mapping], None] | None = None,
             timeout: float | None = None, cron: str | None = None, every: int | timedelta | None = None,
             timezone: str | None = None, overlap: bool = False, grace: float | None = None):
        """Register a function as a job. Its parameters must be annotated with str, int, float
        or bool: they are the JSON arguments.

        - `retries`: attempts after the first when it raises or its consumer is lost, each
          `retry_delay` seconds later, the delay multiplied by `retry_backoff` at each retry
          (with a backoff and no delay, the first retry waits 1 s).
        - `check(args, config)` may raise ValueError to refuse values (a 400); `config` is
          the Flask app's config.
        - `timeout`: seconds a run may take; past them it fails, "timed out".
        - `cron` (five fields, in SCHEDULE_TIMEZONE or `timezone`) or `every` (seconds, or a
          timedelta): run it on that schedule, once per tick across every consumer. A run is
          skipped while another is queued or running, unless `overlap`. A tick missed while no
          consumer ran still runs once if it is at most `grace` seconds old (default: the
          smaller of its interval and an hour).
        """
        def decorator(function):
            spec_name = name or function.__name__
            try:
                spec = self._spec(spec_name, function, retries, retry_delay, retry_backoff, check, timeout,
                                  cron, every, timezone, overlap, grace)
            except ValueError as error:
                raise TaskDefinitionError(f"task {spec_name}: {error}") from None
            self.specs[spec_name] = spec
            return function
        return decorator

    @staticmethod
    def _spec(name, function, retries, retry_delay, retry_backoff, check, timeout, cron, every, timezone,
              overlap, grace) -> TaskSpec:
        parameters = dict(inspect.signature(function).parameters)
        for parameter in parameters.values():
            if parameter.annotation not in JSON_TYPES:
                raise ValueError(f"{function.__name__}({parameter.name}): annotate it with str, int, float or bool")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries={retries!r}: expected a whole number, at least 0")
        _number("retry_delay", retry_delay, 0, "a number of seconds, at least 0")
        _number("retry_backoff", retry_backoff, 1, "a number, at least 1")
        if retry_backoff > 1 and not retry_delay:
            retry_delay = 1
        if timeout is not None:
            _number("timeout", timeout, 0.001, "a number of seconds above 0")
        if cron is not None and every is not None:
            raise ValueError("cron and every are both given: a task has one schedule")
        if cron is not None and not isinstance(cron, str):
            raise ValueError(f"cron={cron!r}: expected five fields in a string, e.g. '0 3 * * *'")
        schedule = Cron(cron) if cron is not None else parse_every(every) if every is not None else None
        if schedule is None and (timezone is not None or overlap or grace is not None):
            raise ValueError("timezone, overlap and grace are for a scheduled task: give it cron or every")
        if timezone is not None:
            if not isinstance(schedule, Cron):
                raise ValueError("timezone is for a cron schedule (every counts seconds, whatever the zone)")
            zone_named(timezone)
        if grace is not None:
            _number("grace", grace, 0, "a number of seconds, at least 0")
        required = [n for n, p in parameters.items() if p.default is p.empty]
        if schedule is not None and required:
            raise ValueError(f"a scheduled task takes no arguments without defaults; "
                             f"{function.__name__} requires {', '.join(required)}")
        return TaskSpec(name, function, retries, retry_delay, retry_backoff, check, timeout, schedule,
                        timezone, bool(overlap), grace, parameters)

    def scheduled(self) -> list[TaskSpec]:
        return [spec for spec in self.specs.values() if spec.schedule is not None]

    def validate(self, task_name: Any, args: Any, config: Mapping) -> tuple[TaskSpec, dict]:
        """The task and its arguments, converted; InvalidJob names what is accepted."""
        spec = self.specs.get(task_name) if isinstance(task_name, str) else None
        if spec is None:
            known = ", ".join(sorted(self.specs)) or "none are registered"
            raise InvalidJob(f"unknown task {task_name!r}; tasks: {known}")
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


# The registry every `@task` adds to: the web app and the consumer each import the task modules.
registry = TaskRegistry()
task = registry.task

"""The tasks a job may run, registered by the `task` decorator.

Nothing here imports Flask or huey: a module of tasks imports `task` and stays importable
by the job consumer alone. The queue (deploy/jobs/queue.py) makes each task a huey task
when a job first needs it, so a task registered after the queue was made is found too.
"""

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


class InvalidJob(ValueError):
    """The request names no registered task, or its arguments do not fit the task."""


@dataclass
class TaskSpec:
    name: str
    function: Callable[..., Any]
    retries: int = 0
    retry_delay: float = 0
    check: Callable[[dict, Mapping], None] | None = None
    parameters: dict[str, inspect.Parameter] = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(
            f"{name} ({JSON_TYPES[p.annotation]}{'' if p.default is p.empty else ', optional'})"
            for name, p in self.parameters.items()) or "no arguments"


class TaskRegistry:
    """The tasks POST /jobs may run."""

    def __init__(self):
        self.specs: dict[str, TaskSpec] = {}

    def task(self, name: str | None = None, *, retries: int = 0, retry_delay: float = 0,
             check: Callable[[dict, Mapping], None] | None = None):
        """Register a function as a job. Its parameters must be annotated with str, int, float
        or bool: they are the JSON arguments. `retries`: attempts after the first when it
        raises or its consumer is lost. `check(args, config)` may raise ValueError to refuse
        values (a 400); `config` is the Flask app's config."""
        def decorator(function):
            parameters = dict(inspect.signature(function).parameters)
            for parameter in parameters.values():
                if parameter.annotation not in JSON_TYPES:
                    raise TypeError(f"{function.__name__}({parameter.name}): annotate it with str, int, float or bool")
            spec_name = name or function.__name__
            self.specs[spec_name] = TaskSpec(spec_name, function, retries, retry_delay, check, parameters)
            return function
        return decorator

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

"""Short work after the response ("answer now, write the logs later"), bounded and logged.

`after_response({"name": function, ...})` starts each function and returns at once. Under
gevent the pool's threads are greenlets on the worker's event loop: fine for work that
waits on I/O, not for CPU-heavy work, and lost if the worker dies (the job queue is for
work that must not be lost). The bound (BACKGROUND_TASKS_MAX per worker) keeps a burst of
requests from piling up unbounded work: past it, a 503 with Retry-After, and nothing starts.
"""

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from flask import current_app
from werkzeug.exceptions import ServiceUnavailable

from deploy.extension import stack_extension
from deploy.settings import Settings


def after_response(calls: dict[str, Callable[[], object]]) -> None:
    """Start every call of `calls` (name -> function) in this worker, after the request's
    answer; or none of them (ServiceUnavailable, a 503) if that would pass the bound."""
    stack_extension(current_app).part("background", BackgroundTasks.for_settings).submit(calls)


class BackgroundTasks:
    @classmethod
    def for_settings(cls, settings: Settings) -> "BackgroundTasks":
        return cls(settings.background_tasks_max, logging.getLogger("deploy.background"))

    def __init__(self, limit: int, logger: logging.Logger):
        self._limit = limit
        self._running = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="background")
        self._logger = logger

    def submit(self, calls: dict[str, Callable[[], object]]) -> None:
        """Start every call of `calls` (name -> function), or none of them if that would pass the limit."""
        with self._lock:
            if self._running + len(calls) > self._limit:
                raise ServiceUnavailable(
                    f"this worker already runs {self._running} of at most {self._limit} "
                    "background tasks; try again later",
                    retry_after=5,
                )
            self._running += len(calls)
        for name, function in calls.items():
            # In the request's context: its log lines carry the request's id.
            self._executor.submit(contextvars.copy_context().run, self._run, name, function)

    def _run(self, name: str, function: Callable[[], object]) -> None:
        self._logger.info("background task %s started", name)
        try:
            result = function()
        except Exception:
            self._logger.exception("background task %s failed", name)
        else:
            self._logger.info("background task %s finished: %s", name, result)
        finally:
            with self._lock:
                self._running -= 1

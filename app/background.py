"""Short work after the response ("answer now, write the logs later"), bounded and logged.

Under gevent the pool's threads are greenlets on the worker's event loop: fine for work that
waits on I/O, not for CPU-heavy work, and lost if the worker dies. The bound keeps a burst of
requests from piling up unbounded work: past it, `submit` raises ServiceUnavailable (503)
and starts nothing.
"""

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from werkzeug.exceptions import ServiceUnavailable


class BackgroundTasks:
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
            self._executor.submit(self._run, name, function)

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

"""Inference batched across requests: `@batched(max_size, max_wait_ms)`.

Models are vectorized: one call on 32 inputs costs little more than one call on one input.
A function decorated here is called with one input and runs with a list of them: the calls
that one worker's concurrent requests make are gathered into one call of the function.

    @batched(max_size=32, max_wait_ms=5)
    def predict(inputs: list) -> list:            # one result per input, in order
        return model.run(None, {"x": numpy.stack(inputs)})[0].tolist()

    label = predict(features)                     # in a request: one input, one result

- A batch starts when it holds `max_size` calls or its oldest call has waited `max_wait_ms`.
  The function runs in an OS thread (`in_os_thread`), so the worker's event loop serves
  other requests while the model computes. One batch of a function is in flight per worker
  at a time; the calls that arrive meanwhile gather into the next one.
- An exception the function raises reaches every caller of that batch; an exception object
  returned in an item's place is raised in that item's caller only. A result that is not a
  list of one result per input is an error for every caller, never a wrong answer.

Under gunicorn's gevent worker `threading` is patched into greenlets: each function has a
dispatcher greenlet that gathers the calls, and a waiting caller costs a greenlet, not an OS
thread. Elsewhere (Flask's dev server, tests, the job consumer) they are OS threads and the
function is called directly in the dispatcher's. That state is made at the first call in a
process, so a worker forked from a preloading master (PRELOAD_APP) inherits none of it.

Batch sizes and each call's wait are counted by the observer that `set_observer` installs
(deploy/wsgi.py, when the stack's metrics are on); by default nothing is counted.
"""

import functools
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence, Set
from dataclasses import dataclass, field

from deploy.threads import in_os_thread

# observer(function name, batch size, each call's wait in seconds from its arrival to the batch's start)
Observer = Callable[[str, int, list[float]], None]


def count_nothing(name: str, size: int, waits: list[float]) -> None:
    """The observer while the stack's metrics are off."""


_observer: Observer = count_nothing


def set_observer(observer: Observer) -> None:
    """Where batch sizes and waits go (deploy/metrics.py's `observe_batch`, when metrics are on)."""
    global _observer
    _observer = observer


class BatchResultError(RuntimeError):
    """The batched function's result does not match its inputs: every caller of the batch gets this."""


@dataclass
class Call:
    item: object
    arrived: float = field(default_factory=time.monotonic)
    # Looked up at each call: under gevent, `threading` is patched after this module is imported.
    done: threading.Event = field(default_factory=lambda: threading.Event())
    result: object = None
    error: BaseException | None = None


class Dispatcher:
    """One process's pending calls of one batched function, and the thread that batches them."""

    def __init__(self, batcher: "Batcher"):
        self.batcher = batcher
        self.pending: list[Call] = []
        self.changed = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, call: Call) -> None:
        with self.changed:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name=f"batched {self.batcher.name}", daemon=True)
                self.thread.start()
            self.pending.append(call)
            if len(self.pending) in (1, self.batcher.max_size):  # the dispatcher waits for one of these
                self.changed.notify()

    def next_batch(self) -> list[Call]:
        """The calls of the next batch, once it is full or its oldest call has waited max_wait."""
        with self.changed:
            while not self.pending:
                self.changed.wait()
            deadline = self.pending[0].arrived + self.batcher.max_wait
            while len(self.pending) < self.batcher.max_size and (left := deadline - time.monotonic()) > 0:
                self.changed.wait(left)
            batch, self.pending[:] = self.pending[:self.batcher.max_size], self.pending[self.batcher.max_size:]
            return batch

    def run(self) -> None:
        while True:
            batch = self.next_batch()
            started = time.monotonic()
            self.batcher.answer(batch)
            self.observe(batch, started)

    def observe(self, batch: list[Call], started: float) -> None:
        try:
            _observer(self.batcher.name, len(batch), [started - call.arrived for call in batch])
        except Exception:  # counting never fails a batch; the observer logs its own failures
            pass


class Batcher:
    """The batched function: called with one input, it returns that input's result."""

    def __init__(self, function: Callable[[list], Sequence], max_size: int, max_wait: float):
        functools.update_wrapper(self, function)
        self.function = function
        self.name = function.__name__
        self.max_size = max_size
        self.max_wait = max_wait
        self._dispatchers: dict[int, Dispatcher] = {}  # by process id: a forked worker makes its own

    def __call__(self, item):
        call = Call(item)
        self._dispatcher().submit(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def _dispatcher(self) -> Dispatcher:
        pid = os.getpid()
        # setdefault: two threads' first calls at once get one dispatcher (its thread starts at submit).
        return self._dispatchers.get(pid) or self._dispatchers.setdefault(pid, Dispatcher(self))

    def answer(self, batch: list[Call]) -> None:
        """Run the function on the batch's inputs and give each call its result or error."""
        try:
            results = in_os_thread(self.function, [call.item for call in batch])
            # A list, tuple or array of one result per input, in order; not a mapping, set or string.
            if not isinstance(results, Collection) or isinstance(results, str | bytes | Mapping | Set):
                raise BatchResultError(f"{self.name} returned a {type(results).__name__}, not a list of results")
            if len(results) != len(batch):
                raise BatchResultError(f"{self.name} returned {len(results)} results for {len(batch)} inputs")
            for call, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    call.error = result
                else:
                    call.result = result
        except BaseException as error:
            for call in batch:
                call.error = error
            if not isinstance(error, Exception):  # the process or greenlet is to end: so is the dispatcher
                raise
        finally:
            for call in batch:
                call.done.set()


def batched(max_size: int = 32, max_wait_ms: float = 5) -> Callable[[Callable[[list], Sequence]], Batcher]:
    """Decorate `function(inputs: list) -> list` so that it is called with one input and runs with
    up to `max_size` of them, waiting at most `max_wait_ms` for a batch to fill."""
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
        raise ValueError(f"batched: max_size={max_size!r} is not valid: expected a whole number from 1")
    if not isinstance(max_wait_ms, int | float) or isinstance(max_wait_ms, bool) or not 0 <= max_wait_ms <= 60_000:
        raise ValueError(f"batched: max_wait_ms={max_wait_ms!r} is not valid: expected milliseconds from 0 to 60000")

    def decorate(function: Callable[[list], Sequence]) -> Batcher:
        return Batcher(function, max_size, max_wait_ms / 1000)
    return decorate

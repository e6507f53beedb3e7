"""deploy.batching without Docker: the calls of concurrent callers gathered into batches
(max_size, max_wait_ms), each caller's own result or error, and the same under gevent's
patched threading in a worker forked from a master that imported (and used) the function,
as gunicorn's preloading master does. The container's side, through nginx: tests/test_models.py."""

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from flask import Flask
from prometheus_client import REGISTRY

import deploy
from deploy import batching
from deploy.batching import BatchResultError, batched
from deploy.settings import Settings
from deploy.wsgi import wrap
from tests.conftest import ROOT
from tests.containers import wait_until


@pytest.fixture
def batches():
    """Each batch's (function, size, waits), as the stack's metrics would see them."""
    seen = []
    batching.set_observer(lambda name, size, waits: seen.append((name, size, waits)))
    yield seen
    batching.set_observer(batching.count_nothing)


class Gate:
    """Holds the batched function's first batch until opened, so that the calls made meanwhile
    are pending together, whatever the machine's speed."""

    def __init__(self):
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self, inputs: list) -> None:
        if not self.opened.is_set():
            self.entered.set()
            assert self.opened.wait(10), "the gate was never opened"


def calls(function, *items) -> list[Future]:
    """Each item passed to `function` by a caller thread of its own, all at once."""
    pool = ThreadPoolExecutor(len(items))
    futures = [pool.submit(function, item) for item in items]
    pool.shutdown(wait=False)
    return futures


def pending(function) -> int:
    return len(function._dispatcher().pending)


def test_the_seam_exports_batched_and_post_fork_without_flask():
    assert deploy.batched is batched
    # A module of tasks or of a model imported by the job consumer, where Flask may not be.
    without_flask = ("import sys; sys.modules['flask'] = None\n"
                     "from deploy import batched, post_fork\n"
                     "print(batched(max_size=2)(lambda inputs: inputs)('x'), post_fork(print) is print)")
    run = subprocess.run([sys.executable, "-c", without_flask], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (0, "x True\n"), run.stderr


def test_calls_that_arrive_while_a_batch_runs_are_gathered_up_to_max_size(batches):
    gate = Gate()

    @batched(max_size=4, max_wait_ms=0)
    def double(inputs):
        gate.hold(inputs)
        return [2 * item for item in inputs]

    first = calls(double, 0)
    assert gate.entered.wait(10), "the first batch never started"
    rest = calls(double, *range(1, 7))
    wait_until(lambda: pending(double) == 6, 10, "six calls pending while the first batch runs")
    gate.opened.set()
    assert [future.result(10) for future in first + rest] == [0, 2, 4, 6, 8, 10, 12]
    assert [size for _, size, _ in batches] == [1, 4, 2]
    assert {name for name, _, _ in batches} == {"double"}


def test_a_lone_call_waits_max_wait_ms_for_company_then_runs_alone(batches):
    @batched(max_size=8, max_wait_ms=100)
    def identity(inputs):
        return inputs

    assert identity("only") == "only"
    [(_, size, [wait])] = batches
    assert size == 1
    assert 0.1 <= wait < 5


def test_a_full_batch_starts_without_waiting_for_max_wait_ms(batches):
    @batched(max_size=3, max_wait_ms=60_000)
    def identity(inputs):
        return inputs

    started = time.monotonic()
    assert [future.result(30) for future in calls(identity, "a", "b", "c")] == ["a", "b", "c"]
    assert time.monotonic() - started < 30  # not the minute max_wait_ms allows
    assert [size for _, size, _ in batches] == [3]


def gathered(function, gate: Gate, *items) -> list[Future]:
    """`items` called at once, gathered into one batch behind a first call (item None)."""
    first = calls(function, None)
    assert gate.entered.wait(10), "the first batch never started"
    rest = calls(function, *items)
    wait_until(lambda: pending(function) == len(items), 10, "the calls pending")
    gate.opened.set()
    return first + rest


def test_an_exception_the_function_raises_reaches_every_caller_of_the_batch():
    gate = Gate()

    @batched(max_size=8, max_wait_ms=0)
    def broken(inputs):
        gate.hold(inputs)
        if None not in inputs:
            raise ValueError("the model is broken")
        return inputs

    first, *rest = gathered(broken, gate, 1, 2, 3)
    assert first.result(10) is None
    for future in rest:
        with pytest.raises(ValueError, match="the model is broken"):
            future.result(10)


def test_an_exception_returned_in_an_items_place_reaches_that_caller_only():
    gate = Gate()

    @batched(max_size=8, max_wait_ms=0)
    def inverse(inputs):
        gate.hold(inputs)
        return [None if item is None else ZeroDivisionError(f"{item} has no inverse") if item == 0 else 1 / item
                for item in inputs]

    _, half, zero, quarter = gathered(inverse, gate, 2, 0, 4)
    assert (half.result(10), quarter.result(10)) == (0.5, 0.25)
    with pytest.raises(ZeroDivisionError, match="0 has no inverse"):
        zero.result(10)


@pytest.mark.parametrize("result, message", [
    (lambda inputs: inputs[:-1], "short returned 3 results for 4 inputs"),
    (lambda inputs: inputs + [1], "short returned 5 results for 4 inputs"),
    (lambda inputs: {"labels": inputs}, "short returned a dict, not a list of results"),
    (lambda inputs: None, "short returned a NoneType, not a list of results"),
])
def test_a_result_that_does_not_match_the_inputs_is_an_error_for_every_caller(result, message):
    gate = Gate()

    @batched(max_size=8, max_wait_ms=0)
    def short(inputs):
        gate.hold(inputs)
        return inputs if inputs == [None] else result(inputs)

    first, *rest = gathered(short, gate, 1, 2, 3, 4)
    first.result(10)
    for future in rest:
        with pytest.raises(BatchResultError, match=message):
            future.result(10)


@pytest.mark.parametrize("arguments, message", [
    ({"max_size": 0}, "max_size=0 is not valid: expected a whole number from 1"),
    ({"max_size": 2.5}, "max_size=2.5 is not valid"),
    ({"max_wait_ms": -1}, "max_wait_ms=-1 is not valid: expected milliseconds from 0 to 60000"),
    ({"max_wait_ms": "5"}, "max_wait_ms='5' is not valid"),
])
def test_bad_arguments_are_refused_when_the_function_is_decorated(arguments, message):
    with pytest.raises(ValueError, match=message):
        batched(**arguments)


def test_with_the_stack_metrics_on_batches_are_counted_by_function():
    @batched(max_size=4, max_wait_ms=0)
    def counted_model(inputs):
        return inputs

    wrap(Flask(__name__), Settings.from_env())  # METRICS_PORT's default: on
    try:
        counted_model(1)
    finally:
        batching.set_observer(batching.count_nothing)
    labels = {"function": "counted_model"}
    assert REGISTRY.get_sample_value("flask_stack_batch_size_count", labels) == 1
    assert REGISTRY.get_sample_value("flask_stack_batch_size_sum", labels) == 1
    assert REGISTRY.get_sample_value("flask_stack_batch_wait_seconds_count", labels) == 1


def test_without_metrics_nothing_is_counted(monkeypatch):
    monkeypatch.setenv("METRICS_PORT", "0")
    wrap(Flask(__name__), Settings.from_env())
    assert batching._observer is batching.count_nothing


# Run in a process of its own: the master imports the module and calls the function (its
# dispatcher is an OS thread there), then forks a worker that patches gevent, as gunicorn's
# gevent worker does, and calls it from 64 greenlets while another greenlet keeps ticking.
FORKED_GEVENT_WORKER = r"""
import hashlib, json, os, sys, time
from deploy.batching import batched, set_observer

sizes = []
set_observer(lambda name, size, waits: sizes.append(size))

@batched(max_size=16, max_wait_ms=5)
def digest(inputs):
    # Native code that releases the GIL (PBKDF2), as a model's does.
    return [hashlib.pbkdf2_hmac("sha256", str(item).encode(), b"salt", 40_000).hex() for item in inputs]

assert digest(0) == hashlib.pbkdf2_hmac("sha256", b"0", b"salt", 40_000).hex()  # in the master
pid = os.fork()
if pid:
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))

from gevent import monkey
monkey.patch_all()
import gevent
from deploy.threads import under_gevent

ticks = []
def tick():
    while True:
        ticks.append(time.monotonic())
        gevent.sleep(0.002)

ticker = gevent.spawn(tick)
sizes.clear()
started = time.monotonic()
callers = [gevent.spawn(digest, item) for item in range(64)]
gevent.joinall(callers, timeout=60)
elapsed = time.monotonic() - started
ticker.kill()
during = [tick for tick in ticks if tick <= started + elapsed]
gaps = [later - earlier for earlier, later in zip(during, during[1:])]
print(json.dumps({"under_gevent": under_gevent(), "sizes": sizes, "elapsed": elapsed, "longest_gap": max(gaps),
                  "right": [caller.value for caller in callers]
                           == [hashlib.pbkdf2_hmac("sha256", str(item).encode(), b"salt", 40_000).hex()
                               for item in range(64)]}))
"""


def test_under_gevent_in_a_forked_worker_callers_are_greenlets_and_the_loop_keeps_serving():
    run = subprocess.run([sys.executable, "-c", FORKED_GEVENT_WORKER], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["under_gevent"] and result["right"]
    assert sum(result["sizes"]) == 64
    assert max(result["sizes"]) > 1  # gathered, not one call a batch
    # The batches ran in an OS thread: the ticking greenlet was never held for a batch's time.
    assert result["longest_gap"] < result["elapsed"] / 4, result

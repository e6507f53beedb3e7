"""What an app runs in every gunicorn worker before it serves: `post_fork(function)`.

With PRELOAD_APP=true the app is imported once, in gunicorn's master, and each worker is a
fork of it. Memory is shared by the fork; threads, open sockets, database connections and
CUDA contexts are not: a forked worker has none of the master's threads (a pool made at
import waits for ever on them), and two processes on one connection mix their messages. So
an app opens those in a function registered here, which gunicorn_config.py's
`post_worker_init` calls in each worker once it has started and loaded the app (with or
without PRELOAD_APP), before the worker takes a request:

    from deploy import post_fork

    @post_fork
    def open_session():
        state.session = onnxruntime.InferenceSession(model_bytes)   # its thread pool, per worker
"""

from collections.abc import Callable

_functions: list[Callable[[], object]] = []


def post_fork(function: Callable[[], object]) -> Callable[[], object]:
    """Register `function` (no arguments) to run in every worker before it serves; returns it,
    so it works as a decorator."""
    _functions.append(function)
    return function


def run_post_fork_functions() -> None:
    """In the worker, in the order they were registered. One that raises stops the worker's
    boot, as an app that cannot be imported does."""
    for function in _functions:
        function()

"""CPU-heavy work inside a request, without stalling the worker's event loop.

A gevent worker serves all its requests on one event loop: code that computes for 200 ms
holds every other request of that worker for 200 ms. `in_os_thread` runs such work in a
real OS thread (gevent's thread pool, CPU_THREADS per worker, its threads started only when
used) and lets the loop serve others meanwhile. It helps where the work releases the GIL,
as native code does (hashlib, NumPy, PyTorch inference); pure-Python loops hold the GIL and
belong in the job queue with JOB_WORKER_TYPE=process.
"""

from collections.abc import Callable
from typing import TypeVar

Result = TypeVar("Result")


def under_gevent() -> bool:
    from gevent import monkey  # noqa: PLC0415  (gevent only where it runs)
    return monkey.is_module_patched("threading")


def size_thread_pool(threads: int) -> None:
    """At most `threads` OS threads in this worker's pool: more than the CPUs only adds contention."""
    if under_gevent():
        import gevent  # noqa: PLC0415
        gevent.get_hub().threadpool.maxsize = threads


def in_os_thread(function: Callable[..., Result], *args) -> Result:
    """`function(*args)` in an OS thread of the hub's thread pool under a gevent worker;
    called directly elsewhere (Flask's test client, a sync worker, the job consumer)."""
    if not under_gevent():
        return function(*args)
    import gevent  # noqa: PLC0415
    return gevent.get_hub().threadpool.apply(function, args)

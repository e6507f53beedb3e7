"""`GET /jobs/<id>?wait=N`: answer when the job ends, or after N seconds.

Each web worker process has one poller, a thread (a greenlet in gunicorn's gevent worker),
that asks the store every POLL_INTERVAL for the status of every job some request waits for,
in one query, and wakes the requests of those that ended. A waiting request costs an event,
not a thread, nor a query of its own: thousands of waits are one query a turn. The store is
the truth, so a wait outlives a consumer's restart.
"""

import logging
import os
import threading
import time

from deploy.jobs.store import FINAL

POLL_INTERVAL = 0.25
log = logging.getLogger("deploy.jobs")


class Waits:
    def __init__(self, store):
        self.store = store
        self._waiting: dict[str, list[threading.Event]] = {}
        self._lock = threading.Lock()
        self._poller_pid = None

    def wait(self, job_id: str, seconds: float) -> None:
        """Return when job `job_id` has ended (or is gone), or after `seconds`."""
        event = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, []).append(event)
            if self._poller_pid != os.getpid():  # one poller per process (gunicorn forks its workers)
                self._poller_pid = os.getpid()
                threading.Thread(target=self._poll, name="job-waits", daemon=True).start()
        try:
            event.wait(seconds)
        finally:
            with self._lock:
                events = self._waiting.get(job_id, [])
                if event in events:
                    events.remove(event)
                if not events:
                    self._waiting.pop(job_id, None)

    def _poll(self) -> None:
        while True:
            time.sleep(POLL_INTERVAL)
            with self._lock:
                job_ids = list(self._waiting)
            if not job_ids:
                continue
            try:
                records = self.store.get_many(job_ids)
            except Exception:  # the store is unreachable for now: the waits go on until their time
                log.exception("could not read the jobs that requests wait for")
                continue
            with self._lock:
                for job_id in job_ids:
                    record = records.get(job_id)
                    if record is None or record["status"] in FINAL:
                        for event in self._waiting.pop(job_id, []):
                            event.set()

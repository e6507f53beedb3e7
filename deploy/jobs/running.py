"""The jobs a consumer process runs now, and the watch that keeps their records: `progress()`
for the tasks, and one thread per process (a greenlet with JOB_WORKER_TYPE=greenlet) that

- renews the leases of its running jobs every JOB_LEASE_SECONDS/3, each at its attempt;
- writes the progress the tasks reported, at most every WATCH_INTERVAL;
- stops a job whose cancel was asked (DELETE /jobs/<id> while it runs): it ends the record
  `canceled`, then stops the task, the way its worker type allows: a thread at its next
  `progress()` call; a greenlet at its next switch (a gevent sleep or I/O); a process at
  once, by a signal whose handler raises in the task, and if the task is inside native code
  that does not return, by ending the process (huey's consumer starts another in its slot).

A task's timeout (`@task(timeout=...)`) is huey's, by the same means: a process's alarm
signal, a greenlet's gevent.Timeout, a thread's next `progress()` call.
"""

import contextvars
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from huey.exceptions import CancelExecution

from deploy.settings import Settings

WATCH_INTERVAL = 0.5  # seconds between two looks at the running jobs' records
HARD_STOP_AFTER = 3.0  # seconds a process's task may take to stop after its cancel signal
CANCEL_SIGNAL = signal.SIGUSR1  # in a process worker: raise JobCanceled in the task

log = logging.getLogger("deploy.jobs")
CURRENT = contextvars.ContextVar("current_job", default=None)  # the Run of the job this thread or greenlet runs


class JobCanceled(CancelExecution):
    """Raised inside a task whose cancel was asked while it ran."""

    def __init__(self, job_id: str = ""):
        super().__init__(retry=False)
        self.job_id = job_id

    def __str__(self):
        return f"job {self.job_id} was canceled while it ran"


@dataclass
class Run:
    """One running attempt of a job in this process."""
    job_id: str
    attempt: int
    task: object  # huey's task: its timeout
    greenlet: object = None  # the greenlet running it (JOB_WORKER_TYPE=greenlet)
    progress: dict | None = None
    progress_written: dict | None = None
    stopped: bool = False
    ended: bool = False
    stop_asked_at: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def raise_if_stopped(self) -> None:
        if self.stopped and not self.ended:
            raise JobCanceled(self.job_id)
        self.task.check_timeout()  # huey's: TaskTimeout past the task's timeout


def progress(fraction: float, message: str = "") -> None:
    """Report how far the running job is: `fraction` from 0 to 1, and a short message. Its
    record shows `"progress": {"fraction": ..., "message": ...}`, kept after the end. Raises
    inside the task when its cancel was asked or its timeout passed, so that a task that
    reports progress stops there. Outside a job (the task called directly) it does nothing."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise ValueError(f"progress: fraction={fraction!r}: expected a number from 0 to 1")
    if not isinstance(message, str):
        raise ValueError(f"progress: message={message!r}: expected a string")
    run = CURRENT.get()
    if run is None:
        return
    run.progress = {"fraction": float(fraction), "message": message[:500]}
    run.raise_if_stopped()


class Runs:
    """The running jobs of this process and their watch (module docstring)."""

    def __init__(self, queue, settings: Settings):
        self.queue = queue
        self.worker_type = settings.job_worker_type
        self.lease_seconds = settings.job_lease_seconds
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._watch_pid = None
        self._tokens: dict[str, contextvars.Token] = {}

    def started(self, task, attempt: int) -> Run:
        """Called in the thread, greenlet or process that runs the task, before it runs."""
        run = Run(task.id, attempt, task, greenlet=self._current_greenlet())
        with self._lock:
            self._runs[task.id] = run
            if self._watch_pid != os.getpid():  # one watch per process (process workers are forked)
                self._watch_pid = os.getpid()
                if self.worker_type == "process":
                    signal.signal(CANCEL_SIGNAL, self._raise_in_task)
                threading.Thread(target=self._watch, name="job-watch", daemon=True).start()
        self._tokens[task.id] = CURRENT.set(run)
        return run

    def ended(self, job_id: str) -> Run | None:
        """Called when the task has returned, raised or been interrupted: its Run, or None if
        this process was not running it."""
        with self._lock:
            run = self._runs.pop(job_id, None)
        if run is None:
            return None
        with run.lock:
            run.ended = True
        token = self._tokens.pop(job_id, None)
        if token is not None:
            try:
                CURRENT.reset(token)
            except ValueError:  # set in another context (an interrupted greenlet): nothing to reset
                pass
        return run

    def _current_greenlet(self):
        if self.worker_type != "greenlet":
            return None
        import gevent  # noqa: PLC0415  (the greenlet worker type only)
        return gevent.getcurrent()

    def _raise_in_task(self, signum, frame) -> None:
        """The cancel signal's handler, in a process worker's main thread, where its task runs."""
        with self._lock:
            stopped = [run for run in self._runs.values() if run.stopped and not run.ended]
        if stopped:
            raise JobCanceled(stopped[0].job_id)

    # --- the watch ---------------------------------------------------------------------
    def _watch(self) -> None:
        next_renewal = time.monotonic() + self.lease_seconds / 3
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                runs = list(self._runs.values())
            if not runs:
                continue
            try:
                if time.monotonic() >= next_renewal:
                    next_renewal = time.monotonic() + self.lease_seconds / 3
                    self.queue.store.renew({run.job_id: run.attempt for run in runs},
                                           self.queue.store.now() + self.lease_seconds)
                self._write_progress(runs)
                self._stop_canceled(runs)
            except Exception:  # the store is unreachable for now: the next turn tries again
                log.exception("could not keep the records of jobs %s", [run.job_id for run in runs])

    def _write_progress(self, runs: list[Run]) -> None:
        for run in runs:
            if run.progress is not None and run.progress != run.progress_written:
                reported = run.progress
                self.queue.store.change(run.job_id, ("running",), {"progress": reported}, attempt=run.attempt)
                run.progress_written = reported

    def _stop_canceled(self, runs: list[Run]) -> None:
        for run in runs:
            if run.stop_asked_at is not None:
                if self.worker_type == "process" and time.monotonic() - run.stop_asked_at > HARD_STOP_AFTER:
                    log.warning("job %s did not stop within %g s of its cancel (native code?): ending this "
                                "worker process; the consumer starts another", run.job_id, HARD_STOP_AFTER)
                    os._exit(1)
        asked = [run for run in runs if run.stop_asked_at is None]
        if not asked:
            return
        records = self.queue.store.get_many(run.job_id for run in asked)
        for run in asked:
            record = records.get(run.job_id)
            if record and record["status"] == "running" and record["attempt"] == run.attempt \
                    and record["cancel_requested_at"]:
                self._stop(run)

    def _stop(self, run: Run) -> None:
        change = self.queue.store.change(run.job_id, ("running",), {
            "status": "canceled", "finished_at": self.queue.now_iso(), "error": "canceled while it ran",
            "progress": run.progress}, attempt=run.attempt)
        if not change.changed:
            return  # it ended meanwhile
        self.queue.finished(change.record)
        log.info("job %s canceled while it ran: stopping it", run.job_id)
        with run.lock:
            if run.ended:
                return
            run.stopped = True
            run.stop_asked_at = time.monotonic()
        if self.worker_type == "greenlet":
            import gevent  # noqa: PLC0415
            gevent.kill(run.greenlet, JobCanceled(run.job_id))  # raised at its next switch; does not wait
        elif self.worker_type == "process":
            os.kill(os.getpid(), CANCEL_SIGNAL)
        # A thread stops at its task's next progress() call.

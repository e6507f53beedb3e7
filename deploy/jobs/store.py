"""The job records, beside huey's queue, in SQLite (deploy/jobs/sqlite_store.py) or Redis
(deploy/jobs/redis_store.py): what both stores share.

A record is the JSON object `GET /jobs/<id>` answers. Every change of status is a
compare-and-set: it happens only if the record is still in one of the statuses the change
starts from (and, where given, at the same attempt, or with its lease still expired), so two
processes racing (a cancel and a consumer's start, two consumers reaping one lease) can never
both win, and every record follows the status diagram in deploy/jobs/queue.py. A change that
hands the job to a consumer writes huey's message in the same transaction, so a job is never
left queued without one, nor run without its record.

Each store also keeps, per scheduled task, the last tick claimed (deploy/jobs/scheduling.py),
and the Idempotency-Keys of POST /jobs.
"""

import base64
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

STATUSES = ("scheduled", "queued", "running", "done", "failed", "interrupted", "canceled")
LIVE = ("scheduled", "queued", "running")
FINAL = ("done", "failed", "interrupted", "canceled")

Changes = dict | Callable[[dict], dict]


@dataclass(frozen=True)
class Transition:
    changed: bool
    record: dict | None  # the record after the change, or as it was found (None: no such job)


@dataclass(frozen=True)
class Idempotency:
    """An Idempotency-Key, the fingerprint of the request's body, and how long the key holds."""
    key: str
    fingerprint: str
    seconds: float  # 0: for ever


@dataclass(frozen=True)
class Inserted:
    record: dict | None  # the new record, or the first job of the same key and body
    new: bool
    conflict: bool = False  # the key was used with another body


@dataclass(frozen=True)
class ScheduleState:
    """Where a scheduled task is, shared by every consumer: the last tick claimed, the job of
    the last run, and how many ticks ran, were skipped (a run still live) or missed."""
    last_tick: float
    last_job: str | None = None
    runs: int = 0
    skipped: int = 0
    missed: int = 0
    last_success: float | None = None


@dataclass(frozen=True)
class Tick:
    """A scheduled task's claim of a tick: the new last tick, the ticks missed before it, and
    the run to start (record, its creation time, huey's message), or None to only move on."""
    task: str
    previous: float | None  # the last tick this consumer saw: the claim fails if it moved meanwhile
    tick: float
    missed: int = 0
    run: tuple[dict, float, bytes] | None = None
    overlap: bool = False  # start the run even while another run of the task is live


def apply_changes(record: dict, changes: Changes) -> dict:
    return {**record, **(changes(record) if callable(changes) else changes)}


def allowed(record: dict, lease: float | None, from_statuses: Iterable[str], attempt: int | None,
            lease_expired_at: float | None) -> bool:
    return (record["status"] in from_statuses
            and (attempt is None or record["attempt"] == attempt)
            and (lease_expired_at is None or (lease is not None and lease < lease_expired_at)))


def fingerprint(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def encode_cursor(created: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created!r} {job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """ValueError if it is not one that encode_cursor made."""
    try:
        created, job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split(" ")
        return float(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor {cursor[:64]!r} is not one that GET /jobs gave") from None

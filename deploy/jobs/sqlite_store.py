"""The job records in SQLite: tables in the queue's own database file (JOB_DATABASE), beside
huey's, on huey's connection. Every change is one transaction (huey's `BEGIN EXCLUSIVE`:
one writer at a time), huey's message included (its table `task`, as huey's own enqueue
writes it). Finished records and expired Idempotency-Keys are deleted by the consumer's
cleanup (delete_expired)."""

import json
import time
from collections.abc import Iterable

from deploy.jobs.store import (
    FINAL,
    LIVE,
    Changes,
    Idempotency,
    Inserted,
    ScheduleState,
    Tick,
    Transition,
    allowed,
    apply_changes,
    decode_cursor,
    encode_cursor,
)

SCHEMA = (
    "create table if not exists job_records ("
    " id text primary key, status text not null, task text not null, attempt integer not null,"
    " created real not null, lease_until real, expires real, record text not null)",
    "create table if not exists job_schedules ("
    " task text primary key, last_tick real not null, last_job text, runs integer not null default 0,"
    " skipped integer not null default 0, missed integer not null default 0, last_success real)",
    "create table if not exists job_idempotency ("
    " key text primary key, fingerprint text not null, job_id text not null, expires real)",
)
# Columns added since the first release: added to an older database at start.
ADDED_COLUMNS = {"run_at": "real"}
INDEXES = (
    "create index if not exists job_records_status on job_records (status, lease_until)",
    "create index if not exists job_records_expires on job_records (expires)",
    "create index if not exists job_records_by_created on job_records (created, id)",
    "create index if not exists job_records_by_status on job_records (status, created, id)",
    "create index if not exists job_records_by_task on job_records (task, created, id)",
    "create index if not exists job_records_run_at on job_records (status, run_at)",
    "create index if not exists job_idempotency_expires on job_idempotency (expires)",
)
SCHEDULE_COLUMNS = "last_tick, last_job, runs, skipped, missed, last_success"


class SqliteStore:
    def __init__(self, storage, result_ttl: float):
        """`storage`: huey's SqliteStorage, whose connection (and lock) this shares."""
        self.storage = storage
        self.result_ttl = result_ttl
        with storage.db(commit=True) as cursor:
            for statement in SCHEMA:
                cursor.execute(statement)
            columns = {row[1] for row in cursor.execute("pragma table_info(job_records)")}
            for name, kind in ADDED_COLUMNS.items():
                if name not in columns:
                    cursor.execute(f"alter table job_records add column {name} {kind}")
            for statement in INDEXES:
                cursor.execute(statement)

    def now(self) -> float:
        return time.time()

    def ping(self) -> None:
        self.storage.sql("select count(*) from job_records where 0", results=True)

    def _enqueue(self, cursor, message: bytes) -> None:
        """huey's message, in the transaction of `cursor` (huey's SqliteStorage.enqueue)."""
        cursor.execute("insert into task (queue, data, priority) values (?, ?, ?)", (self.storage.name, message, 0))

    def _expires(self, record: dict) -> float | None:
        return self.now() + self.result_ttl if self.result_ttl and record["status"] in FINAL else None

    def _insert_record(self, cursor, record: dict, created: float, message: bytes | None,
                       run_at: float | None) -> None:
        cursor.execute(
            "insert into job_records (id, status, task, attempt, created, run_at, record) values (?, ?, ?, ?, ?, ?, ?)",
            (record["id"], record["status"], record["task"], record["attempt"], created, run_at, json.dumps(record)))
        if message is not None:
            self._enqueue(cursor, message)

    def insert(self, record: dict, created: float, *, message: bytes | None = None, run_at: float | None = None,
               idempotency: Idempotency | None = None) -> Inserted:
        with self.storage.db(commit=True) as cursor:
            if idempotency is not None:
                row = cursor.execute("select fingerprint, job_id from job_idempotency where key = ? and "
                                     "(expires is null or expires >= ?)", (idempotency.key, self.now())).fetchone()
                if row is not None:
                    first = cursor.execute("select record from job_records where id = ?", (row[1],)).fetchone()
                    if row[0] != idempotency.fingerprint:
                        return Inserted(json.loads(first[0]) if first else None, new=False, conflict=True)
                    if first is not None:
                        return Inserted(json.loads(first[0]), new=False)
                expires = self.now() + idempotency.seconds if idempotency.seconds else None
                cursor.execute("insert or replace into job_idempotency (key, fingerprint, job_id, expires) "
                               "values (?, ?, ?, ?)", (idempotency.key, idempotency.fingerprint, record["id"], expires))
            self._insert_record(cursor, record, created, message, run_at)
        return Inserted(record, new=True)

    def get(self, job_id: str) -> dict | None:
        rows = self.storage.sql("select record from job_records where id = ?", (job_id,), results=True)
        return json.loads(rows[0][0]) if rows else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, dict]:
        ids, records = list(job_ids), {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            rows = self.storage.sql(f"select id, record from job_records where id in ({', '.join('?' * len(chunk))})",
                                    chunk, results=True)
            records.update((job_id, json.loads(record)) for job_id, record in rows)
        return records

    def change(self, job_id: str, from_statuses: Iterable[str], changes: Changes, *,
               attempt: int | None = None, lease_expired_at: float | None = None,
               lease_until: float | None = None, run_at: float | None = None,
               message: bytes | None = None) -> Transition:
        with self.storage.db(commit=True) as cursor:
            row = cursor.execute("select record, lease_until from job_records where id = ?", (job_id,)).fetchone()
            if row is None:
                return Transition(False, None)
            record = json.loads(row[0])
            if not allowed(record, row[1], from_statuses, attempt, lease_expired_at):
                return Transition(False, record)
            new = apply_changes(record, changes)
            if new["status"] != "running":
                lease = None
            elif lease_until is not None:
                lease = lease_until
            else:
                lease = row[1]  # a change while it runs (progress, a cancel asked) keeps its lease
            cursor.execute(
                "update job_records set status = ?, attempt = ?, lease_until = ?, expires = ?, run_at = ?, "
                "record = ? where id = ?",
                (new["status"], new["attempt"], lease, self._expires(new),
                 run_at if new["status"] == "scheduled" else None, json.dumps(new), job_id))
            if message is not None:
                self._enqueue(cursor, message)
            return Transition(True, new)

    def renew(self, leases: dict[str, int], until: float) -> None:
        """Extend the leases of running jobs, each only at the attempt its consumer runs."""
        if leases:
            with self.storage.db(commit=True) as cursor:
                cursor.executemany("update job_records set lease_until = ? where id = ? and status = 'running' "
                                   "and attempt = ?", [(until, job_id, attempt) for job_id, attempt in leases.items()])

    def expired_leases(self, now: float) -> list[dict]:
        rows = self.storage.sql("select record from job_records where status = 'running' and lease_until < ?",
                                (now,), results=True)
        return [json.loads(row[0]) for row in rows]

    def due_scheduled(self, now: float, limit: int) -> list[dict]:
        rows = self.storage.sql("select record from job_records where status = 'scheduled' and run_at <= ? "
                                "order by run_at limit ?", (now, limit), results=True)
        return [json.loads(row[0]) for row in rows]

    def delete_expired(self, now: float) -> int:
        with self.storage.db(commit=True) as cursor:
            cursor.execute("delete from job_idempotency where expires < ?", (now,))
            return cursor.execute("delete from job_records where expires < ?", (now,)).rowcount

    def live_counts(self) -> dict[tuple[str, str], int]:
        rows = self.storage.sql(f"select status, task, count(*) from job_records where status in "
                                f"({', '.join('?' * len(LIVE))}) group by status, task", LIVE, results=True)
        return {(status, task): count for status, task, count in rows}

    def status_counts(self) -> dict[str, int]:
        rows = self.storage.sql("select status, count(*) from job_records group by status", results=True)
        return dict(rows)

    def oldest_queued(self) -> float | None:
        rows = self.storage.sql("select min(created) from job_records where status = 'queued'", results=True)
        return rows[0][0]

    def queued_count(self) -> int:
        return self.storage.sql("select count(*) from job_records where status = 'queued'", results=True)[0][0]

    def page(self, status: str | None, task: str | None, cursor: str | None,
             limit: int) -> tuple[list[dict], str | None]:
        """Records newest first, `limit` at most, after `cursor` (the `next` of the page before)."""
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if task is not None:
            where.append("task = ?")
            params.append(task)
        if cursor is not None:
            created, job_id = decode_cursor(cursor)
            where.append("(created < ? or (created = ? and id < ?))")
            params += [created, created, job_id]
        rows = self.storage.sql(
            f"select record, created, id from job_records {'where ' + ' and '.join(where) if where else ''} "
            "order by created desc, id desc limit ?", [*params, limit + 1], results=True)
        more = len(rows) > limit
        rows = rows[:limit]
        return [json.loads(row[0]) for row in rows], encode_cursor(rows[-1][1], rows[-1][2]) if more else None

    # --- scheduled tasks -----------------------------------------------------------------

    def schedule_states(self) -> dict[str, ScheduleState]:
        rows = self.storage.sql(f"select task, {SCHEDULE_COLUMNS} from job_schedules", results=True)
        return {row[0]: ScheduleState(*row[1:]) for row in rows}

    def claim_tick(self, tick: Tick) -> str:
        """Move the task's last tick to `tick.tick`, if no consumer did since `tick.previous`:
        "ran" (the run inserted and queued), "skipped" (a run of it is still live), "moved" (no
        run asked: only the last tick moved) or "lost"."""
        with self.storage.db(commit=True) as cursor:
            row = cursor.execute("select last_tick from job_schedules where task = ?", (tick.task,)).fetchone()
            if (row[0] if row else None) != tick.previous:
                return "lost"
            outcome = "moved"
            if tick.run is not None:
                live = cursor.execute(f"select id from job_records where task = ? and status in "
                                      f"({', '.join('?' * len(LIVE))}) limit 1", (tick.task, *LIVE)).fetchone()
                outcome = "skipped" if live and not tick.overlap else "ran"
            if outcome == "ran":
                record, created, message = tick.run
                self._insert_record(cursor, record, created, message, None)
            cursor.execute(
                "insert into job_schedules (task, last_tick, last_job, runs, skipped, missed) "
                "values (?, ?, ?, ?, ?, ?) "
                "on conflict (task) do update set last_tick = excluded.last_tick, "
                "last_job = coalesce(excluded.last_job, last_job), runs = runs + excluded.runs, "
                "skipped = skipped + excluded.skipped, missed = missed + excluded.missed",
                (tick.task, tick.tick, tick.run[0]["id"] if outcome == "ran" else None, int(outcome == "ran"),
                 int(outcome == "skipped"), tick.missed))
            return outcome

    def schedule_succeeded(self, task: str, when: float) -> None:
        self.storage.sql("update job_schedules set last_success = ? where task = ?", (when, task), commit=True)

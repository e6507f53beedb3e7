"""The job records: one per job, beside huey's queue, in SQLite or in Redis.

A record is the JSON object `GET /jobs/<id>` answers. Every change of status is a
compare-and-set: it happens only if the record is still in one of the statuses the change
starts from (and, where given, at the same attempt, or with its lease still expired), so
two processes racing (a cancel and a consumer's start, two consumers reaping one lease)
can never both win, and every record follows the status diagram in deploy/jobs/queue.py.

SQLite: a table in the queue's own database file, changed inside `BEGIN IMMEDIATE`.
Redis: a hash per job, changed in a WATCH/MULTI transaction (redis-py's `transaction`),
with sorted sets of the queued (by creation) and running (by lease) jobs, and per-task
counts of both. Finished records expire after JOB_RESULT_TTL; queued and running never do.
"""

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

LIVE = ("queued", "running")
FINAL = ("done", "failed", "interrupted", "canceled")

Changes = dict | Callable[[dict], dict]


@dataclass(frozen=True)
class Transition:
    changed: bool
    record: dict | None  # the record after the change, or as it was found (None: no such job)


def _apply(record: dict, changes: Changes) -> dict:
    return {**record, **(changes(record) if callable(changes) else changes)}


class SqliteRecords:
    DDL = (
        "create table if not exists job_records ("
        " id text primary key, status text not null, task text not null, attempt integer not null,"
        " created real not null, lease_until real, expires real, record text not null)",
        "create index if not exists job_records_status on job_records (status, lease_until)",
        "create index if not exists job_records_expires on job_records (expires)",
    )

    def __init__(self, storage, result_ttl: float):
        """`storage`: huey's SqliteStorage, whose connection (and lock) this shares."""
        self.storage = storage
        self.result_ttl = result_ttl
        with storage.db(commit=True) as cursor:
            for statement in self.DDL:
                cursor.execute(statement)

    def now(self) -> float:
        return time.time()

    def ping(self) -> None:
        self.storage.sql("select count(*) from job_records where 0", results=True)

    def insert(self, record: dict, created: float) -> None:
        self.storage.sql(
            "insert into job_records (id, status, task, attempt, created, record) values (?, ?, ?, ?, ?, ?)",
            (record["id"], record["status"], record["task"], record["attempt"], created, json.dumps(record)),
            commit=True)

    def get(self, job_id: str) -> dict | None:
        rows = self.storage.sql("select record from job_records where id = ?", (job_id,), results=True)
        return json.loads(rows[0][0]) if rows else None

    def change(self, job_id: str, from_statuses: Iterable[str], changes: Changes, *,
               attempt: int | None = None, lease_expired_at: float | None = None,
               lease_until: float | None = None) -> Transition:
        with self.storage.db(commit=True) as cursor:  # BEGIN EXCLUSIVE: one writer at a time
            row = cursor.execute("select record, lease_until from job_records where id = ?", (job_id,)).fetchone()
            if row is None:
                return Transition(False, None)
            record = json.loads(row[0])
            if not _allowed(record, row[1], from_statuses, attempt, lease_expired_at):
                return Transition(False, record)
            new = _apply(record, changes)
            expires = self.now() + self.result_ttl if self.result_ttl and new["status"] in FINAL else None
            cursor.execute(
                "update job_records set status = ?, attempt = ?, lease_until = ?, expires = ?, record = ? where id = ?",
                (new["status"], new["attempt"], lease_until if new["status"] == "running" else None, expires,
                 json.dumps(new), job_id))
            return Transition(True, new)

    def renew(self, job_ids: Iterable[str], until: float) -> None:
        ids = list(job_ids)
        if ids:
            marks = ", ".join("?" * len(ids))
            self.storage.sql(f"update job_records set lease_until = ? where status = 'running' and id in ({marks})",
                             (until, *ids), commit=True)

    def expired_leases(self, now: float) -> list[dict]:
        rows = self.storage.sql("select record from job_records where status = 'running' and lease_until < ?",
                                (now,), results=True)
        return [json.loads(row[0]) for row in rows]

    def delete_expired(self, now: float) -> int:
        with self.storage.db(commit=True) as cursor:
            return cursor.execute("delete from job_records where expires < ?", (now,)).rowcount

    def live_counts(self) -> dict[tuple[str, str], int]:
        rows = self.storage.sql("select status, task, count(*) from job_records where status in (?, ?) "
                                "group by status, task", LIVE, results=True)
        return {(status, task): count for status, task, count in rows}

    def oldest_queued(self) -> float | None:
        rows = self.storage.sql("select min(created) from job_records where status = 'queued'", results=True)
        return rows[0][0]

    def queued_count(self) -> int:
        return self.storage.sql("select count(*) from job_records where status = 'queued'", results=True)[0][0]


def _allowed(record: dict, lease: float | None, from_statuses: Iterable[str], attempt: int | None,
             lease_expired_at: float | None) -> bool:
    return (record["status"] in from_statuses
            and (attempt is None or record["attempt"] == attempt)
            and (lease_expired_at is None or (lease is not None and lease < lease_expired_at)))


class RedisRecords:
    def __init__(self, storage, result_ttl: float):
        """`storage`: huey's RedisStorage, whose client this shares."""
        import redis  # noqa: PLC0415  (only with REDIS_URL: a SQLite queue never needs it)

        self.watch_error = redis.WatchError
        self.conn = storage.conn
        self.result_ttl = result_ttl
        self.prefix = f"flask-stack.jobs.{storage.name}"
        self.queued_key, self.running_key = f"{self.prefix}.queued", f"{self.prefix}.running"

    def record_key(self, job_id: str) -> str:
        return f"{self.prefix}.record.{job_id}"

    def count_key(self, status: str) -> str:
        """A hash: task -> how many of its jobs are in `status`."""
        return f"{self.prefix}.count.{status}"

    def now(self) -> float:
        seconds, microseconds = self.conn.time()  # one clock for every host
        return seconds + microseconds / 1e6

    def ping(self) -> None:
        self.conn.ping()

    def insert(self, record: dict, created: float) -> None:
        pipe = self.conn.pipeline()
        pipe.hset(self.record_key(record["id"]), mapping={"record": json.dumps(record), "status": record["status"]})
        pipe.zadd(self.queued_key, {record["id"]: created})
        pipe.hincrby(self.count_key("queued"), record["task"], 1)
        pipe.execute()

    def get(self, job_id: str) -> dict | None:
        raw = self.conn.hget(self.record_key(job_id), "record")
        return json.loads(raw) if raw else None

    def change(self, job_id: str, from_statuses: Iterable[str], changes: Changes, *,
               attempt: int | None = None, lease_expired_at: float | None = None,
               lease_until: float | None = None) -> Transition:
        key, outcome = self.record_key(job_id), {}

        def attempt_change(pipe) -> None:
            raw = pipe.hget(key, "record")
            lease = pipe.zscore(self.running_key, job_id)
            record = json.loads(raw) if raw else None
            if record is None or not _allowed(record, lease, from_statuses, attempt, lease_expired_at):
                outcome["result"] = Transition(False, record)
                return
            new = _apply(record, changes)
            pipe.multi()
            pipe.hset(key, mapping={"record": json.dumps(new), "status": new["status"]})
            for status, zset, score in (("queued", self.queued_key, None), ("running", self.running_key, lease_until)):
                if record["status"] == status:
                    pipe.zrem(zset, job_id)
                    pipe.hincrby(self.count_key(status), record["task"], -1)
                if new["status"] == status:
                    pipe.zadd(zset, {job_id: score if score is not None else time.time()})
                    pipe.hincrby(self.count_key(status), new["task"], 1)
            if new["status"] in FINAL and self.result_ttl:
                pipe.expire(key, int(self.result_ttl))
            outcome["result"] = Transition(True, new)

        self.conn.transaction(attempt_change, key, self.running_key)
        return outcome["result"]

    def renew(self, job_ids: Iterable[str], until: float) -> None:
        ids = list(job_ids)
        if ids:
            self.conn.zadd(self.running_key, {job_id: until for job_id in ids}, xx=True)  # only those still running

    def expired_leases(self, now: float) -> list[dict]:
        ids = self.conn.zrangebyscore(self.running_key, "-inf", f"({now}")
        records = [self.get(job_id.decode()) for job_id in ids]
        return [record for record in records if record is not None]

    def delete_expired(self, now: float) -> int:
        return 0  # Redis expires finished records by itself (EXPIRE, set as they finish)

    def live_counts(self) -> dict[tuple[str, str], int]:
        counts = {}
        for status in LIVE:
            for task, count in self.conn.hgetall(self.count_key(status)).items():
                counts[(status, task.decode())] = int(count)
        return counts

    def oldest_queued(self) -> float | None:
        oldest = self.conn.zrange(self.queued_key, 0, 0, withscores=True)
        return oldest[0][1] if oldest else None

    def queued_count(self) -> int:
        return self.conn.zcard(self.queued_key)

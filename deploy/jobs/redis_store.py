"""The job records in Redis (REDIS_URL), on huey's client. Every change is a WATCH/MULTI
transaction (redis-py's `transaction`), huey's message included (its list, as huey's own
enqueue writes it), and keeps these keys, all under one prefix, in step with the records:

    record.<id>         a hash: the record (JSON), its status, attempt and task
    all                 every job by creation time (a sorted set: the listing, newest first)
    status.<status>     the jobs of a status by creation time (listing, counts)
    task.<task>         the jobs of a task by creation time
    count.<status>      per task, how many jobs are scheduled, queued or running (metrics)
    running             running jobs by lease expiry; scheduled: scheduled jobs by start time
    expires             finished jobs by the time their record is deleted (JOB_RESULT_TTL)
    schedule.<task>     a scheduled task's state; schedules: the names of those tasks
    idempotency.<key>   an Idempotency-Key: "fingerprint job-id", expiring by itself

Redis's clock (TIME) is the clock of every host that shares it.
"""

import json
from collections.abc import Iterable

from deploy.jobs.store import (
    FINAL,
    LIVE,
    STATUSES,
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

DELETE_BATCH = 1000  # expired records deleted per cleanup turn
SCAN_BATCH = 200  # index entries read per round while a filtered page fills

# Extend the leases of running jobs, each only at the attempt its consumer runs: KEYS[1] is
# the running set, then the records' keys; ARGV[1] the new expiry, then (id, attempt) pairs.
RENEW_LUA = """
for i = 2, #KEYS do
    local attempt, status = unpack(redis.call('hmget', KEYS[i], 'attempt', 'status'))
    if attempt == ARGV[2 * i - 1] and status == 'running' then
        redis.call('zadd', KEYS[1], 'XX', ARGV[1], ARGV[2 * i - 2])
    end
end
"""


class RedisStore:
    def __init__(self, storage, result_ttl: float):
        """`storage`: huey's RedisStorage, whose client this shares."""
        import redis  # noqa: PLC0415  (only with REDIS_URL: a SQLite queue never needs it)

        self.conn = storage.conn
        self.storage = storage
        self.result_ttl = result_ttl
        self.watch_error = redis.WatchError
        self.prefix = f"flask-stack.jobs.{storage.name}"
        self._renew = self.conn.register_script(RENEW_LUA)

    def key(self, *parts: str) -> str:
        return ".".join((self.prefix, *parts))

    def now(self) -> float:
        seconds, microseconds = self.conn.time()
        return seconds + microseconds / 1e6

    def ping(self) -> None:
        self.conn.ping()

    # --- writing, inside a MULTI ---------------------------------------------------------

    def _index(self, pipe, old: dict | None, new: dict, created: float, lease_until: float | None,
               run_at: float | None, now: float) -> None:
        """Queue the writes that keep the indexes in step with a record going from `old` to `new`."""
        job_id = new["id"]
        pipe.hset(self.key("record", job_id), mapping={"record": json.dumps(new), "status": new["status"],
                                                       "attempt": new["attempt"], "task": new["task"],
                                                       "created": repr(created)})
        if old is None:
            pipe.zadd(self.key("all"), {job_id: created})
            pipe.zadd(self.key("task", new["task"]), {job_id: created})
        if old is None or old["status"] != new["status"]:
            if old is not None:
                pipe.zrem(self.key("status", old["status"]), job_id)
                if old["status"] in LIVE:
                    pipe.hincrby(self.key("count", old["status"]), old["task"], -1)
            pipe.zadd(self.key("status", new["status"]), {job_id: created})
            if new["status"] in LIVE:
                pipe.hincrby(self.key("count", new["status"]), new["task"], 1)
        if new["status"] == "running":
            if lease_until is not None or old is None or old["status"] != "running":
                pipe.zadd(self.key("running"), {job_id: lease_until if lease_until is not None else now})
            # else a change while it runs (progress, a cancel asked) keeps its lease
        else:
            pipe.zrem(self.key("running"), job_id)
        if new["status"] == "scheduled":
            pipe.zadd(self.key("scheduled"), {job_id: run_at if run_at is not None else now})
        else:
            pipe.zrem(self.key("scheduled"), job_id)
        if new["status"] in FINAL and self.result_ttl:
            pipe.zadd(self.key("expires"), {job_id: now + self.result_ttl})
        else:
            pipe.zrem(self.key("expires"), job_id)

    def _enqueue(self, pipe, message: bytes) -> None:
        """huey's message, in the MULTI of `pipe` (huey's RedisStorage.enqueue)."""
        pipe.lpush(self.storage.queue_key, message)

    def insert(self, record: dict, created: float, *, message: bytes | None = None, run_at: float | None = None,
               idempotency: Idempotency | None = None) -> Inserted:
        now = self.now()
        idempotency_key = self.key("idempotency", idempotency.key) if idempotency else None
        outcome = {}

        def write(pipe) -> None:
            if idempotency is not None:
                found = pipe.get(idempotency_key)
                if found is not None:
                    fingerprint, job_id = found.decode().split(" ", 1)
                    raw = pipe.hget(self.key("record", job_id), "record")
                    if fingerprint != idempotency.fingerprint:
                        outcome["result"] = Inserted(json.loads(raw) if raw else None, new=False, conflict=True)
                        return
                    if raw is not None:
                        outcome["result"] = Inserted(json.loads(raw), new=False)
                        return
            pipe.multi()
            if idempotency is not None:
                pipe.set(idempotency_key, f"{idempotency.fingerprint} {record['id']}",
                         ex=int(idempotency.seconds) or None)
            self._index(pipe, None, record, created, None, run_at, now)
            if message is not None:
                self._enqueue(pipe, message)
            outcome["result"] = Inserted(record, new=True)

        self.conn.transaction(write, *([idempotency_key] if idempotency_key else []))
        return outcome["result"]

    def get(self, job_id: str) -> dict | None:
        raw = self.conn.hget(self.key("record", job_id), "record")
        return json.loads(raw) if raw else None

    def get_many(self, job_ids: Iterable[str]) -> dict[str, dict]:
        ids = list(job_ids)
        pipe = self.conn.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.key("record", job_id), "record")
        return {job_id: json.loads(raw) for job_id, raw in zip(ids, pipe.execute(), strict=True) if raw}

    def change(self, job_id: str, from_statuses: Iterable[str], changes: Changes, *,
               attempt: int | None = None, lease_expired_at: float | None = None,
               lease_until: float | None = None, run_at: float | None = None,
               message: bytes | None = None) -> Transition:
        record_key, outcome = self.key("record", job_id), {}

        def write(pipe) -> None:
            raw, created = pipe.hmget(record_key, ["record", "created"])
            lease = pipe.zscore(self.key("running"), job_id)
            record = json.loads(raw) if raw else None
            if record is None or not allowed(record, lease, from_statuses, attempt, lease_expired_at):
                outcome["result"] = Transition(False, record)
                return
            now = self.now()
            new = apply_changes(record, changes)
            pipe.multi()
            self._index(pipe, record, new, float(created), lease_until, run_at, now)
            if message is not None:
                self._enqueue(pipe, message)
            outcome["result"] = Transition(True, new)

        self.conn.transaction(write, record_key, self.key("running"))
        return outcome["result"]

    def renew(self, leases: dict[str, int], until: float) -> None:
        if leases:
            keys = [self.key("running"), *(self.key("record", job_id) for job_id in leases)]
            pairs = [item for job_id, attempt in leases.items() for item in (job_id, str(attempt))]
            self._renew(keys=keys, args=[until, *pairs])

    def _records_of(self, ids: list[bytes]) -> list[dict]:
        return list(self.get_many(job_id.decode() for job_id in ids).values())

    def expired_leases(self, now: float) -> list[dict]:
        return self._records_of(self.conn.zrangebyscore(self.key("running"), "-inf", f"({now}"))

    def due_scheduled(self, now: float, limit: int) -> list[dict]:
        return self._records_of(self.conn.zrangebyscore(self.key("scheduled"), "-inf", now, start=0, num=limit))

    def delete_expired(self, now: float) -> int:
        ids = [job_id.decode() for job_id in self.conn.zrangebyscore(self.key("expires"), "-inf", now, start=0,
                                                                      num=DELETE_BATCH)]
        if not ids:
            return 0
        reads = self.conn.pipeline(transaction=False)
        for job_id in ids:
            reads.hmget(self.key("record", job_id), ["status", "task"])
        deleted, pipe = 0, self.conn.pipeline()
        for job_id, (status, task) in zip(ids, reads.execute(), strict=True):
            pipe.delete(self.key("record", job_id))
            pipe.zrem(self.key("expires"), job_id)
            pipe.zrem(self.key("all"), job_id)
            if status is not None:
                pipe.zrem(self.key("status", status.decode()), job_id)
                pipe.zrem(self.key("task", task.decode()), job_id)
                deleted += 1
        pipe.execute()
        return deleted

    def live_counts(self) -> dict[tuple[str, str], int]:
        counts = {}
        for status in LIVE:
            for task, count in self.conn.hgetall(self.key("count", status)).items():
                counts[(status, task.decode())] = int(count)
        return counts

    def status_counts(self) -> dict[str, int]:
        pipe = self.conn.pipeline(transaction=False)
        for status in STATUSES:
            pipe.zcard(self.key("status", status))
        return {status: count for status, count in zip(STATUSES, pipe.execute(), strict=True) if count}

    def oldest_queued(self) -> float | None:
        oldest = self.conn.zrange(self.key("status", "queued"), 0, 0, withscores=True)
        return oldest[0][1] if oldest else None

    def queued_count(self) -> int:
        return self.conn.zcard(self.key("status", "queued"))

    def page(self, status: str | None, task: str | None, cursor: str | None,
             limit: int) -> tuple[list[dict], str | None]:
        """Records newest first, `limit` at most, after `cursor`. The index read is the status's,
        the task's or all jobs'; a record that does not match the other filter is passed over."""
        index = self.key("status", status) if status else self.key("task", task) if task else self.key("all")
        after = decode_cursor(cursor) if cursor else None
        found, last = [], None
        high = "+inf" if after is None else after[0]
        while len(found) <= limit:
            entries = self.conn.zrevrangebyscore(index, high, "-inf", start=0, num=SCAN_BATCH, withscores=True)
            entries = [(job_id.decode(), created) for job_id, created in entries]
            if after is not None:
                entries = [(job_id, created) for job_id, created in entries
                           if created < after[0] or (created == after[0] and job_id < after[1])]
            if not entries:
                break
            records = self.get_many(job_id for job_id, _ in entries)
            for job_id, created in entries:
                record = records.get(job_id)
                if record and status in (None, record["status"]) and task in (None, record["task"]):
                    found.append((record, created))
            last = entries[-1]
            after, high = last[::-1], last[1]
        more = len(found) > limit
        found = found[:limit]
        return [record for record, _ in found], encode_cursor(found[-1][1], found[-1][0]["id"]) if more else None

    # --- scheduled tasks -----------------------------------------------------------------

    def schedule_states(self) -> dict[str, ScheduleState]:
        names = sorted(name.decode() for name in self.conn.smembers(self.key("schedules")))
        pipe = self.conn.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.key("schedule", name))
        states = {}
        for name, fields in zip(names, pipe.execute(), strict=True):
            if fields:
                values = {key.decode(): value.decode() for key, value in fields.items()}
                states[name] = ScheduleState(
                    float(values["last_tick"]), values.get("last_job") or None, int(values.get("runs", 0)),
                    int(values.get("skipped", 0)), int(values.get("missed", 0)),
                    float(values["last_success"]) if values.get("last_success") else None)
        return states

    def claim_tick(self, tick: Tick) -> str:
        """As SqliteStore.claim_tick: "ran", "skipped", "moved" or "lost"."""
        schedule_key, outcome = self.key("schedule", tick.task), {}
        count_keys = [self.key("count", status) for status in LIVE]

        def write(pipe) -> None:
            last = pipe.hget(schedule_key, "last_tick")
            if (float(last) if last is not None else None) != tick.previous:
                outcome["result"] = "lost"
                return
            result = "moved"
            if tick.run is not None:
                live = sum(int(pipe.hget(key, tick.task) or 0) for key in count_keys)
                result = "skipped" if live and not tick.overlap else "ran"
            now = self.now()
            pipe.multi()
            pipe.sadd(self.key("schedules"), tick.task)
            pipe.hset(schedule_key, "last_tick", repr(tick.tick))
            pipe.hincrby(schedule_key, "missed", tick.missed)
            pipe.hincrby(schedule_key, "skipped", int(result == "skipped"))
            pipe.hincrby(schedule_key, "runs", int(result == "ran"))
            if result == "ran":
                record, created, message = tick.run
                pipe.hset(schedule_key, "last_job", record["id"])
                self._index(pipe, None, record, created, None, None, now)
                self._enqueue(pipe, message)
            outcome["result"] = result

        self.conn.transaction(write, schedule_key, *count_keys)
        return outcome["result"]

    def schedule_succeeded(self, task: str, when: float) -> None:
        self.conn.hset(self.key("schedule", task), "last_success", repr(when))

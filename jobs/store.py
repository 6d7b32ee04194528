"""The job store in Redis: state, file names, chunk inputs and per-image results, all expiring after the TTL.

Keys for job J (every one gets the job's TTL, refreshed on each write):
  tomato:jobmeta:J         hash: state, total, chunks, created/started/finished, attempts, duplicates, error
  tomato:job:J:files       list: file names in upload order (index = position)
  tomato:job:J:input:C     string: chunk C's uint8 crops, (n, 3, S, S) row-major, written by the API
  tomato:job:J:results     hash: image index -> result JSON, written with HSETNX
  tomato:job:J:pending     hash: chunk -> its task arguments, until its results are written (jobs/api.py re-sends
                           a chunk whose task message Redis lost)

Results are written by one Lua script: HSETNX per image (a redelivered chunk cannot overwrite or count twice;
refused writes are counted in `duplicates`), and the write that completes the set marks the job done, atomically.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Iterable

import redis

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")
WORKER_PREFIX = "tomato:worker:"  # heartbeat keys of workers whose model is loaded (jobs/tasks.py)

_WRITE_RESULTS = """
local meta, results = KEYS[1], KEYS[2]
local state = redis.call('HGET', meta, 'state')
if not state then return -1 end
if state == 'cancelled' or state == 'failed' then return -2 end
local added = 0
for i = 3, #ARGV, 2 do added = added + redis.call('HSETNX', results, ARGV[i], ARGV[i + 1]) end
if added > 0 then redis.call('HSET', meta, 'progress_at', ARGV[2]) end
local refused = (#ARGV - 2) / 2 - added
if refused > 0 then redis.call('HINCRBY', meta, 'duplicates', refused) end
if redis.call('HLEN', results) >= tonumber(redis.call('HGET', meta, 'total')) and state ~= 'done' then
  redis.call('HSET', meta, 'state', 'done', 'finished', ARGV[2])
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[1]) end
return added
"""

_START_CHUNK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if state == 'queued' then redis.call('HSET', KEYS[1], 'state', 'running', 'started', ARGV[1]) end
return redis.call('HGET', KEYS[1], 'state')
"""

_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', ARGV[1])
end
return state
"""


def connect(url: str, timeout_s: float = 5.0) -> redis.Redis:
    """A client that fails fast when Redis is down (the API then answers 503) and reconnects by itself after."""
    return redis.Redis.from_url(url, socket_connect_timeout=min(timeout_s, 2.0), socket_timeout=timeout_s,
                                health_check_interval=10)


class JobStore:
    """Job records in one Redis; every method is safe to call from several processes at once."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.redis = client
        self.ttl_s = int(ttl_s)
        self._write = client.register_script(_WRITE_RESULTS)
        self._start = client.register_script(_START_CHUNK)
        self._cancel = client.register_script(_CANCEL)

    @staticmethod
    def meta_key(job_id: str) -> str:
        return f"tomato:jobmeta:{job_id}"

    @staticmethod
    def key(job_id: str, part: str) -> str:
        return f"tomato:job:{job_id}:{part}"

    def _job_keys(self, job_id: str) -> list[str]:
        return [self.meta_key(job_id), self.key(job_id, "results"), self.key(job_id, "files"),
                self.key(job_id, "pending")]

    def create(self, files: list[str], image_size: int) -> str:
        """A new queued job of len(files) images; returns its id."""
        job_id = uuid.uuid4().hex
        pipe = self.redis.pipeline()
        pipe.hset(self.meta_key(job_id), mapping={"state": "queued", "total": len(files), "chunks": 0,
                                                  "image_size": image_size, "created": time.time(), "attempts": 0,
                                                  "duplicates": 0})
        for start in range(0, len(files), 1000):
            pipe.rpush(self.key(job_id, "files"), *files[start : start + 1000])
        for key in self._job_keys(job_id):
            pipe.expire(key, self.ttl_s)
        pipe.execute()
        return job_id

    def put_input(self, job_id: str, chunk: int, data: bytes, args: dict[str, Any]) -> None:
        """A chunk's crops, and its task arguments in `pending` until it is answered."""
        pipe = self.redis.pipeline()
        pipe.set(self.key(job_id, f"input:{chunk}"), data, ex=self.ttl_s)
        pipe.hset(self.key(job_id, "pending"), chunk, json.dumps(args))
        pipe.expire(self.key(job_id, "pending"), self.ttl_s)
        pipe.execute()

    def pending(self, job_id: str) -> dict[int, dict[str, Any]]:
        """Chunks not answered yet: chunk -> task arguments."""
        return {int(k): json.loads(v) for k, v in self.redis.hgetall(self.key(job_id, "pending")).items()}

    def take_input(self, job_id: str, chunk: int) -> bytes | None:
        return self.redis.get(self.key(job_id, f"input:{chunk}"))

    def drop_input(self, job_id: str, chunk: int) -> None:
        self.redis.pipeline().delete(self.key(job_id, f"input:{chunk}")).hdel(self.key(job_id, "pending"), chunk).execute()

    def start_chunk(self, job_id: str) -> str | None:
        """Count an attempt, move queued -> running; returns the job's state (None: expired or unknown)."""
        state = self._start(keys=[self.meta_key(job_id)], args=[time.time()])
        return state.decode() if state else None

    def write_results(self, job_id: str, results: dict[int, dict[str, Any]]) -> int:
        """Idempotent: images already answered keep their first result. Returns how many were new
        (-1 job unknown or expired, -2 cancelled or failed: nothing written)."""
        args: list[Any] = [self.ttl_s, time.time()]
        for index, result in results.items():
            args += [index, json.dumps(result, separators=(",", ":"))]
        return int(self._write(keys=self._job_keys(job_id), args=args))

    def fail(self, job_id: str, reason: str) -> None:
        """Mark a job failed unless it already ended."""
        meta = self.meta_key(job_id)
        if self.redis.hget(meta, "state") in (b"queued", b"running"):
            self.redis.hset(meta, mapping={"state": "failed", "error": reason[:2000], "finished": time.time()})

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job (its waiting inputs are dropped); returns the state it had."""
        before = self._cancel(keys=[self.meta_key(job_id)], args=[time.time()])
        if before in (b"queued", b"running"):
            inputs = list(self.redis.scan_iter(match=self.key(job_id, "input:*"), count=1000))
            self.redis.delete(self.key(job_id, "pending"), *inputs)
        return before.decode() if before else None

    def meta(self, job_id: str) -> dict[str, str] | None:
        raw = self.redis.hgetall(self.meta_key(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} if raw else None

    def done_count(self, job_id: str) -> int:
        return int(self.redis.hlen(self.key(job_id, "results")))

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """Every answered image in upload order, each with its index and file name."""
        names = [n.decode() for n in self.redis.lrange(self.key(job_id, "files"), 0, -1)]
        stored = self.redis.hgetall(self.key(job_id, "results"))
        by_index = {int(k): json.loads(v) for k, v in stored.items()}
        return [{"index": i, "file": names[i], **by_index[i]} for i in sorted(by_index) if i < len(names)]

    def states(self) -> dict[str, int]:
        """Jobs still stored, by state (a SCAN: meant for /metrics, not for every request)."""
        counts = dict.fromkeys(STATES, 0)
        keys = list(self.redis.scan_iter(match=self.meta_key("*"), count=1000))
        pipe = self.redis.pipeline()
        for key in keys:
            pipe.hget(key, "state")
        for state in pipe.execute():
            if state and state.decode() in counts:
                counts[state.decode()] += 1
        return counts

    def workers(self) -> int:
        """Worker processes with a model loaded (their heartbeat keys expire when they stop)."""
        return sum(1 for _ in self.redis.scan_iter(match=f"{WORKER_PREFIX}*", count=1000))


def chunked(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

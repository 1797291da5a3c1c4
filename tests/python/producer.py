#!/usr/bin/env python3
"""A Sluice producer in Python: publishes task events straight to Redis with
`FCALL sluice_publish`, the same atomic call the Rust `Publisher` makes.

Needs the `redis` and `msgpack` packages from PyPI:

    python3 -m pip install redis msgpack
    python3 tests/python/producer.py --redis-url redis://127.0.0.1:6379 \
        --task export-7 --count 5 --final

The protocol (documented in deploy/README.md):

- shard = FNV-1a 32-bit hash of the task id bytes, modulo the shard count
  (16 unless the deployment says otherwise);
- keys: sluice:{s<shard>}:t:<task>:log, sluice:{s<shard>}:t:<task>:meta and
  sluice:{s<shard>}:feed (one hash tag: one Redis Cluster slot);
- FCALL sluice_publish 3 <log> <meta> <feed> <task> <type> <data as
  MessagePack> <"1" final | "0"> <idempotency key or "">
  -> [seq, ts_ms, duplicate (0/1)], or an error SLUICE_CLOSED /
  SLUICE_INVALID / SLUICE_TOO_LARGE.

The function is loaded by every edge and Rust publisher at start; a producer
in another language can load it too (`--load-function PATH` does
FUNCTION LOAD REPLACE with the library source, broker/src/sluice_publish.lua).

Output: one JSON object per line, for the test that drives this script.
"""

import argparse
import json
import sys

import msgpack
import redis

DEFAULT_SHARDS = 16
FEEDS_PER_SHARD = 64


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bits."""
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def shard_of(task: str, shards: int = DEFAULT_SHARDS) -> int:
    return fnv1a32(task.encode("utf-8")) % max(shards, 1)


def task_keys(task: str, shards: int = DEFAULT_SHARDS):
    """(log, meta, feed) keys of a task: h = FNV-1a 32 of the id, shard
    h % shards, feed (h // shards) % 64 under the shard's hash tag."""
    h = fnv1a32(task.encode("utf-8"))
    shards = max(shards, 1)
    tag = "sluice:{s%d}" % (h % shards)
    feed = (h // shards) % FEEDS_PER_SHARD
    return f"{tag}:t:{task}:log", f"{tag}:t:{task}:meta", f"{tag}:feed:{feed}"


class SluiceClosed(Exception):
    """The task already received its final event."""


class Publisher:
    def __init__(self, client: redis.Redis, shards: int = DEFAULT_SHARDS):
        self.r = client
        self.shards = shards

    def publish(self, task, kind, data=None, final=False, idempotency_key=None):
        """Publishes one event; returns (seq, ts_ms, duplicate)."""
        log, meta, feed = task_keys(task, self.shards)
        payload = msgpack.packb(data, use_bin_type=True)
        try:
            seq, ts, dup = self.r.fcall(
                "sluice_publish", 3, log, meta, feed,
                task, kind, payload, "1" if final else "0", idempotency_key or "",
            )
        except redis.ResponseError as e:
            if str(e).startswith("SLUICE_CLOSED"):
                raise SluiceClosed(str(e)) from e
            raise
        return int(seq), int(ts), bool(int(dup))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    ap.add_argument("--shards", type=int, default=DEFAULT_SHARDS)
    ap.add_argument("--task", required=True)
    ap.add_argument("--count", type=int, default=5, help="progress events to publish")
    ap.add_argument("--final", action="store_true", help="finish with a final event")
    ap.add_argument("--load-function", metavar="PATH",
                    help="FUNCTION LOAD REPLACE this library source first")
    ap.add_argument("--print-shards", nargs="*", default=[], metavar="TASK",
                    help="only print the shard and keys of these task ids")
    a = ap.parse_args()

    if a.print_shards:
        for t in a.print_shards:
            log, meta, feed = task_keys(t, a.shards)
            print(json.dumps({"task": t, "shard": shard_of(t, a.shards),
                              "log": log, "meta": meta, "feed": feed}))
        return 0

    r = redis.Redis.from_url(a.redis_url)
    if a.load_function:
        with open(a.load_function, encoding="utf-8") as f:
            r.function_load(f.read(), replace=True)
    p = Publisher(r, a.shards)

    # Data of every JSON kind, to check it comes out of the edge unchanged.
    for i in range(1, a.count + 1):
        data = {
            "pct": i * 100 // max(a.count, 1),
            "i": i,
            "neg": -i,
            "big": 2**40 + i,
            "ratio": i / 4,
            "label": f"step {i} \u2713 caf\u00e9",
            "tags": ["a", None, True, False, [i]],
            "nested": {"deep": {"er": i}},
        }
        seq, ts, dup = p.publish(a.task, "progress", data, idempotency_key=f"py-{i}")
        print(json.dumps({"op": "publish", "i": i, "seq": seq, "ts": ts,
                          "duplicate": dup, "data": data}))
    # A retry with a used idempotency key appends nothing.
    if a.count >= 1:
        seq, ts, dup = p.publish(a.task, "progress", {"retry": True}, idempotency_key="py-1")
        print(json.dumps({"op": "retry", "seq": seq, "duplicate": dup}))
    if a.final:
        seq, ts, dup = p.publish(a.task, "done", {"url": f"/files/{a.task}"}, final=True)
        print(json.dumps({"op": "final", "seq": seq, "duplicate": dup}))
        try:
            p.publish(a.task, "progress", {"late": True})
            print(json.dumps({"op": "after-final", "error": None}))
        except SluiceClosed as e:
            print(json.dumps({"op": "after-final", "error": "SLUICE_CLOSED", "message": str(e)}))
    # Invalid input is refused by the function, not stored.
    try:
        p.publish(a.task + "-bad", "sluice.reserved", None)
        print(json.dumps({"op": "invalid", "error": None}))
    except redis.ResponseError as e:
        print(json.dumps({"op": "invalid", "error": str(e).split(" ", 1)[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

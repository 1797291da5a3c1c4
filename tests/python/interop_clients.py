"""Third-party client libraries against a running edge: each follows one task
while it is published, loses its connection halfway, resumes the way the
README tells it to, and must see every seq once, in order, up to the final
event. Every item a library yields must be an event with JSON data (no empty
event made of the opening `retry:` or a heartbeat).

Prints one JSON line per client: {"client", "seqs", "items", "resumed_from"}.
Exits non-zero with the reason on the first failure.

    python3 interop_clients.py --base http://127.0.0.1:8080 --key K \
        --client sseclient --client httpx-sse --client websockets
"""

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid

import httpx
import requests
import sseclient
import websockets
from httpx_sse import connect_sse

# Published in three bursts, so a client sits through heartbeats (the edge
# under test beats every second) between them: 1-5, a pause, 6-9, a pause,
# 10-12 (12 is final).
BURSTS = [(range(1, 6), 0.0), (range(6, 10), 2.5), (range(10, 13), 2.0)]
LAST = 12
# Each client drops its connection once it has seen this seq.
DROP_AFTER = 7
DEADLINE_S = 30.0


class Failure(Exception):
    pass


def publisher(base, key, task):
    """Publishes the bursts in a thread; returns it (join to wait)."""

    def run():
        with httpx.Client(base_url=base, timeout=10) as c:
            for seqs, pause in BURSTS:
                time.sleep(pause)
                for seq in seqs:
                    body = {"type": "done" if seq == LAST else "progress",
                            "data": {"n": seq}, "final": seq == LAST}
                    r = c.post(f"/v1/tasks/{task}/events", json=body,
                               headers={"Authorization": f"Bearer {key}"})
                    if r.status_code != 201 or r.json().get("seq") != seq:
                        raise SystemExit(f"publish {seq}: {r.status_code} {r.text}")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Log:
    """What one client saw, checked as it arrives."""

    def __init__(self, name):
        self.name = name
        self.seqs = []
        self.items = 0
        self.last_id = None
        self.resumed_from = None

    def event(self, kind, data, event_id):
        """One yielded item; returns True at the final event."""
        self.items += 1
        if not data:
            raise Failure(f"{self.name}: an item with no data (kind={kind!r}, id={event_id!r})")
        env = json.loads(data)
        if kind not in ("progress", "done"):
            raise Failure(f"{self.name}: unexpected event type {kind!r}: {data}")
        seq = env["seq"]
        if event_id is not None and int(event_id.split(".")[0]) != seq:
            raise Failure(f"{self.name}: id {event_id} for seq {seq}")
        if env["data"] != {"n": seq}:
            raise Failure(f"{self.name}: seq {seq} carries {env['data']}")
        self.seqs.append(seq)
        self.last_id = event_id if event_id is not None else env["pos"]
        return env["final"]

    def check(self):
        if self.seqs != list(range(1, LAST + 1)):
            raise Failure(f"{self.name}: seqs {self.seqs}")
        if self.resumed_from is None:
            raise Failure(f"{self.name}: never resumed")
        return {"client": self.name, "seqs": len(self.seqs), "items": self.items,
                "resumed_from": self.resumed_from}


def url(base, task, after=None):
    u = f"{base}/v1/tasks/{task}/events"
    return u if after is None else f"{u}?after={after}"


def run_sseclient(base, task):
    """sseclient-py over requests: reconnects with Last-Event-ID."""
    log = Log("sseclient-py")
    headers = {"Accept": "text/event-stream"}
    target = url(base, task, after=0)
    for attempt in range(2):
        with requests.get(target, headers=headers, stream=True, timeout=10) as resp:
            if resp.status_code != 200:
                raise Failure(f"sseclient-py: status {resp.status_code}")
            for ev in sseclient.SSEClient(resp).events():
                done = log.event(ev.event, ev.data, ev.id)
                if done:
                    return log.check()
                if attempt == 0 and log.seqs[-1] == DROP_AFTER:
                    break
        headers["Last-Event-ID"] = log.last_id
        target = url(base, task)
        log.resumed_from = log.last_id
    raise Failure(f"sseclient-py: no final event, saw {log.seqs}")


def run_httpx_sse(base, task):
    """httpx-sse: reconnects with Last-Event-ID."""
    log = Log("httpx-sse")
    headers = {}
    target = url(base, task, after=0)
    with httpx.Client(timeout=httpx.Timeout(10, read=10)) as http:
        for attempt in range(2):
            with connect_sse(http, "GET", target, headers=headers) as es:
                if es.response.status_code != 200:
                    raise Failure(f"httpx-sse: status {es.response.status_code}")
                for sse in es.iter_sse():
                    done = log.event(sse.event, sse.data, sse.id)
                    if done:
                        return log.check()
                    if attempt == 0 and log.seqs[-1] == DROP_AFTER:
                        break
            headers = {"Last-Event-ID": log.last_id}
            target = url(base, task)
            log.resumed_from = log.last_id
    raise Failure(f"httpx-sse: no final event, saw {log.seqs}")


async def run_websockets_async(base, task):
    log = Log("websockets")
    ws_base = base.replace("http://", "ws://", 1)
    after = "0"
    for attempt in range(2):
        async with websockets.connect(f"{ws_base}/v1/tasks/{task}/ws?after={after}") as ws:
            async for msg in ws:
                env = json.loads(msg)
                done = log.event(env.get("type"), msg, None)
                if done:
                    return log.check()
                if attempt == 0 and log.seqs[-1] == DROP_AFTER:
                    break
        after = log.last_id
        log.resumed_from = after
    raise Failure(f"websockets: no final event, saw {log.seqs}")


def run_websockets(base, task):
    return asyncio.run(asyncio.wait_for(run_websockets_async(base, task), DEADLINE_S))


CLIENTS = {"sseclient": run_sseclient, "httpx-sse": run_httpx_sse,
           "websockets": run_websockets}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the edge, e.g. http://127.0.0.1:8080")
    ap.add_argument("--key", required=True, help="a publish key of the edge")
    ap.add_argument("--client", action="append", choices=sorted(CLIENTS), required=True)
    args = ap.parse_args()
    for name in args.client:
        task = f"interop-{name}-{uuid.uuid4().hex[:12]}"
        pub = publisher(args.base, args.key, task)
        try:
            result = CLIENTS[name](args.base, task)
        except Failure as e:
            print(f"FAIL {e}", file=sys.stderr)
            return 1
        pub.join(DEADLINE_S)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

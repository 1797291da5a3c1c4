#!/usr/bin/env python3
"""Memory after a burst (tests/BENCHMARKS.md, "Memory after a burst").

Starts an edge binary on a Redis, publishes one task of N large events
(FCALL sluice_publish, as producer.py does), then opens S `?after=0` SSE
subscribers on raw sockets that never read. It samples the edge's VmRSS
every 10 ms while they are connected (the peak), closes them, and samples
again 1, 5 and 10 s after they left: how much of the burst the process
gives back, and when.

    python3 tests/python/burst_rss.py --edge target/release/sluice-edge \\
        --redis-url redis://127.0.0.1:6390 --events 1000 --data-bytes 60000 \\
        --subscribers 5

Prints one JSON object (KiB figures).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import redis

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from producer import Publisher  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("edge not ready")


def sample_for(pid: int, seconds: float) -> int:
    """The highest RSS over `seconds`, sampled every 10 ms."""
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.01)
    return peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edge", required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--data-bytes", type=int, default=60000)
    ap.add_argument("--subscribers", type=int, default=5)
    ap.add_argument("--hold-secs", type=float, default=5.0)
    ap.add_argument("--edge-arg", action="append", default=[])
    a = ap.parse_args()

    port = free_port()
    edge = subprocess.Popen(
        [a.edge, "--listen", f"127.0.0.1:{port}", "--redis-url", a.redis_url, "--insecure",
         *a.edge_arg],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        wait_ready(port)
        task = f"burst-{os.getpid()}-{time.time_ns():x}"
        pub = Publisher(redis.Redis.from_url(a.redis_url))
        blob = "x" * a.data_bytes
        for i in range(1, a.events + 1):
            pub.publish(task, "progress", {"i": i, "blob": blob})
        time.sleep(1.0)
        out = {"events": a.events, "data_bytes": a.data_bytes, "subscribers": a.subscribers,
               "start": rss_kib(edge.pid)}
        socks = []
        for _ in range(a.subscribers):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            s.connect(("127.0.0.1", port))
            s.sendall(f"GET /v1/tasks/{task}/events?after=0 HTTP/1.1\r\nHost: b\r\n\r\n".encode())
            socks.append(s)
        out["peak"] = sample_for(edge.pid, a.hold_secs)
        out["held"] = rss_kib(edge.pid)
        for s in socks:
            s.close()
        left = time.monotonic()
        for at in (1, 5, 10):
            time.sleep(max(0.0, left + at - time.monotonic()))
            out[f"after_{at}s"] = rss_kib(edge.pid)
        print(json.dumps(out))
    finally:
        edge.terminate()
        try:
            edge.wait(timeout=15)
        except subprocess.TimeoutExpired:
            edge.kill()


if __name__ == "__main__":
    main()

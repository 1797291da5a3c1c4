#!/usr/bin/env python3
"""Idle-connection memory of Sluice beside nginx + nchan, for what
../shared/bench/pair.py does not cover: WebSocket, and more connections than
its 5 000 (the edge is started with a matching --max-connections).

It imports pair.py (the peer's setup, the load generator and its process
accounting) from ../shared/bench, so both servers run and are measured
exactly as there. Rounds are interleaved; medians are printed.

  python3 tests/bench/pair_idle.py --transport ws --connections 5000 --rounds 3
  python3 tests/bench/pair_idle.py --transport sse --connections 19000 --rounds 1
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "shared", "bench"))
import pair  # noqa: E402


class Edge(pair.Sluice):
    """pair.py's Sluice, with room for `connections` streams."""

    def __init__(self, edge, connections):
        super().__init__(edge)
        self.connections = connections

    def __enter__(self):
        rport, eport = pair.free_port(), pair.free_port()
        self.rp = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(rport),
                                    "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        self.ep = subprocess.Popen([self.edge, "--listen", f"127.0.0.1:{eport}",
                                    "--redis-url", f"redis://127.0.0.1:{rport}", "--insecure",
                                    "--publish-key", "bench",
                                    "--max-connections", str(self.connections + 100)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{eport}"
        pair.wait_http(base + "/healthz")
        self.redis, self.server = self.rp.pid, [self.ep.pid]
        self.watch = [self.ep.pid, self.redis]
        self.sub = base + "/v1/tasks/{channel}/events"
        self.extra = ["--envelope", "sluice"]
        return self


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edge", default="target/release/sluice-edge")
    ap.add_argument("--transport", choices=["sse", "ws"], default="sse")
    ap.add_argument("--connections", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rows = {}
    for rnd in range(a.rounds):
        for srv in (pair.Nchan(), Edge(a.edge, a.connections)):
            with srv as s:
                sub = s.sub
                args = []
                if a.transport == "ws":
                    # nchan: its WebSocket-only location; Sluice: the task's WebSocket.
                    sub = sub.replace("http://", "ws://").replace("/sub/", "/ws/").replace("/events", "/ws")
                    args = ["--ws"]
                r = pair.loadgen(["--sub-url", sub, *args, *s.extra,
                                  "--channels", str(a.connections // 10), "--subs-per-channel", "10",
                                  "--idle-secs", "15"], s.server + [s.redis], s.watch)
                row = dict(kib_per_conn=r["rss_per_conn_kib"], connected=r["connected"],
                           ramp_s=r.get("ramp_s") or 0.0,
                           connect_p50_ms=r.get("connect_p50_ms") or 0.0,
                           connect_p99_ms=r.get("connect_p99_ms") or 0.0,
                           idle_cpu_s=r.get("server_cpu_idle_s") or 0.0)
                print(f"round {rnd + 1} {srv.name:6} {a.transport} idle {a.connections}: {json.dumps(row)}", flush=True)
                rows.setdefault(srv.name, []).append(row)
    print("\nmedians:")
    for name, rs in rows.items():
        print(f"  {a.transport} idle {a.connections} {name:6} "
              + " ".join(f"{k}={statistics.median(r[k] for r in rs):.2f}" for k in rs[0]))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Redis egress and CPU per published event for several edge layouts
(issue 18, "feeds read on demand").

Each layout gets a fresh redis-server of its own (loopback, no persistence)
and K fresh edges (`--edge`). A publisher calls `FCALL sluice_publish`
straight on Redis at `--rate` events/s over `--tasks` tasks (160-byte
payload), with the keys of `--schema v1` (today: one feed per shard,
`sluice:{s<shard>}:feed`) or `--schema v2` (64 feeds per shard,
`sluice:{s<shard>}:feed:<n>`). Edges with subscribers get `--watch` random
tasks each, followed over SSE (`GET /v1/events?task=..`, at most
`--max-tasks-per-connection` per connection). After `--warmup` seconds the
script measures, over `--window` seconds: Redis output bytes
(INFO stats total_net_output_bytes) per published event, Redis CPU (INFO cpu,
user + sys), the edges' CPU (/proc/<pid>/stat) and the events delivered to
subscribers.

Layouts (`--layouts`, comma-separated; run in order, `--rounds` times):
  none     no edge (the script loads the publish function itself)
  Kidle    K edges, no subscribers                   (1idle, 8idle)
  Kwatch   K edges, each watching --watch tasks      (1watch)
  KidleJ   K edges, J of them idle, the others watching --watch tasks (8idle7)
  KxN      K edges, each watching N tasks            (8x250)
Watched sets are random (fixed --seed), different per edge; edge 1 watches
the same set in every layout.

Output: a markdown table (medians over rounds) on stdout, one JSON line per
measurement on stderr.

  python3 tests/bench/feeds_on_demand.py --edge target/release/sluice-edge --schema v1 \\
      --layouts none,1idle,1watch,8idle7,8idle,8x250 --window 20
  python3 tests/bench/feeds_on_demand.py --edge target/release/sluice-edge --schema v2 \\
      --edge-arg=--feed-grace-secs --edge-arg=1 --rounds 3

Notes: Redis output includes the publisher's FCALL replies (about 30 bytes
per event: the `none` row) and the edges' own registry and feed-check
traffic; the INFO calls of the measuring connection add a few KB per window
(well under 1 byte per event) and are not subtracted. The machine is small and
shared: compare rows within one run.
"""
import argparse
import ctypes
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

try:
    import redis
except ImportError:  # pragma: no cover
    sys.exit("needs redis-py: python3 -m pip install redis")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FUNCTION = os.path.normpath(os.path.join(HERE, "..", "..", "broker", "src", "sluice_publish.lua"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
TICK = 0.01  # publisher tick, seconds
PAYLOAD = b"\xd9\xa0" + (b"0123456789abcdef" * 10)  # MessagePack str8 of 160 ASCII bytes
assert len(PAYLOAD) == 162


def log(msg):
    print(f"[feeds_on_demand] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# keys


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def task_keys(task, schema, shards, feeds_per_shard):
    """(log, meta, feed) of a task under `schema`."""
    h = fnv1a32(task.encode())
    tag = "sluice:{s%d}" % (h % shards)
    feed = f"{tag}:feed" if schema == "v1" else f"{tag}:feed:{(h // shards) % feeds_per_shard}"
    return f"{tag}:t:{task}:log", f"{tag}:t:{task}:meta", feed


def all_feeds(schema, shards, feeds_per_shard):
    if schema == "v1":
        return ["sluice:{s%d}:feed" % s for s in range(shards)]
    return ["sluice:{s%d}:feed:%d" % (s, n) for s in range(shards) for n in range(feeds_per_shard)]


def resp_command(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


# --------------------------------------------------------------------------
# processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """preexec_fn: the child gets SIGKILL if this script dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def proc_cpu_secs(pid):
    """utime + stime of a whole process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def host_cpu():
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def stop_proc(p, term_wait=3.0):
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(term_wait)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    except OSError:
        pass


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


class Redis:
    def __init__(self, workdir):
        self.dir = os.path.join(workdir, "redis")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.logf = os.path.join(self.dir, "redis.log")
        self.p = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--logfile", self.logf, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.url = f"redis://127.0.0.1:{self.port}"
        self.r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.r.ping()
                break
            except redis.exceptions.ConnectionError:
                if self.p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start:\n" + tail(self.logf))
                time.sleep(0.05)

    def has_function(self):
        # Non-empty when the library is loaded (RESP2: a list of flat field lists).
        return bool(self.r.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "sluice"))

    def stats(self):
        s, c = self.r.info("stats"), self.r.info("cpu")
        return s["total_net_output_bytes"], s["total_net_input_bytes"], c["used_cpu_user"] + c["used_cpu_sys"]

    def close(self):
        try:
            self.r.close()
        except Exception:
            pass
        stop_proc(self.p)


class Edge:
    def __init__(self, binary, idx, redis_url, workdir, extra):
        self.idx = idx
        self.node = f"e{idx}"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.logf = os.path.join(workdir, f"edge-{self.node}.log")
        argv = [binary, "--listen", f"127.0.0.1:{self.port}", "--redis-url", redis_url,
                "--node-id", self.node, "--insecure", *extra]
        with open(self.logf, "wb") as lf:
            self.p = subprocess.Popen(argv, stdout=lf, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"edge {self.node} exited with {self.p.returncode}:\n{tail(self.logf)}")
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"edge {self.node} not ready in {timeout} s:\n{tail(self.logf)}")

    def cpu(self):
        return proc_cpu_secs(self.p.pid)

    def feed_metrics(self):
        """Sum per metric name of the edge's metrics whose name mentions feed(s)."""
        out = {}
        try:
            with urllib.request.urlopen(self.base + "/metrics", timeout=3) as resp:
                text = resp.read().decode(errors="replace")
        except OSError as e:
            return {"error": str(e)}
        for line in text.splitlines():
            if line.startswith("#") or "feed" not in line:
                continue
            m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m:
                try:
                    out[m.group(1)] = out.get(m.group(1), 0) + float(m.group(3))
                except ValueError:
                    pass
        return out

    def close(self):
        stop_proc(self.p, term_wait=2.0)


# --------------------------------------------------------------------------
# subscribers


class SseConn(threading.Thread):
    """One `GET /v1/events?task=..` stream; counts frames (blank-line terminated)."""

    def __init__(self, port, tasks, stop):
        super().__init__(daemon=True)
        self.port, self.tasks, self.stop = port, tasks, stop
        self.frames = 0
        self.resets = 0
        self.bytes = 0
        self.error = None
        self.ready = threading.Event()
        self.sock = None

    def run(self):
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            if not self.stop.is_set():
                self.error = f"{type(e).__name__}: {e}"
        finally:
            self.ready.set()
            try:
                self.sock and self.sock.close()
            except OSError:
                pass

    def _run(self):
        q = "&".join("task=" + t for t in self.tasks)
        self.sock = s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.sendall(f"GET /v1/events?{q} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError("closed before the response head")
            buf += chunk
        head, buf = buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" " or b"sluice-refused" in head.lower():
            raise RuntimeError(f"refused: {head.decode(errors='replace')[:300]}")
        chunked = b"transfer-encoding: chunked" in head.lower()
        self.ready.set()
        s.settimeout(0.5)
        raw = buf
        body = b""
        while not self.stop.is_set():
            if chunked:
                # De-chunk what is complete in `raw`.
                while True:
                    i = raw.find(b"\r\n")
                    if i < 0:
                        break
                    size = int(raw[:i].split(b";")[0] or b"0", 16)
                    if size == 0:
                        return  # end of the stream
                    if len(raw) < i + 2 + size + 2:
                        break
                    body += raw[i + 2:i + 2 + size]
                    raw = raw[i + 2 + size + 2:]
            else:
                body += raw
                raw = b""
            n = body.count(b"\n\n")
            if n:
                self.frames += n
                last = body.rfind(b"\n\n") + 2
                if b"sluice.reset" in body[:last]:
                    self.resets += body[:last].count(b"event: sluice.reset")
                body = body[last:]
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                if not self.stop.is_set():
                    self.error = "stream closed by the edge"
                return
            self.bytes += len(chunk)
            raw += chunk


class Subscribers:
    def __init__(self, edge, tasks, per_conn):
        self.stop = threading.Event()
        self.conns = [SseConn(edge.port, tasks[i:i + per_conn], self.stop)
                      for i in range(0, len(tasks), per_conn)]
        for c in self.conns:
            c.start()

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        for c in self.conns:
            c.ready.wait(max(0.1, deadline - time.monotonic()))
            if c.error or not c.ready.is_set():
                raise RuntimeError(f"subscriber did not start: {c.error or 'timeout'}")

    def frames(self):
        return sum(c.frames for c in self.conns)

    def resets(self):
        return sum(c.resets for c in self.conns)

    def errors(self):
        return [c.error for c in self.conns if c.error]

    def close(self):
        self.stop.set()
        for c in self.conns:
            try:
                c.sock and c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for c in self.conns:
            c.join(3)


# --------------------------------------------------------------------------
# publisher


class Publisher(threading.Thread):
    """FCALL sluice_publish at `rate`/s, round-robin over a shuffled task order,
    pipelined once per tick on a raw RESP connection (commands pre-encoded)."""

    def __init__(self, port, tasks, rate, schema, shards, feeds_per_shard, seed):
        super().__init__(daemon=True)
        self.port, self.rate = port, rate
        order = list(tasks)
        random.Random(seed ^ 0x5EED).shuffle(order)
        self.cmds = []
        for t in order:
            lg, meta, feed = task_keys(t, schema, shards, feeds_per_shard)
            self.cmds.append(resp_command("FCALL", "sluice_publish", 3, lg, meta, feed, t, "progress",
                                          PAYLOAD, "0", ""))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.acked = 0
        self.errors = 0
        self.first_error = None
        self.max_behind = 0
        self.fatal = None

    def counts(self):
        with self.lock:
            return self.acked, self.errors

    def run(self):
        try:
            self._run()
        except Exception as e:  # noqa: BLE001
            self.fatal = f"{type(e).__name__}: {e}"

    def _read_replies(self, s, buf, n):
        """Reads n RESP replies (each `*3 :seq :ts :dup` or `-ERR`); returns the rest of buf."""
        got = 0
        pos = 0
        while got < n:
            parsed = _parse(buf, pos)
            if parsed is None:
                buf = buf[pos:]
                pos = 0
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("redis closed the publisher's connection")
                buf += chunk
                continue
            val, pos = parsed
            got += 1
            with self.lock:
                if isinstance(val, RespError):
                    self.errors += 1
                    if self.first_error is None:
                        self.first_error = str(val)
                else:
                    self.acked += 1
        return buf[pos:]

    def _run(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ncmd = len(self.cmds)
        i = 0
        buf = b""
        t0 = time.monotonic()
        next_tick = t0
        max_batch = max(1, int(self.rate * TICK * 20))
        while not self.stop.is_set():
            now = time.monotonic()
            due = int(self.rate * (now - t0)) - self.sent
            self.max_behind = max(self.max_behind, due)
            n = min(due, max_batch)
            if n > 0:
                batch = []
                for _ in range(n):
                    batch.append(self.cmds[i])
                    i = (i + 1) % ncmd
                s.sendall(b"".join(batch))
                self.sent += n
                buf = self._read_replies(s, buf, n)
            next_tick += TICK
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()
        s.close()


class RespError(str):
    pass


def _parse(buf, pos):
    """One RESP2 value from buf[pos:]: (value, new_pos), or None if incomplete."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None
    kind, line = buf[pos:pos + 1], buf[pos + 1:end]
    nxt = end + 2
    if kind == b":":
        return int(line), nxt
    if kind == b"+":
        return line.decode(), nxt
    if kind == b"-":
        return RespError(line.decode(errors="replace")), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            return None
        return buf[nxt:nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        out = []
        for _ in range(max(n, 0)):
            p = _parse(buf, nxt)
            if p is None:
                return None
            v, nxt = p
            out.append(v)
        return out, nxt
    raise RuntimeError(f"unexpected RESP reply {buf[pos:pos + 40]!r}")


# --------------------------------------------------------------------------
# layouts


def parse_layout(name, watch):
    """-> list of watched-task counts, one per edge ([] for none)."""
    if name == "none":
        return []
    m = re.fullmatch(r"(\d+)idle(\d*)", name)
    if m:
        k = int(m.group(1))
        j = int(m.group(2)) if m.group(2) else k
        if j > k:
            raise ValueError(f"layout {name}: more idle edges than edges")
        return [watch] * (k - j) + [0] * j
    m = re.fullmatch(r"(\d+)watch", name)
    if m:
        return [watch] * int(m.group(1))
    m = re.fullmatch(r"(\d+)x(\d+)", name)
    if m:
        return [int(m.group(2))] * int(m.group(1))
    raise ValueError(f"unknown layout {name!r} (none, Kidle, Kwatch, KidleJ, KxN)")


def watched_sets(counts, tasks, seed):
    """Edge i's random tasks: drawn from its own seeded generator, so edge 1's set is
    the same in every layout."""
    out = []
    for i, w in enumerate(counts):
        rng = random.Random(seed * 1000 + i)
        out.append(sorted(rng.sample(tasks, min(w, len(tasks)))) if w else [])
    return out


def snapshot(red, pub, edges, subs):
    t = time.monotonic()
    out_b, in_b, rcpu = red.stats()
    acked, errors = pub.counts()
    return dict(t=t, out=out_b, inb=in_b, rcpu=rcpu, acked=acked, errors=errors,
                ecpu=sum(e.cpu() for e in edges), frames=sum(s.frames() for s in subs),
                host=host_cpu(), self_cpu=sum(os.times()[:2]))


def run_layout(a, name, rnd, tasks, workdir):
    counts = parse_layout(name, a.watch)
    sets = watched_sets(counts, tasks, a.seed)
    lwd = tempfile.mkdtemp(prefix=f"{name}-", dir=workdir)
    red, edges, subs, pub = None, [], [], None
    try:
        red = Redis(lwd)
        for i in range(len(counts)):
            edges.append(Edge(a.edge, i + 1, red.url, lwd, a.edge_arg))
        for e in edges:
            e.wait_ready()
        if edges:
            deadline = time.monotonic() + 20
            while not red.has_function():
                if time.monotonic() > deadline:
                    raise RuntimeError("the edges did not load the sluice function")
                time.sleep(0.1)
        else:
            with open(a.function_file, "rb") as f:
                red.r.function_load(f.read(), replace=True)
        for e, ts in zip(edges, sets):
            if ts:
                subs.append(Subscribers(e, ts, a.max_tasks_per_connection))
        for s in subs:
            s.wait_ready()
        pub = Publisher(red.port, tasks, a.rate, a.schema, a.shards, a.feeds_per_shard, a.seed)
        pub.start()
        time.sleep(a.warmup)
        s0 = snapshot(red, pub, edges, subs)
        time.sleep(a.window)
        s1 = snapshot(red, pub, edges, subs)
        pub.stop.set()
        pub.join(5)
        # Sanity, after the window (its replies are not measured).
        dead = [e.node for e in edges if e.p.poll() is not None]
        feed_added = 0
        pipe = red.r.pipeline(transaction=False)
        feeds = all_feeds(a.schema, a.shards, a.feeds_per_shard)
        for f in feeds:
            pipe.xinfo_stream(f)
        for res in pipe.execute(raise_on_error=False):
            if isinstance(res, dict):
                feed_added += res.get("entries-added") or 0
        dt = s1["t"] - s0["t"]
        pubd = s1["acked"] - s0["acked"]
        hb, ht = s1["host"][0] - s0["host"][0], s1["host"][1] - s0["host"][1]
        watched = sum(len(s) for s in sets)
        row = dict(
            layout=name, round=rnd + 1, schema=a.schema, edges=len(edges),
            watched_tasks=watched, watching_edges=sum(1 for s in sets if s),
            sse_connections=sum(len(s.conns) for s in subs),
            window_s=round(dt, 3), rate_target=a.rate,
            published=pubd, published_per_s=round(pubd / dt, 1),
            publish_errors=s1["errors"] - s0["errors"], first_error=pub.first_error,
            publisher_fatal=pub.fatal, publisher_max_behind=pub.max_behind,
            redis_out_bytes=s1["out"] - s0["out"],
            redis_out_b_per_event=round((s1["out"] - s0["out"]) / pubd, 1) if pubd else None,
            redis_in_b_per_event=round((s1["inb"] - s0["inb"]) / pubd, 1) if pubd else None,
            redis_cpu_pct=round(100 * (s1["rcpu"] - s0["rcpu"]) / dt, 1),
            edges_cpu_pct=round(100 * (s1["ecpu"] - s0["ecpu"]) / dt, 1),
            edges_cpu_us_per_event=round(1e6 * (s1["ecpu"] - s0["ecpu"]) / pubd, 1) if pubd else None,
            delivered_per_s=round((s1["frames"] - s0["frames"]) / dt, 1),
            expected_delivered_per_s=round(pubd / dt * watched / len(tasks), 1),
            resets=sum(s.resets() for s in subs),
            subscriber_errors=[err for s in subs for err in s.errors()],
            host_busy_pct=round(100 * hb / ht, 1) if ht else None,
            host_cpus=os.cpu_count(),
            script_cpu_pct=round(100 * (s1["self_cpu"] - s0["self_cpu"]) / dt, 1),
            feed_entries_added=feed_added, published_total=pub.acked,
            dead_edges=dead,
            edge_feed_metrics=[e.feed_metrics() for e in edges],
        )
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row
    except Exception:
        if a.keep:
            log(f"logs kept in {lwd}")
        raise
    finally:
        if pub is not None:
            pub.stop.set()
            pub.join(5)
        for s in subs:
            s.close()
        for e in edges:  # all at once: SIGTERM, then a shared grace period
            if e.p.poll() is None:
                e.p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        for e in edges:
            try:
                e.p.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                e.p.kill()
                e.p.wait(5)
        if red is not None:
            red.close()
        if not a.keep:
            shutil.rmtree(lwd, ignore_errors=True)


def fmt(v, nd=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def table(rows_by_layout, layouts, a):
    cols = [("layout", None), ("edges", None), ("watched tasks", None), ("published/s", "published_per_s"),
            ("Redis out B/event", "redis_out_b_per_event"), ("Redis CPU %", "redis_cpu_pct"),
            ("edges CPU %", "edges_cpu_pct"), ("delivered/s", "delivered_per_s"),
            ("expected/s", "expected_delivered_per_s"), ("host busy %", "host_busy_pct")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for name in layouts:
        rs = rows_by_layout.get(name)
        if not rs:
            lines.append(f"| {name} | failed |" + " |" * (len(cols) - 2))
            continue
        med = {k: statistics.median(r[k] for r in rs if r[k] is not None)
               for _, k in cols if k and any(r[k] is not None for r in rs)}
        r0 = rs[0]
        cells = [name, str(r0["edges"]), str(r0["watched_tasks"])]
        cells += [fmt(float(med.get(k)) if k in med else None) for _, k in cols[3:]]
        lines.append("| " + " | ".join(cells) + " |")
    rounds = len(next(iter(rows_by_layout.values()), []))
    lines.append("")
    lines.append(f"schema {a.schema}, {a.rate}/s target over {a.tasks} tasks, 160-byte payload, "
                 f"warm-up {a.warmup:g} s, window {a.window:g} s, "
                 f"{'medians of ' + str(rounds) + ' rounds' if rounds > 1 else '1 round'}; "
                 f"CPU % of one core; host busy % of all {os.cpu_count()} cores.")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--edge", default="target/release/sluice-edge", help="sluice-edge binary")
    ap.add_argument("--schema", choices=["v1", "v2"], default="v1",
                    help="feed keys: v1 <tag>:feed; v2 <tag>:feed:<(h//shards)%%feeds-per-shard>")
    ap.add_argument("--layouts", default="none,1idle,1watch,8idle7,8idle,8x250")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rate", type=int, default=4000, help="published events/s")
    ap.add_argument("--tasks", type=int, default=10000, help="active tasks (bench-<i>)")
    ap.add_argument("--watch", type=int, default=250, help="tasks watched per watching edge (W)")
    ap.add_argument("--max-tasks-per-connection", type=int, default=None,
                    help="tasks per SSE connection (default: the edge arg of that name, else 100)")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--feeds-per-shard", type=int, default=64, help="v2 only")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--function-file", default=DEFAULT_FUNCTION,
                    help="sluice_publish library loaded by the script for the `none` layout")
    ap.add_argument("--edge-arg", action="append", default=[],
                    help="extra edge argument, repeatable: --edge-arg=--feed-grace-secs --edge-arg=1")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) of each layout")
    a = ap.parse_args()

    if not shutil.which("redis-server"):
        sys.exit("needs redis-server (apt-get install -y redis-server)")
    layouts = [x.strip() for x in a.layouts.split(",") if x.strip()]
    for name in layouts:
        parse_layout(name, a.watch)
    if any(parse_layout(n, a.watch) for n in layouts):
        if not (os.path.isfile(a.edge) and os.access(a.edge, os.X_OK)):
            sys.exit(f"no edge binary at {a.edge}")
    if "none" in layouts and not os.path.isfile(a.function_file):
        sys.exit(f"no function file at {a.function_file}")
    if a.max_tasks_per_connection is None:
        a.max_tasks_per_connection = 100
        joined = " ".join(a.edge_arg).replace("=", " ").split()
        if "--max-tasks-per-connection" in joined:
            a.max_tasks_per_connection = int(joined[joined.index("--max-tasks-per-connection") + 1])
    if not (a.window > 0 and a.warmup >= 0 and 0 < a.rate <= 200000 and 0 < a.tasks <= 10**6
            and 1 <= a.rounds <= 50):
        sys.exit("out-of-range --window/--warmup/--rate/--tasks/--rounds")

    # SIGTERM/SIGHUP tear down like Ctrl-C.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tasks = [f"bench-{i}" for i in range(a.tasks)]
    workdir = tempfile.mkdtemp(prefix="feeds-on-demand-")
    rows = {}
    failed = False
    try:
        for rnd in range(a.rounds):
            for name in layouts:
                log(f"round {rnd + 1}/{a.rounds}: {name}")
                try:
                    row = run_layout(a, name, rnd, tasks, workdir)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 (one layout failing does not stop the others)
                    failed = True
                    log(f"layout {name} failed: {e}")
                    traceback.print_exc(file=sys.stderr)
                    continue
                rows.setdefault(name, []).append(row)
                log(f"  {name}: {row['published_per_s']}/s published, "
                    f"{row['redis_out_b_per_event']} B/event out, Redis CPU {row['redis_cpu_pct']} %, "
                    f"edges CPU {row['edges_cpu_pct']} %, delivered {row['delivered_per_s']}/s "
                    f"(expected {row['expected_delivered_per_s']}), host busy {row['host_busy_pct']} %")
                if row["publish_errors"] or row["publisher_fatal"] or row["subscriber_errors"] or row["dead_edges"]:
                    log(f"  WARNING: errors: publish={row['publish_errors']} ({row['first_error']}), "
                        f"publisher={row['publisher_fatal']}, subscribers={row['subscriber_errors']}, "
                        f"dead edges={row['dead_edges']}")
                if row["published_per_s"] < 0.97 * a.rate:
                    log(f"  WARNING: published {row['published_per_s']}/s, below the {a.rate}/s target "
                        f"(the machine may be saturated)")
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows, layouts, a), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

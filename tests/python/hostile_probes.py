"""Hostile-client probes against one edge (memory store), for the table in
tests/RELIABILITY.md. Starts the edge itself on 127.0.0.1:18181 with short
deadlines, runs each probe, prints one line per probe: what was observed and
how long it took. Loopback only; every loop is bounded.

    python3 tests/python/hostile_probes.py target/release/sluice-edge
"""

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request

EDGE = sys.argv[1]
ADDR = ("127.0.0.1", 18181)
KEY = "pk-probe-0123456789"
FLAGS = ["--insecure", "--listen", "%s:%d" % ADDR, "--publish-key", KEY,
         "--heartbeat-secs", "1", "--write-timeout-secs", "2",
         "--head-timeout-secs", "2", "--body-timeout-secs", "2",
         "--max-connections", "50", "--max-open-connections", "60"]


def url(path):
    return "http://%s:%d%s" % (ADDR[0], ADDR[1], path)


def wait_closed(s, limit=30.0):
    """Seconds until the peer closed `s`, and the bytes it sent first."""
    start = time.monotonic()
    s.settimeout(limit)
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        return None, got
    except OSError:
        pass
    return time.monotonic() - start, got


def publish(task, data):
    req = urllib.request.Request(
        url("/v1/tasks/%s/events" % task), method="POST",
        data=json.dumps({"type": "progress", "data": data}).encode(),
        headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


def streams():
    with urllib.request.urlopen(url("/capacity"), timeout=5) as r:
        return json.loads(r.read())["connections"]


def report(probe, observed):
    print("%-58s %s" % (probe, observed), flush=True)


def small_window():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(ADDR)
    return s


def main():
    edge = subprocess.Popen([EDGE] + FLAGS, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url("/readyz"), timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        probes(edge)
    finally:
        edge.terminate()
        edge.wait(timeout=20)


def probes(edge):
    # Silent socket.
    s = socket.create_connection(ADDR)
    took, _ = wait_closed(s)
    report("silent socket (head timeout 2 s)", "closed after %.1f s" % took if took else "open")
    # One byte per 0.5 s.
    s = socket.create_connection(ADDR)
    start = time.monotonic()
    closed = None
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " * 4:
        try:
            s.send(bytes([b]))
        except OSError:
            closed = time.monotonic() - start
            break
        time.sleep(0.5)
        if time.monotonic() - start > 20:
            break
    report("one byte every 0.5 s, head never ends", "closed after %.1f s" % closed if closed else "open")
    # Idle keep-alive.
    s = socket.create_connection(ADDR)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    took, got = wait_closed(s)
    report("keep-alive left idle after one request", "%s, closed after %.1f s" % (got.split(b"\r\n")[0].decode(), took))
    # Slow body.
    s = socket.create_connection(ADDR)
    s.sendall(("POST /v1/tasks/probe/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\":" % KEY).encode())
    took, got = wait_closed(s)
    report("POST body 10 of 100 bytes, then nothing", "%s after %.1f s" % (got.split(b"\r\n")[0].decode(), took))
    # Unparseable requests.
    for name, req in [
        ("200 headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"),
        ("70 KB target", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("non-UTF-8 path", b"GET /v1/tasks/\xff HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("bad method", b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("HTTP/2 cleartext preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ]:
        s = socket.create_connection(ADDR)
        s.sendall(req)
        _, got = wait_closed(s)
        head, _, body = got.partition(b"\r\n\r\n")
        report(name, (head.split(b"\r\n")[0] + b" " + body).decode() if got else "closed, no answer")
    # Over the open-connection limit.
    held = [socket.create_connection(ADDR) for _ in range(60)]
    s = socket.create_connection(ADDR)
    took, got = wait_closed(s)
    report("61st open connection (limit 60)", "%s in %.3f s" % (got.split(b"\r\n")[0].decode(), took))
    for h in held:
        h.close()
    time.sleep(0.5)
    # SSE reader that stops reading while events flow.
    pad = "x" * 32768
    for name, task, flowing in [("SSE stops reading, events flowing", "probe-flow", True),
                                ("SSE stops reading, then the task goes quiet", "probe-quiet", False)]:
        s = small_window()
        s.sendall(("GET /v1/tasks/%s/events HTTP/1.1\r\nHost: x\r\n\r\n" % task).encode())
        seen = b""
        while b"retry:" not in seen:
            seen += s.recv(4096)
        start = time.monotonic()
        n = 0
        while streams() > 0 and time.monotonic() - start < 60:
            if flowing or n < 400:
                publish(task, {"i": n, "pad": pad})
                n += 1
            else:
                time.sleep(0.1)
        left = streams()
        report(name, "closed after %.1f s (%d events published)" % (time.monotonic() - start, n)
               if left == 0 else "open")
        s.close()
    # WebSocket that never reads after the handshake, quiet task.
    s = small_window()
    s.sendall(b"GET /v1/tasks/probe-deaf/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += s.recv(1)
    start = time.monotonic()
    while streams() > 0 and time.monotonic() - start < 30:
        time.sleep(0.1)
    report("WebSocket reads nothing after the handshake, quiet task",
           "closed after %.1f s (missed pongs)" % (time.monotonic() - start) if streams() == 0 else "open")
    s.close()


main()

"""A client host that vanishes mid-stream, inside a network namespace of its
own (run under `unshare -n`, as root): the edge and the client share the
namespace's loopback, and once the client's SSE stream is open every packet
from the client's port is dropped, as if its host had lost power. The
edge's heartbeats then go unacknowledged. Prints `closed_after <seconds>`
when the edge closed the stream (its /readyz count of streams went to 0)
or `still_open` after the deadline.

    unshare -n python3 tests/python/dead_host.py <sluice-edge> <deadline-secs>
"""

import socket
import subprocess
import sys
import time

EDGE, DEADLINE = sys.argv[1], float(sys.argv[2])
ADDR = ("127.0.0.1", 18080)


def get(path):
    s = socket.create_connection(ADDR, timeout=2)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


def streams():
    body = get("/readyz").split(b"\r\n\r\n", 1)[1]
    marker = b'"connections":'
    at = body.index(marker) + len(marker)
    return int(body[at:].split(b",")[0].split(b"}")[0])


subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
edge = subprocess.Popen(
    [EDGE, "--insecure", "--listen", "%s:%d" % ADDR, "--heartbeat-secs", "1",
     "--write-timeout-secs", "2"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
)
try:
    for _ in range(200):
        try:
            if b" 200 " in get("/readyz").split(b"\r\n", 1)[0]:
                break
        except OSError:
            pass
        time.sleep(0.05)
    client = socket.create_connection(ADDR, timeout=10)
    client.sendall(b"GET /v1/tasks/dead-host/events HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = b""
    while b"retry:" not in seen:
        seen += client.recv(4096)
    assert streams() == 1, "the stream is open"
    port = client.getsockname()[1]
    subprocess.run(
        ["iptables", "-w", "-A", "INPUT", "-p", "tcp", "--sport", str(port),
         "--dport", str(ADDR[1]), "-j", "DROP"],
        check=True,
    )
    start = time.monotonic()
    while time.monotonic() - start < DEADLINE:
        if streams() == 0:
            print("closed_after %.1f" % (time.monotonic() - start), flush=True)
            break
        time.sleep(0.2)
    else:
        print("still_open", flush=True)
finally:
    edge.terminate()
    edge.wait(timeout=20)

"""Opens a CONNECT tunnel through clawgate's token listener with a proxy
password and holds it open, idle, until clawgate ends it.

usage: hold_tunnel.py PROXY_PORT PROXY_CA PASSWORD HOST:PORT
prints `{"status": …, "request_id": …}` once the tunnel is answered, then
`{"closed_after": SECONDS}` when clawgate closes it (or `{"closed_after":
null}` after 20 s).
"""
import base64
import json
import socket
import ssl
import sys
import time

port, ca, password, target = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection(("127.0.0.1", int(port)), timeout=10)
tls = ctx.wrap_socket(raw, server_hostname="localhost")
auth = base64.b64encode(f"agent:{password}".encode()).decode()
tls.sendall(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\nproxy-authorization: Basic {auth}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = tls.recv(4096)
    if not chunk:
        break
    head += chunk
lines = head.decode("latin-1").split("\r\n")
status = int(lines[0].split(" ")[1]) if lines and lines[0] else 0
request_id = next((l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("x-clawgate-request-id:")), None)
print(json.dumps({"status": status, "request_id": request_id}), flush=True)
opened = time.monotonic()
tls.settimeout(20)
try:
    while tls.recv(4096):
        pass
    closed = time.monotonic() - opened
except (socket.timeout, TimeoutError):
    closed = None
except (ssl.SSLError, OSError):
    closed = time.monotonic() - opened
print(json.dumps({"closed_after": closed}), flush=True)

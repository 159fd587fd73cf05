"""Sends raw request heads to clawgate's agent listener over mTLS, one
connection each, and prints one JSON line per answer: the status and body.

Used by the egress tests to send host spellings (`0x7f000001`, `017700000001`)
that curl would normalise before they left it.

usage: raw_proxy.py PORT CA CERT KEY < requests.json   (a JSON list of strings)
"""
import json
import socket
import ssl
import sys


def send(port, ctx, head):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(head.encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head_bytes, _, body = data.partition(b"\r\n\r\n")
            lines = head_bytes.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1]) if lines and lines[0] else 0
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                body += chunk
            return {"status": status, "body": body.decode("utf-8", "replace")}


def main():
    port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    for head in json.load(sys.stdin):
        print(json.dumps(send(port, ctx, head)), flush=True)


main()

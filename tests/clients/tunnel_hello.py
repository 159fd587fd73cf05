"""Opens a tunnel through clawgate's agent listener (mTLS) and starts a TLS
session inside it with a ClientHello shaped as asked, then reports whether
the upstream answered.

The ClientHello is Python's own (OpenSSL's), taken from a memory BIO, so it
is a real one; the shapes change only how it is sent or add one extension:

  plain      as OpenSSL sends it (SNI as given, or none when SNI is `-`)
  records    the handshake message cut across TLS records of 40 bytes
  segments   the records above, each in its own TCP write, with pauses
  ech        an encrypted_client_hello extension (0xfe0d) appended

After sending, the handshake is finished over the tunnel (for `ech` it
cannot be: the extension is not OpenSSL's) and one HTTP/1.1 request sent.
Prints one JSON line: {"connect": status, "id": the CONNECT's request id,
"handshake": bool, "status": int}.

usage: tunnel_hello.py PORT CA CERT KEY TARGET SNI SHAPE UPSTREAM_CA
"""
import json
import socket
import ssl
import struct
import sys
import time


def proxy_socket(port, ca, cert, key, target):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    tls.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = tls.recv(1)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ")[1]) if data else 0
    request_id = ""
    for line in data.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-clawgate-request-id":
            request_id = value.strip()
    return tls, status, request_id


def split_records(hello, size):
    """The handshake payload of `hello`'s records, re-cut into records of
    at most `size` bytes."""
    payload = b""
    rest = hello
    while rest:
        kind, version, length = struct.unpack("!BHH", rest[:5])
        assert kind == 22
        payload += rest[5 : 5 + length]
        rest = rest[5 + length :]
    out = []
    for i in range(0, len(payload), size):
        piece = payload[i : i + size]
        out.append(struct.pack("!BHH", 22, 0x0301, len(piece)) + piece)
    return out


def add_extension(hello, kind, data):
    """`hello` (one record) with one more extension at the end."""
    record = bytearray(hello)
    body = record[9:]
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + struct.unpack("!H", body[at : at + 2])[0]
    at += 1 + body[at]
    ext_len = struct.unpack("!H", body[at : at + 2])[0]
    extra = struct.pack("!HH", kind, len(data)) + data
    body[at : at + 2] = struct.pack("!H", ext_len + len(extra))
    body += extra
    message = bytes([1]) + struct.pack("!I", len(body))[1:] + bytes(body)
    return struct.pack("!BHH", 22, 0x0301, len(message)) + message


def main():
    port, ca, cert, key, target, sni, shape, upstream_ca = sys.argv[1:9]
    tunnel, status, request_id = proxy_socket(int(port), ca, cert, key, target)
    result = {"connect": status, "id": request_id, "handshake": False, "status": 0}
    if status != 200:
        print(json.dumps(result))
        return
    ctx = ssl.create_default_context(cafile=upstream_ca)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=None if sni == "-" else sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    if shape == "plain":
        pieces = [hello]
    elif shape == "records":
        pieces = [b"".join(split_records(hello, 40))]
    elif shape == "segments":
        pieces = split_records(hello, 40)
    elif shape == "ech":
        pieces = [add_extension(hello, 0xFE0D, bytes(64))]
    else:
        raise SystemExit(f"unknown shape {shape}")
    try:
        for piece in pieces:
            tunnel.sendall(piece)
            if len(pieces) > 1:
                time.sleep(0.05)
        while True:
            try:
                obj.do_handshake()
                result["handshake"] = True
                break
            except ssl.SSLWantReadError:
                out = outgoing.read()
                if out:
                    tunnel.sendall(out)
                chunk = tunnel.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
        if result["handshake"]:
            obj.write(f"GET /v1/anything HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n".encode())
            tunnel.sendall(outgoing.read())
            answer = b""
            while b"\r\n" not in answer:
                chunk = tunnel.recv(65536)
                if not chunk:
                    break
                incoming.write(chunk)
                try:
                    answer += obj.read(65536)
                except ssl.SSLWantReadError:
                    pass
            if answer:
                result["status"] = int(answer.split(b" ")[1])
    except (ConnectionError, ssl.SSLError, OSError) as e:
        result["error"] = str(e)
    print(json.dumps(result))


main()

"""A fake OpenAI-compatible model server over HTTPS, for the OpenClaw test,
and a listener standing in for a host outside policy.

usage: fake_model.py CERT KEY REAL_KEY FORBIDDEN_URL LOG
(`{port}` in FORBIDDEN_URL becomes the forbidden listener's port)
prints `model PORT` and `forbidden PORT` once both listen, then serves until
killed. Every request to the model (method, path, Authorization, whether it
streamed, the messages' roles) and every connection to the forbidden
listener is a JSON line in LOG.

/v1/chat/completions answers in OpenAI's SSE stream format when asked to
stream (JSON otherwise). The first turn (no tool result yet) answers with a
`web_fetch` tool call to FORBIDDEN_URL; a turn that carries a tool result
answers with text quoting the start of it. Any other request
without `Authorization: Bearer REAL_KEY` gets 401; `/healthz` needs none.
"""
import json
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CERT, KEY, REAL_KEY, FORBIDDEN_URL, LOG = sys.argv[1:6]
lock = threading.Lock()
forbidden_url = FORBIDDEN_URL


def log(entry):
    with lock, open(LOG, "a") as f:
        f.write(json.dumps(entry) + "\n")


def chunk(delta, finish=None):
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorised(self):
        return self.headers.get("authorization") == f"Bearer {REAL_KEY}"

    def do_GET(self):
        log({"method": "GET", "path": self.path, "authorization": self.headers.get("authorization")})
        if self.path == "/healthz":
            return self.send_json(200, {"ok": True})
        if not self.authorised():
            return self.send_json(401, {"error": {"message": "bad key", "type": "auth"}})
        self.send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "test"}]})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        messages = body.get("messages", [])
        tool_results = [m for m in messages if m.get("role") == "tool"]
        log({
            "method": "POST",
            "path": self.path,
            "authorization": self.headers.get("authorization"),
            "stream": bool(body.get("stream")),
            "roles": [m.get("role") for m in messages],
            "tools": [t.get("function", {}).get("name") for t in body.get("tools", [])],
            "tool_results": [str(m.get("content"))[:2000] for m in tool_results],
        })
        if not self.authorised():
            return self.send_json(401, {"error": {"message": "bad key", "type": "auth"}})
        if not tool_results:
            call = {
                "index": 0,
                "id": "call_fetch_1",
                "type": "function",
                "function": {"name": "web_fetch", "arguments": json.dumps({"url": forbidden_url})},
            }
            deltas = [({"role": "assistant", "content": None, "tool_calls": [call]}, None), ({}, "tool_calls")]
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
            finish = "tool_calls"
        else:
            text = "fetch result: " + str(tool_results[-1].get("content"))[:200]
            deltas = [({"role": "assistant", "content": text}, None), ({}, "stop")]
            message = {"role": "assistant", "content": text}
            finish = "stop"
        if not body.get("stream"):
            return self.send_json(200, {
                "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": "fake-model",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            })
        # Streamed as OpenAI does: server-sent events in a chunked body.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()

        def send(data):
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        for delta, fin in deltas:
            send(f"data: {json.dumps(chunk(delta, fin))}\n\n".encode())
        usage = chunk({}, None)
        usage["choices"] = []
        usage["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        send(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def forbidden(sock):
    while True:
        conn, addr = sock.accept()
        log({"forbidden_connection": str(addr)})
        conn.close()


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CERT, KEY)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen(16)
    threading.Thread(target=forbidden, args=(other,), daemon=True).start()
    global forbidden_url
    forbidden_url = FORBIDDEN_URL.replace("{port}", str(other.getsockname()[1]))
    print(f"model {server.server_address[1]}", flush=True)
    print(f"forbidden {other.getsockname()[1]}", flush=True)
    server.serve_forever()


main()

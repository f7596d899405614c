#!/usr/bin/env python3
"""A fake Anthropic Messages API on loopback, for interop runs and benchmarks by hand (never a paid API).

`POST /v1/messages` answers `pong: <the last user text>` (streamed as Claude Code asks: message_start,
one text block in two deltas, message_delta, message_stop; or as one JSON message when `stream` is false);
`POST /v1/messages/count_tokens` answers a small count; anything else is a 404 in Anthropic's error shape.
Prints `listening on http://127.0.0.1:PORT` once bound, then one line per request (method, path, model, the
last user text) to stderr. Run: `python3 bench/fake_anthropic.py [--port 0]`. No packages needed.
"""
import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def last_user_text(body):
    """The text of the last user message that has text (tool results carry none), or ''."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
        texts = [t for t in texts if not t.startswith("<system-reminder>")]
        if texts:
            return texts[-1]
    return ""


def sse(kind, payload):
    payload = {"type": kind, **payload}
    return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

    def do_HEAD(self):
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        path = self.path.split("?")[0]
        text = last_user_text(body)
        print(f"{self.command} {path} model={body.get('model')} stream={body.get('stream')} "
              f"last_user={text[:80]!r}", file=sys.stderr, flush=True)
        if path.endswith("/v1/messages/count_tokens"):
            return self._json(200, {"input_tokens": 7})
        if not path.endswith("/v1/messages"):
            return self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": path}})
        answer = f"pong: {text}"
        model = body.get("model") or "claude-fake"
        usage = {"input_tokens": 10, "output_tokens": 5}
        if not body.get("stream"):
            return self._json(200, {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                                    "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn",
                                    "stop_sequence": None, "usage": usage})
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        half = len(answer) // 2
        chunks = [
            sse("message_start", {"message": {"id": "msg_fake", "type": "message", "role": "assistant",
                                              "content": [], "model": model, "stop_reason": None,
                                              "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": answer[:half]}}),
            sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": answer[half:]}}),
            sse("content_block_stop", {"index": 0}),
            sse("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                  "usage": {"output_tokens": 5}}),
            sse("message_stop", {}),
        ]
        for chunk in chunks:
            self.wfile.write(chunk)
            self.wfile.flush()
        self.close_connection = True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

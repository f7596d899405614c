#!/usr/bin/env python3
"""Agent turns end to end, server + host + runner + the real Claude Code CLI against a fake Anthropic API.

One setup per run, then TURNS turns in one session, each timed from the message POST to the first
`response.output_text.delta` of the session's SSE stream and to its `session.status` idle:

  --server rust|python   whose server (ours: `omnigent start` in a temp home on a free port; Python:
                         `omnigent server --port P` in a temp HOME)
  --host rust|python     whose host dials it (ours: `omnigent start`'s own host for our server, else
                         `omnigent host URL` in the foreground; Python: `omnigent host --server URL`)
  --agent polly|bundle|openai-bundle
                         Python's built-in `polly` (Python server only), or an uploaded bundle whose
                         config.yaml says `harness: claude-sdk` (multipart POST /v1/sessions, as `omnigent run`),
                         or one for `openai-agents` whose base_url is web/bench/fake-responses.mjs (node)

Both hosts get the same environment: HOME in the temp dir, ANTHROPIC_BASE_URL = bench/fake_anthropic.py on
loopback, ANTHROPIC_API_KEY = a fake key, the Claude Code CLI (`--claude`, default testkit's install) first on
PATH and as OMNIGENT_CLAUDE_PATH. Prints each turn, the session's items at the end (`--items`), and a JSON
summary line. Not a test (the Python omnigent is ~700 MB): a by-hand interop check and benchmark driver.

  bench/harness_turns.py --rust target/release/omnigent --python /work/py/venv/bin/omnigent \\
      --server python --host rust --agent polly --turns 3 --items
"""
import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAIT = 120


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6767:
            return port


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def call(base, method, path, body=None, headers=None, raw=None, timeout=60):
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    hdrs = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=hdrs)
    resp = conn.getresponse()
    text = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(text) if text else None
    except ValueError:
        return resp.status, text.decode(errors="replace")


def wait_for(what, fn, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


class Procs:
    """Children started in their own process group, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, logs):
        self.procs, self.logs = [], logs

    def start(self, name, argv, env, cwd=None):
        out = open(self.logs / f"{name}.log", "wb")
        log(f"$ {' '.join(argv)}   (log: {self.logs / (name + '.log')})")
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def start_fake(logs):
    out = open(logs / "fake_anthropic.log", "wb")
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "bench/fake_anthropic.py")],
                            stdout=subprocess.PIPE, stderr=out, start_new_session=True)
    line = proc.stdout.readline().decode().strip()
    assert line.startswith("listening on "), line
    return proc, line.removeprefix("listening on ")


def start_fake_responses(logs):
    """web/bench/fake-responses.mjs on a free port: (process, its base_url)."""
    err = subprocess.PIPE
    proc = subprocess.Popen(["node", str(ROOT / "web/bench/fake-responses.mjs"), "0"], stdout=open(
        logs / "fake_responses.log", "wb"), stderr=err, start_new_session=True)
    line = proc.stderr.readline().decode()
    url = next(w for w in line.split() if w.startswith("http://"))
    return proc, url


def bundle_bytes(tmp, responses_url=None):
    d = tmp / "agent"
    d.mkdir()
    if responses_url:
        executor = ("executor:\n  type: omnigent\n  model: fake-model\n  config:\n    harness: openai-agents\n"
                    f"  auth:\n    type: api_key\n    api_key: sk-fake\n    base_url: {responses_url}\n")
    else:
        executor = "executor:\n  type: omnigent\n  model: claude-sonnet-4-5\n  config:\n    harness: claude-sdk\n"
    (d / "config.yaml").write_text(
        "spec_version: 1\nname: bench-agent\ninstructions: You answer briefly.\n" + executor +
        "os_env:\n  type: caller_process\n  cwd: .\n  sandbox:\n    type: none\n")
    subprocess.run(["tar", "czf", str(tmp / "bundle.tar.gz"), "-C", str(d), "config.yaml"], check=True)
    return (tmp / "bundle.tar.gz").read_bytes()


def multipart(metadata, bundle):
    boundary = "harness-turns-" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n\r\n"
            f"{json.dumps(metadata)}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"bundle\"; "
            f"filename=\"bundle.tar.gz\"\r\nContent-Type: application/gzip\r\n\r\n").encode()
    body += bundle + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Stream:
    """The session's SSE stream, read on a thread: (monotonic time, event) on a queue."""

    def __init__(self, base, session):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=300)
        self.conn.request("GET", f"/v1/sessions/{session}/stream", headers={"Accept": "text/event-stream"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        self.events = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        data = []
        for raw in self.resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                try:
                    self.events.put((time.monotonic(), json.loads("\n".join(data))))
                except ValueError:
                    pass
                data = []

    def drain(self):
        while not self.events.empty():
            self.events.get_nowait()


def turn(base, session, stream, text):
    """POST one message; (ms to the first text delta, ms to idle, the deltas' text, event types seen)."""
    stream.drain()
    body = {"type": "message", "data": {"role": "user", "content": [{"type": "input_text", "text": text}]}}
    t0 = time.monotonic()
    status, answer = call(base, "POST", f"/v1/sessions/{session}/events", body)
    if status >= 300:
        raise SystemExit(f"POST events: {status} {answer}")
    first, deltas, kinds = None, [], []
    deadline = t0 + WAIT
    while True:
        try:
            at, event = stream.events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise SystemExit(f"no idle within {WAIT}s; events seen: {kinds}")
        kind = event.get("type", "")
        if kind != "session.heartbeat":
            kinds.append(kind)
        if kind == "response.output_text.delta":
            first = first or at
            deltas.append(event.get("delta", ""))
        if kind in ("response.failed", "response.error"):
            log(f"  {kind}: {json.dumps(event)[:600]}")
        if kind == "session.status" and event.get("status") in ("idle", "failed") and at > t0 and (
                deltas or "response.failed" in kinds):
            return ((first - t0) * 1000 if first else None, (at - t0) * 1000, "".join(deltas), kinds)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rust", default=str(ROOT / "target/debug/omnigent"))
    p.add_argument("--python", default="/work/py/venv/bin/omnigent")
    p.add_argument("--claude", default=str(ROOT / "target/agent-clis/node_modules/.bin/claude"))
    p.add_argument("--server", choices=["rust", "python"], required=True)
    p.add_argument("--host", choices=["rust", "python"], required=True)
    p.add_argument("--agent", choices=["polly", "bundle", "openai-bundle"], default="bundle")
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--items", action="store_true", help="print the session's items at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, homes)")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="harness-turns-"))
    logs = tmp / "logs"
    logs.mkdir()
    procs = Procs(logs)
    fake, fake_url = start_fake(logs)
    responses, responses_url = start_fake_responses(logs) if args.agent == "openai-bundle" else (None, None)
    log(f"fake Anthropic API: {fake_url}; temp dir {tmp}")
    claude = Path(args.claude).resolve()
    home = tmp / "home"
    (home / ".claude").mkdir(parents=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OMNIGENT_", "OPENAI_"))}
    host_env = dict(base_env, HOME=str(home), ANTHROPIC_BASE_URL=fake_url, ANTHROPIC_API_KEY="sk-ant-fake",
                    PATH=f"{claude.parent}:{os.environ['PATH']}", OMNIGENT_CLAUDE_PATH=str(claude),
                    DISABLE_TELEMETRY="1", DISABLE_AUTOUPDATER="1", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1")
    workspace = tmp / "workspace"
    workspace.mkdir()
    summary = {"server": args.server, "host": args.host, "agent": args.agent}
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        if args.server == "python":
            py_home = tmp / "py-server"
            py_home.mkdir()
            env = dict(base_env, HOME=str(py_home), OMNIGENT_HOME=str(py_home))
            if args.host == "python":
                env = dict(host_env, HOME=str(home), OMNIGENT_HOME=str(home / ".omnigent"))
            t = time.monotonic()
            procs.start("python-server", [args.python, "server", "--port", str(port)], env)
            wait_for("the Python server's /health", lambda: call(base, "GET", "/health", timeout=2)[0] == 200
                     if _up(port) else False)
            log(f"Python server healthy after {time.monotonic() - t:.1f}s at {base}")
        else:
            env = dict(host_env, OMNIGENT_HOME=str(tmp / "rs-home"), OMNIGENT_SERVER_PORT=str(port))
            out = subprocess.run([args.rust, "start", "--json"], env=env, capture_output=True, text=True)
            log(f"$ {args.rust} start --json -> {out.returncode} {out.stdout.strip()[:300]} {out.stderr.strip()[:300]}")
            procs.stop_rust = (args.rust, env)
        def online_hosts():
            status, hosts = call(base, "GET", "/v1/hosts")
            rows = (hosts.get("hosts") or hosts.get("data") or []) if status == 200 else []
            return [h["host_id"] for h in rows if h.get("status") == "online" or h.get("online")]

        # Our server's own host (`omnigent start`) is not the one to use when a Python host is asked for.
        others = set(online_hosts()) if args.server == "rust" and args.host == "python" else set()
        if args.host == "python":
            env = dict(host_env, OMNIGENT_HOME=str(home / ".omnigent"))
            procs.start("python-host", [args.python, "host", "--server", base, "--no-open", "--non-interactive"],
                        env)
        elif args.server == "python":
            env = dict(host_env, OMNIGENT_HOME=str(tmp / "rs-host-home"), OMNIGENT_LOG="info")
            procs.start("rust-host", [args.rust, "host", base], env)

        host_id = wait_for("an online host", lambda: next((h for h in online_hosts() if h not in others), None))
        log(f"host online: {host_id}")

        if args.agent == "polly":
            status, agents = call(base, "GET", "/v1/agents?limit=100")
            agent = next(a for a in agents["data"] if a["name"] == "polly")
            body = {"agent_id": agent["id"], "host_id": host_id, "workspace": str(workspace),
                    "host_type": "external"}
            log(f"POST /v1/sessions {json.dumps(body)}")
            status, created = call(base, "POST", "/v1/sessions", body)
        else:
            raw, headers = multipart({"host_id": host_id, "workspace": str(workspace), "host_type": "external"},
                                     bundle_bytes(tmp, responses_url))
            log(f"POST /v1/sessions (multipart: metadata + bundle, {args.agent})")
            status, created = call(base, "POST", "/v1/sessions", raw=raw, headers=headers)
        if status >= 300:
            raise SystemExit(f"POST /v1/sessions: {status} {created}")
        session = created.get("session_id") or created.get("id")
        log(f"session {session} (HTTP {status})")
        summary["session"] = session
        stream = Stream(base, session)
        firsts, ends = [], []
        for n in range(1, args.turns + 1):
            first, end, text, kinds = turn(base, session, stream, f"ping {n}")
            fmt = "n/a" if first is None else f"{first:.0f} ms"
            log(f"turn {n}: first token {fmt}, idle {end:.0f} ms, answer {text!r}")
            if first is None:
                log(f"  events: {kinds}")
            firsts.append(first)
            ends.append(end)
        summary.update(first_token_ms=firsts, idle_ms=ends)
        if args.turns >= 2:
            rest = [f for f in firsts[1:] if f is not None]
            summary["turn1_first_ms"] = firsts[0]
            summary["later_first_median_ms"] = statistics.median(rest) if rest else None
        if args.items:
            status, items = call(base, "GET", f"/v1/sessions/{session}/items?limit=100")
            for item in items.get("data", []):
                content = item.get("content")
                text = content[0].get("text") if isinstance(content, list) and content else content
                log(f"  item {item.get('type')} {item.get('role', '')}: {str(text)[:120]!r}")
        print(json.dumps(summary))
    finally:
        if getattr(procs, "stop_rust", None):
            binary, env = procs.stop_rust
            subprocess.run([binary, "stop"], env=env, capture_output=True)
        procs.stop()
        for fake_proc in (fake, responses):
            if fake_proc:
                os.killpg(fake_proc.pid, signal.SIGTERM)
                fake_proc.wait()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _up(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side server benchmark: omnigent-rs vs the Python omnigent, same client, same machine, same run.

Usage: bench/compare.py --rust target/release/omnigent [--python /path/to/venv/bin/omnigent] [--sessions 200]

For each implementation: start `server` on a free loopback port with a fresh home, time exec → /health answering,
read idle RSS of the whole process tree, seed N sessions, then time (sequentially, one keep-alive connection)
list sessions, get session, load items, create+delete session; finally time SIGTERM → exit.
Prints a Markdown table. Not a test: CI does not run it (the Python omnigent is ~700 MB).
"""
import argparse, http.client, json, os, signal, socket, statistics, subprocess, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss_kib(pid):
    """RSS of pid and all its descendants, in KiB (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except OSError:
                pass
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
        stack.extend(children.get(p, []))
    return total


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method, path, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data else None)


def timed(fn, n):
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def bench(name, argv_prefix, n_sessions, reps):
    home = tempfile.mkdtemp(prefix=f"bench-{name}-")
    port = free_port()
    env = dict(os.environ, HOME=home, OMNIGENT_HOME=home, RUST_LOG="warn")
    argv = argv_prefix + ["--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{name}: server exited with {proc.returncode}")
        time.sleep(0.002)
    healthy_ms = (time.perf_counter() - t0) * 1000
    time.sleep(2)
    idle_rss = tree_rss_kib(proc.pid) / 1024

    cl = Client(port)
    _, agents = cl.call("GET", "/v1/agents?limit=100")
    agent_id = agents["data"][0]["id"]
    ids = []
    for i in range(n_sessions):
        status, body = cl.call("POST", "/v1/sessions", {"agent_id": agent_id, "title": f"bench session {i}"})
        assert status in (200, 201), (status, body)
        ids.append(body["id"])
    sid = ids[len(ids) // 2]
    results = {
        "exec → /health (ms)": f"{healthy_ms:.0f}",
        "idle RSS, process tree (MiB)": f"{idle_rss:.1f}",
    }
    for label, fn in [
        ("list sessions (limit 20)", lambda: cl.call("GET", "/v1/sessions?limit=20")),
        ("get session", lambda: cl.call("GET", f"/v1/sessions/{sid}")),
        ("load items", lambda: cl.call("GET", f"/v1/sessions/{sid}/items")),
        ("create + delete session", lambda: cl.call(
            "DELETE", f"/v1/sessions/{cl.call('POST', '/v1/sessions', {'agent_id': agent_id})[1]['id']}")),
    ]:
        p50, p99 = timed(fn, reps)
        results[f"{label} p50 / p99 (ms)"] = f"{p50:.2f} / {p99:.2f}"
    t = time.perf_counter()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
        results["SIGTERM → exit (ms)"] = f"{(time.perf_counter() - t) * 1000:.0f}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        results["SIGTERM → exit (ms)"] = "> 30000 (killed)"
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True, help="path to the omnigent-rs binary")
    ap.add_argument("--python", help="path to the Python omnigent CLI (pip install omnigent==0.19.1)")
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    columns = {"omnigent-rs": bench("rust", [args.rust, "server", "run"], args.sessions, args.reps)}
    if args.python:
        columns["Python omnigent 0.19.1"] = bench("python", [args.python, "server"], args.sessions, args.reps)
    names = list(columns)
    print(f"| measure ({args.sessions} sessions) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in columns[names[0]]:
        print(f"| {row} | " + " | ".join(columns[n].get(row, "–") for n in names) + " |")


if __name__ == "__main__":
    main()

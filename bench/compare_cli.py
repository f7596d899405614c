#!/usr/bin/env python3
"""Side-by-side CLI benchmark: omnigent-rs vs the Python omnigent, same machine, same run.

Usage: bench/compare_cli.py --rust target/release/omnigent --python /path/to/venv/bin/omnigent [--reps 10]

For each implementation, with a fresh home: wall time of `omnigent start` (daemon + local server + this machine as a
host, returning once it is up), then `omnigent server status` repeated, then `omnigent stop`. Both use the default
port 6767, one after the other, so nothing else may listen there. Prints a Markdown table. Not run by CI.
"""
import argparse, os, statistics, subprocess, tempfile, time


def timed(argv, env, timeout=120):
    t = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=timeout)
    ms = (time.perf_counter() - t) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-800:]}")
    return ms


def bench(exe, start_args, reps):
    home = tempfile.mkdtemp(prefix="bench-cli-")
    env = dict(os.environ, HOME=home, OMNIGENT_HOME=home, OMNIGENT_HOST_NO_OPEN="1")
    start = timed([exe, "start", *start_args], env)
    status = sorted(timed([exe, "server", "status"], env) for _ in range(reps))
    stop = timed([exe, "stop"], env)
    return {
        "`start` (daemon + server + host), ms": f"{start:.0f}",
        "`server status` median / max, ms": f"{statistics.median(status):.1f} / {status[-1]:.1f}",
        "`stop`, ms": f"{stop:.0f}",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rust", required=True)
    ap.add_argument("--python", required=True)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    cols = {
        "omnigent-rs": bench(args.rust, [], args.reps),
        "Python omnigent 0.19.1": bench(args.python, ["--no-open", "--non-interactive"], args.reps),
    }
    names = list(cols)
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in cols[names[0]]:
        print(f"| {row} | " + " | ".join(cols[n][row] for n in names) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What waiting for changes costs (issue 21), on the embedded store.

    python3 bench/feed.py [--waiters 10000] [--sources 10] [--load-waiters 1000]
        [--seconds 10] [--rounds 3] [--connections 64]

Builds nothing: needs the release server and the compiled client,
    cargo build --release --bin image-catalog --example feed_bench

1. Wake-up: --waiters long polls (GET /v3/audit?after=S&wait=5m) from --sources
   loopback addresses, each on a connection of its own; once the server counts them
   all waiting: the server's RSS against before (bytes per waiter), then one durable
   POST, and the time from its 200 to each poll's answer (median, max). A fresh server
   per round.
2. POST throughput (64 connections, --seconds) with --load-waiters blocking GETs of ids
   nobody writes (Prefer: wait=300) against none, and with --load-waiters followers of
   /v3/changes (each woken by every write, and reading it) against none: interleaved
   rounds, a fresh server each, medians and their ratio. The client runs on the same
   machine: with followers, it reads every event they are sent.

The server runs with caps raised for it: max_waiters and the per-address connection
cap 20000, and the open-file limit raised to the hard limit (at most 65536) for it
and the client: 10,000 waiters need more than 10,000 on each side. Prints one line per figure.
"""

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

CLIENT = os.path.join(run.RELEASE, "examples", "feed_bench")
FILES = 65536


def more_files():
    """As many open files as allowed, up to FILES (each waiter is a connection)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = FILES if hard == resource.RLIM_INFINITY else min(FILES, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def start_server(folder):
    port = run.free_port()
    path = run.write_config(folder, port, run.hash_password(), 32)
    with open(path) as f:
        text = f.read()
    text = text.replace(
        "max_connections_per_address = 1024\n",
        "max_connections_per_address = 20000\nmax_waiters = 20000\n",
    )
    with open(path, "w") as f:
        f.write(text)
    log = open(os.path.join(folder, "server.log"), "w")
    server = subprocess.Popen(
        [run.BINARY, "--config", path, "serve"],
        cwd=folder, stdout=log, stderr=subprocess.STDOUT, preexec_fn=more_files,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"{base}/healthz").read()
            return server, base
        except OSError:
            time.sleep(0.05)
    sys.exit(f"the server did not start; see {folder}/server.log")


def stop(server):
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=60)


def client(*args):
    out = subprocess.run(
        [CLIENT, *map(str, args)], capture_output=True, text=True, preexec_fn=more_files
    )
    if out.returncode != 0:
        sys.exit(f"feed_bench {' '.join(map(str, args))} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--waiters", type=int, default=10000)
    parser.add_argument("--sources", type=int, default=10)
    parser.add_argument("--load-waiters", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    for path in (run.BINARY, CLIENT):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} missing: cargo build --release --bin image-catalog --example feed_bench")
    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as work:
        wakes = []
        for r in range(args.rounds):
            folder = os.path.join(work, f"wake-{r}")
            os.makedirs(folder)
            server, base = start_server(folder)
            try:
                wakes.append(client("wake", base, run.AUTH, server.pid, args.waiters, args.sources))
            finally:
                stop(server)
            print(f"  wake round {r + 1}: {json.dumps(wakes[-1])}")
        med = lambda key: statistics.median(w[key] for w in wakes)  # noqa: E731
        print(
            f"wake-up of {args.waiters} long polls from {args.sources} addresses: "
            f"{med('bytes_per_waiter') / 1024:.1f} KiB of server RSS per waiter, "
            f"write-to-answer median {med('wake_ms_median'):.1f} ms, "
            f"max {med('wake_ms_max'):.1f} ms (medians of {args.rounds} rounds)"
        )
        for kind in ("read", "stream"):
            rates = {0: [], args.load_waiters: []}
            for r in range(args.rounds):
                order = (0, args.load_waiters) if r % 2 == 0 else (args.load_waiters, 0)
                for count in order:
                    # A fresh server each time: the catalog grows by every POST, and a
                    # larger one is slower to write to.
                    folder = os.path.join(work, f"load-{kind}-{r}-{count}")
                    os.makedirs(folder)
                    server, base = start_server(folder)
                    try:
                        result = client(
                            "load", base, run.AUTH, kind, count, args.seconds, args.connections
                        )
                    finally:
                        stop(server)
                    rates[count].append(result["posts_per_s"])
                    print(f"  {kind} round {r + 1}: {json.dumps(result)}")
            none, some = statistics.median(rates[0]), statistics.median(rates[args.load_waiters])
            label = "blocking GETs of unwritten ids" if kind == "read" else "feed followers"
            print(
                f"durable POST c{args.connections} with {args.load_waiters} {label}: "
                f"{some:.0f}/s against {none:.0f}/s without: {some / none:.2f}x "
                f"(medians of {args.rounds} rounds; without {min(rates[0]):.0f}..{max(rates[0]):.0f}, "
                f"with {min(rates[args.load_waiters]):.0f}..{max(rates[args.load_waiters]):.0f})"
            )
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

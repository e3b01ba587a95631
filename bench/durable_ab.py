#!/usr/bin/env python3
"""What a durable 200 costs: two builds side by side, in interleaved rounds.

    python3 bench/durable_ab.py --before BINARY_A --after BINARY_B [--rounds 5] [--seconds 5]

For each round and each build (the order alternating by round), on a fresh data dir
holding 1,000 images: durable POST /v3/image at 1, 8 and 64 connections (wrk,
bench/post.lua), then random-id GETs at 8 connections alone and while 8 connections
POST (what readers pay under write load). Prints each figure's median (min..max over
the rounds) for both builds and the after/before ratio of the medians. Needs wrk
(Debian's package) and release builds of both commits.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

FIGURES = ["post_c1", "post_c8", "post_c64", "get_c8", "get_c8_under_post_c8", "post_c8_beside_get"]


def one_round(binary, work, round_, seconds, hash_line):
    run.BINARY = binary
    folder = tempfile.mkdtemp(dir=work)
    run.write_config(folder, run.free_port(), hash_line, 32)
    images = os.path.join(folder, "images.jsonl")
    run.write_images(images, 1000)
    subprocess.run([binary, "--config", os.path.join(folder, "config.toml"), "import", images],
                   check=True, capture_output=True)
    server = run.Server(folder, "serve")
    server.wait_warm()
    figures = {}
    for connections in (1, 8, 64):
        rate, _ = run.wrk(f"{server.base}/v3/image", connections, seconds, run.POST_LUA,
                          (f"r{round_}c{connections}",))
        figures[f"post_c{connections}"] = rate
    rate, _ = run.wrk(f"{server.base}/v3/image/img-0000000", 8, seconds, run.GET_RANDOM_LUA,
                      ("1000",))
    figures["get_c8"] = rate
    posted = {}

    def post():
        posted["rate"], _ = run.wrk(f"{server.base}/v3/image", 8, seconds, run.POST_LUA,
                                    (f"r{round_}mixed",))

    writer = threading.Thread(target=post)
    writer.start()
    rate, _ = run.wrk(f"{server.base}/v3/image/img-0000000", 8, seconds, run.GET_RANDOM_LUA,
                      ("1000",))
    writer.join()
    figures["get_c8_under_post_c8"] = rate
    figures["post_c8_beside_get"] = posted["rate"]
    server.stop()
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--before", required=True, help="the older build's binary")
    parser.add_argument("--after", required=True, help="the newer build's binary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    run.BINARY = args.after
    hash_line = run.hash_password()
    samples = {variant: {f: [] for f in FIGURES} for variant in ("before", "after")}
    with tempfile.TemporaryDirectory() as work:
        print(f"load before: {os.getloadavg()}", file=sys.stderr)
        for round_ in range(args.rounds):
            order = [("before", args.before), ("after", args.after)]
            if round_ % 2:
                order.reverse()
            for variant, binary in order:
                figures = one_round(binary, work, round_, args.seconds, hash_line)
                for name, value in figures.items():
                    samples[variant][name].append(value)
                print(f"round {round_} {variant}: " +
                      ", ".join(f"{k}={v:.0f}" for k, v in figures.items()), file=sys.stderr)
        print(f"load after: {os.getloadavg()}", file=sys.stderr)
    print(f"{'figure (req/s)':24} {'before: median (min..max)':30} {'after: median (min..max)':30} after/before")
    for name in FIGURES:
        cells = []
        for variant in ("before", "after"):
            values = samples[variant][name]
            cells.append(f"{statistics.median(values):8.0f} ({min(values):.0f}..{max(values):.0f})")
        ratio = statistics.median(samples["after"][name]) / statistics.median(samples["before"][name])
        print(f"{name:24} {cells[0]:30} {cells[1]:30} {ratio:.2f}")


if __name__ == "__main__":
    main()

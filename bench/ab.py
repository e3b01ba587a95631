#!/usr/bin/env python3
"""A/B of two release builds (e.g. two [profile.release] settings) in one run.

    python3 bench/ab.py --a TARGET_DIR_A --b TARGET_DIR_B [--rounds 5] [--seconds 5]

Each TARGET_DIR holds release/image-catalog and release/examples/bare built with one
profile (CARGO_TARGET_DIR=... cargo build --release --bin image-catalog --example bare).
Both variants serve their own copy of a 1,000-image store, beside their own bare
yardstick; every round measures, for A and then B (the order alternating by round),
the cached hot-id GET, its bare route, random-id GETs and their bare route by id, and
the limit=100 page and its bare route. Prints medians, per-variant ratios to bare
and B/A, with the load average before and after.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

FIGURES = ["bare_image", "get_image", "bare_random", "get_cold", "bare_page", "page"]


def start(variant, target, work, hash_line):
    run.BINARY = os.path.join(target, "release", "image-catalog")
    bare_bin = os.path.join(target, "release", "examples", "bare")
    folder = os.path.join(work, variant)
    os.makedirs(folder)
    run.write_config(folder, run.free_port(), hash_line, 32)
    run.write_images(os.path.join(folder, "images.jsonl"), 1000)
    subprocess.run([run.BINARY, "--config", os.path.join(folder, "config.toml"), "import",
                    os.path.join(folder, "images.jsonl")], check=True, capture_output=True)
    server = run.Server(folder, "serve")
    server.wait_warm()
    image_file = os.path.join(folder, "image.json")
    images_file = os.path.join(folder, "images.json")
    by_id_file = os.path.join(folder, "by_id.tsv")
    with open(image_file, "wb") as f:
        f.write(run.get(f"{server.base}/v3/image/img-0000500"))
    with open(images_file, "wb") as f:
        f.write(run.get(f"{server.base}/v3/images?limit=100&marker=img-0000400"))
    run.write_bodies(server.base, 1000, by_id_file)
    port = run.free_port()
    bare = subprocess.Popen([bare_bin, f"127.0.0.1:{port}", image_file, images_file, by_id_file])
    bare_base = f"http://127.0.0.1:{port}"
    while True:
        try:
            run.get(bare_base + "/image", auth=False)
            break
        except OSError:
            time.sleep(0.01)
    urls = {
        "bare_image": (f"{bare_base}/image", None),
        "get_image": (f"{server.base}/v3/image/img-0000500", None),
        "bare_random": (f"{bare_base}/v3/image", (run.GET_RANDOM_LUA, ("1000",))),
        "get_cold": (f"{server.base}/v3/image", (run.GET_RANDOM_LUA, ("1000",))),
        "bare_page": (f"{bare_base}/images", None),
        "page": (f"{server.base}/v3/images?limit=100&marker=img-0000400", None),
    }
    return server, bare, urls


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--a", required=True)
    parser.add_argument("--b", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    print("load average before:", open("/proc/loadavg").read().strip(), flush=True)
    work = tempfile.mkdtemp(prefix="image-catalog-ab-")
    run.BINARY = os.path.join(args.a, "release", "image-catalog")
    hash_line = run.hash_password()
    variants = {v: start(v, t, work, hash_line) for v, t in (("A", args.a), ("B", args.b))}
    samples = {}
    for round_ in range(args.rounds):
        order = ["A", "B"] if round_ % 2 == 0 else ["B", "A"]
        for v in order:
            for name in FIGURES:
                url, script = variants[v][2][name]
                path, script_args = script or (None, ())
                rate, _ = run.wrk(url, args.connections, args.seconds, path, script_args)
                samples.setdefault((v, name), []).append(rate)
        print(f"round {round_ + 1}: load {open('/proc/loadavg').read().split()[0]}; "
              + "; ".join(f"{v} " + " ".join(f"{n} {samples[(v, n)][-1]:.0f}" for n in FIGURES)
                          for v in ("A", "B")), flush=True)
    for server, bare, _ in variants.values():
        bare.terminate()
        bare.wait()
        server.stop()
    shutil.rmtree(work, ignore_errors=True)
    m = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n== medians of {args.rounds} rounds ({args.seconds} s each, {args.connections} connections)")
    print(f"  {'figure':<12} {'A':>10} {'B':>10} {'B/A':>6}")
    for name in FIGURES:
        print(f"  {name:<12} {m[('A', name)]:>10,.0f} {m[('B', name)]:>10,.0f} {m[('B', name)] / m[('A', name)]:>6.2f}")
    print("== ratios to bare (same variant)")
    for v in ("A", "B"):
        print(f"  {v}: hot GET {m[(v, 'get_image')] / m[(v, 'bare_image')]:.2f}, "
              f"random GET {m[(v, 'get_cold')] / m[(v, 'bare_random')]:.2f}, "
              f"page {m[(v, 'page')] / m[(v, 'bare_page')]:.2f}")
        per_round = [g / b for g, b in zip(samples[(v, "get_cold")], samples[(v, "bare_random")])]
        print(f"     random GET per round: {', '.join(f'{r:.2f}' for r in per_round)}")
    print("load average after:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How soon a server on a big embedded store answers /healthz after a clean stop.

    python3 bench/ready.py --before BINARY_A --after BINARY_B [--images 1000000] [--rounds 5]

Builds one store of IMAGES images (import with the after build), copies it for each
build, then for every round and build (the order alternating) starts `serve`, times
spawn to the first 200 from /healthz, and stops it with SIGTERM (a clean stop). The
first start of each build after the import is not counted. Prints the median
(min..max) for each build.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402


def prepare(work, binaries, images, hash_line):
    """One store of `images` images (imported with the after build), copied for each
    build; returns {variant: folder} for "before" and "after"."""
    folders = {}
    for variant in ("before", "after"):
        folder = os.path.join(work, variant)
        os.makedirs(folder)
        run.write_config(folder, run.free_port(), hash_line, 32)
        folders[variant] = folder
    jsonl = os.path.join(work, "images.jsonl")
    run.write_images(jsonl, images)
    subprocess.run([binaries["after"], "--config", os.path.join(folders["after"], "config.toml"),
                    "import", jsonl], check=True, capture_output=True)
    os.remove(jsonl)
    shutil.copytree(os.path.join(folders["after"], "data"), os.path.join(folders["before"], "data"))
    return folders


def measure(folders, binaries, rounds):
    """Clean restarts, the order alternating by round, after one uncounted start of
    each build; returns {variant: [seconds from spawn to /healthz 200, ...]}."""
    samples = {"before": [], "after": []}
    for round_ in range(-1, rounds):
        order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
        for variant in order:
            run.BINARY = binaries[variant]
            server = run.Server(folders[variant], f"serve-{round_}")
            if round_ >= 0:
                samples[variant].append(server.ready_seconds)
            server.stop()
            print(f"round {round_} {variant}: ready in {server.ready_seconds:.3f} s", file=sys.stderr)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run.BINARY = args.after
    hash_line = run.hash_password()
    binaries = {"before": args.before, "after": args.after}
    with tempfile.TemporaryDirectory() as work:
        folders = prepare(work, binaries, args.images, hash_line)
        samples = measure(folders, binaries, args.rounds)
        for variant in ("before", "after"):
            values = samples[variant]
            print(f"{variant}: ready median {statistics.median(values):.3f} s "
                  f"({min(values):.3f}..{max(values):.3f}) over {len(values)} clean restarts")


if __name__ == "__main__":
    main()

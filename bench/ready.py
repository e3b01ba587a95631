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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    run.BINARY = args.after
    hash_line = run.hash_password()
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        for variant in ("before", "after"):
            folder = os.path.join(work, variant)
            os.makedirs(folder)
            run.write_config(folder, run.free_port(), hash_line, 32)
            folders[variant] = folder
        images = os.path.join(work, "images.jsonl")
        run.write_images(images, args.images)
        subprocess.run([args.after, "--config", os.path.join(folders["after"], "config.toml"),
                        "import", images], check=True, capture_output=True)
        shutil.copytree(os.path.join(folders["after"], "data"), os.path.join(folders["before"], "data"))
        binaries = {"before": args.before, "after": args.after}
        samples = {"before": [], "after": []}
        for round_ in range(-1, args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for variant in order:
                run.BINARY = binaries[variant]
                server = run.Server(folders[variant], f"serve-{round_}")
                if round_ >= 0:
                    samples[variant].append(server.ready_seconds)
                server.stop()
                print(f"round {round_} {variant}: ready in {server.ready_seconds:.3f} s", file=sys.stderr)
        for variant in ("before", "after"):
            values = samples[variant]
            print(f"{variant}: ready median {statistics.median(values):.3f} s "
                  f"({min(values):.3f}..{max(values):.3f}) over {len(values)} clean restarts")


if __name__ == "__main__":
    main()

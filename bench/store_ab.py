#!/usr/bin/env python3
"""Two builds, before (A) and after (B), on both store engines, in interleaved rounds.

    python3 bench/store_ab.py --before BINARY_A --after BINARY_B [--rounds 5] [--seconds 5]
        [--engines sled,postgres] [--no-ready] [--ready-images 1000000] [--out FILE]

In every round, for each engine and each build (the order of A and B alternating by
round), on a fresh store holding 1,000 imported images (sled: a fresh data dir;
PostgreSQL: a fresh database, CREATE DATABASE, in one private cluster started once for
the run), with wrk:
  get_c8     GET /v3/image/{random id}, 8 connections (bench/get_random.lua);
  page_c8    GET /v3/images?limit=100 from random markers, 8 connections
             (bench/page_random.lua);
  post_c1, post_c8, post_c64
             durable POST /v3/image at 1, 8 and 64 connections (bench/post.lua).
Then, on sled only (--no-ready skips it, it is slow), bench/ready.py's figure: seconds
from spawning `serve` until /healthz answers 200, on one store of --ready-images images
after a clean stop (SIGTERM), the same number of rounds.

Prints, per figure and engine, A's median (min..max over the rounds), B's, B/A of the
medians, and a verdict: "within spread" when B's median is not worse than A's by more
than the spread (max - min) of the rounds (the larger of A's and B's), else "WORSE";
and the load average before and after.

The PostgreSQL cluster is made as bench/postgres.py makes it (initdb in a temp folder,
a free loopback port, run as the `postgres` user when this runs as root), with fsync
on and synchronous_commit on (checked), and stopped at the end, also on Ctrl-C or an
error. Needs wrk (Debian's package), the PostgreSQL 15 server binaries (PG_BIN,
default /usr/lib/postgresql/15/bin; Debian: postgresql-15) and release builds of both
commits (cargo build --release --bin image-catalog).
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import postgres  # noqa: E402
import ready  # noqa: E402
import run  # noqa: E402

ENGINES = ("sled", "postgres")
RATES = ["get_c8", "page_c8", "post_c1", "post_c8", "post_c64"]
IMAGES = 1000
LABELS = {"before": "A", "after": "B"}


def one_round(engine, variant, binary, round_, args, ctx):
    """One build's figures on a fresh 1,000-image store of `engine`."""
    run.BINARY = binary
    folder = os.path.join(ctx["work"], f"{engine}-r{round_}-{variant}")
    os.makedirs(folder)
    db = None
    if engine == "postgres":
        db = f"r{round_}_{variant}"
        ctx["cluster"].psql("postgres", f"CREATE DATABASE {db}")
        postgres.write_config(folder, run.free_port(), ctx["hash_line"], ctx["cluster"].url(db))
    else:
        run.write_config(folder, run.free_port(), ctx["hash_line"], 32)
    subprocess.run([binary, "--config", os.path.join(folder, "config.toml"), "import",
                    ctx["images"]], check=True, capture_output=True)
    server = run.Server(folder, "serve")
    ctx["servers"].append(server)
    if engine == "sled":
        server.wait_warm()
    # The first Basic request pays argon2; the figures are for the cached verification.
    run.get(f"{server.base}/v3/image/img-0000500")
    figures = {}
    figures["get_c8"], _ = run.wrk(f"{server.base}/v3/image", 8, args.seconds,
                                   run.GET_RANDOM_LUA, (str(IMAGES),))
    figures["page_c8"], _ = run.wrk(f"{server.base}/v3/images", 8, args.seconds,
                                    run.PAGE_RANDOM_LUA, (str(IMAGES),))
    for connections in (1, 8, 64):
        figures[f"post_c{connections}"], _ = run.wrk(
            f"{server.base}/v3/image", connections, args.seconds, run.POST_LUA,
            (f"r{round_}c{connections}",))
    server.stop()
    ctx["servers"].remove(server)
    if db:
        ctx["cluster"].psql("postgres", f"DROP DATABASE {db} WITH (FORCE)")
    shutil.rmtree(folder)
    return figures


def verdict(a, b, higher_is_better):
    """"within spread" unless B's median is worse than A's by more than the rounds' spread."""
    spread = max(max(a) - min(a), max(b) - min(b))
    worse_by = statistics.median(a) - statistics.median(b)
    if not higher_is_better:
        worse_by = -worse_by
    return "within spread" if worse_by <= spread else "WORSE"


def report(samples, args):
    print(f"\n== {args.rounds} rounds of {args.seconds} s per figure; "
          f"A = before ({args.before}), B = after ({args.after})")
    print(f"  {'engine':<9} {'figure':<16} {'A: median (min..max)':<28} "
          f"{'B: median (min..max)':<28} {'B/A':>5}  verdict")
    for key in sorted(samples, key=lambda k: (ENGINES.index(k[0]), (RATES + ["ready"]).index(k[1]))):
        engine, name = key
        a, b = samples[key]["before"], samples[key]["after"]
        is_ready = name == "ready"
        fmt = (lambda v: f"{v:.3f}") if is_ready else (lambda v: f"{v:.0f}")
        cells = [f"{fmt(statistics.median(v))} ({fmt(min(v))}..{fmt(max(v))})" for v in (a, b)]
        unit = "ready s" if is_ready else f"{name} req/s"
        ratio = statistics.median(b) / statistics.median(a)
        print(f"  {engine:<9} {unit:<16} {cells[0]:<28} {cells[1]:<28} {ratio:>5.2f}  "
              f"{verdict(a, b, higher_is_better=not is_ready)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--before", required=True, metavar="BINARY_A", help="the older build's binary")
    parser.add_argument("--after", required=True, metavar="BINARY_B", help="the newer build's binary")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk figure")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: sled,postgres")
    parser.add_argument("--no-ready", action="store_true", help="skip the ready time (sled)")
    parser.add_argument("--ready-images", type=int, default=1_000_000,
                        help="images in the ready figure's store")
    parser.add_argument("--out", help="also write every sample as JSON here")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines: a comma-separated list of {', '.join(ENGINES)}")
    args.before, args.after = os.path.abspath(args.before), os.path.abspath(args.after)
    binaries = {"before": args.before, "after": args.after}

    work = tempfile.mkdtemp(prefix="image-catalog-store-ab-")
    os.chmod(work, 0o755)  # the cluster's own folder in it belongs to `postgres`
    ctx = {"work": work, "cluster": None, "servers": []}
    samples = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        print(f"machine: {os.cpu_count()} cores; load average before {postgres.loadavg()}; "
              f"work dir {work}", flush=True)
        run.BINARY = args.after
        ctx["hash_line"] = run.hash_password()
        ctx["images"] = os.path.join(work, "images.jsonl")
        run.write_images(ctx["images"], IMAGES)
        if "postgres" in engines:
            ctx["cluster"] = postgres.Cluster(os.path.join(work, "pg"), max_connections=100)
            settings = ctx["cluster"].settings()
            print("postgres:", ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
            if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
                sys.exit("the cluster must run with fsync and synchronous_commit on")

        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for engine in engines:
                for variant in order:
                    figures = one_round(engine, variant, binaries[variant], round_, args, ctx)
                    for name, value in figures.items():
                        samples.setdefault((engine, name), {"before": [], "after": []})[variant].append(value)
                    print(f"round {round_ + 1}/{args.rounds} {engine} {LABELS[variant]}: "
                          + ", ".join(f"{k} {v:.0f}" for k, v in figures.items()), file=sys.stderr, flush=True)

        if not args.no_ready:
            print(f"ready: importing {args.ready_images:,} images (after build)", file=sys.stderr, flush=True)
            ready_work = os.path.join(work, "ready")
            os.makedirs(ready_work)
            folders = ready.prepare(ready_work, binaries, args.ready_images, ctx["hash_line"])
            samples[("sled", "ready")] = ready.measure(folders, binaries, args.rounds)
            shutil.rmtree(ready_work)

        report(samples, args)
        if not args.no_ready:
            print(f"  (ready: {args.ready_images:,} images, clean stop by SIGTERM)")
        print("load average after:", postgres.loadavg())
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"before": args.before, "after": args.after, "rounds": args.rounds,
                           "seconds": args.seconds, "ready_images": None if args.no_ready else args.ready_images,
                           "samples": {f"{e}/{n}": v for (e, n), v in samples.items()}}, f, indent=2)
    finally:
        for server in ctx["servers"]:
            try:
                server.stop()
            except (OSError, AttributeError, ValueError):
                pass
        if ctx["cluster"]:
            ctx["cluster"].stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What the page for people costs, and what a search costs (issue 22).

    python3 bench/ui.py [--rounds 5] [--seconds 5] [--sizes 100000,1000000]
        [--engines sled,postgres] [--searches 7]

1. page: on a sled store of 1,000 imported images, wrk at 8 connections on the
   catalog page `/ui/` (100 rows of HTML, rendered from the store at every request)
   and on the JSON page of the same 100 images, `/v3/images?limit=100` (served from
   the page cache after a generation check, as the API serves a repeated page), in
   interleaved rounds (the order turning); prints both medians and page/JSON.
2. search: for each engine and catalog size, `GET /v3/images?limit=100` with
     q=rare    a text one image holds ("number 12345 for"): the whole catalog is
               scanned to fill the page;
     q=common  a text every image holds ("benchmarking"), from a marker: the page
               fills at once;
     none      no q, from a marker, for scale;
   --searches requests of each from one client, one after another, each with another
   text or marker (a repeated page would come from the page cache), after one
   untimed search that warms the store's caches; prints the median and max in ms.

Builds nothing: run `cargo build --release --bin image-catalog` first. Needs wrk and,
for PostgreSQL, the server binaries (PG_BIN, default /usr/lib/postgresql/15/bin).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import postgres  # noqa: E402
import run  # noqa: E402


def imported(folder, engine, count, hash_line, cluster):
    """A config in `folder` on a store of `count` imported images; returns the server."""
    os.makedirs(folder)
    jsonl = os.path.join(folder, "images.jsonl")
    run.write_images(jsonl, count)
    url = None
    if engine == "postgres":
        db = os.path.basename(folder).replace("-", "_")
        cluster.psql("postgres", f"CREATE DATABASE {db}")
        url = cluster.url(db)
    postgres.write_config(folder, run.free_port(), hash_line, url)
    started = time.monotonic()
    subprocess.run([run.BINARY, "--config", os.path.join(folder, "config.toml"), "import",
                    jsonl], check=True, capture_output=True)
    print(f"  {engine}: imported {count} images in {time.monotonic() - started:.0f} s",
          flush=True)
    os.remove(jsonl)
    server = run.Server(folder, "serve")
    if engine == "sled":
        server.wait_warm()
    run.get(f"{server.base}/v3/image/img-0000000")  # pays argon2 once
    return server


def page_figures(work, args, hash_line):
    server = imported(os.path.join(work, "page"), "sled", 1000, hash_line, None)
    pages = {"ui": f"{server.base}/ui/", "json": f"{server.base}/v3/images?limit=100"}
    # The same 100 images on both.
    assert run.get(pages["ui"]).count(b"<tr data-id=") == 100
    rates = {"ui": [], "json": []}
    try:
        for round_ in range(args.rounds):
            order = ["ui", "json"] if round_ % 2 == 0 else ["json", "ui"]
            for name in order:
                rate, _ = run.wrk(pages[name], 8, args.seconds)
                rates[name].append(rate)
                print(f"  page round {round_ + 1}: {name} {rate:.0f}/s", flush=True)
    finally:
        server.stop()
    ui, json_ = statistics.median(rates["ui"]), statistics.median(rates["json"])
    print(f"catalog page /ui/ {ui:.0f}/s ({min(rates['ui']):.0f}..{max(rates['ui']):.0f}), "
          f"JSON page {json_:.0f}/s ({min(rates['json']):.0f}..{max(rates['json']):.0f}): "
          f"page/JSON {ui / json_:.2f}x (medians of {args.rounds} rounds, wrk -c8 "
          f"-d{args.seconds}s)")


def timed(urls):
    """Times each of `urls` once, one after another: the median and max in ms, and the
    last body."""
    took = []
    for url in urls:
        started = time.monotonic()
        body = run.get(url)
        took.append((time.monotonic() - started) * 1000)
    return statistics.median(took), max(took), body


def search_figures(work, args, hash_line):
    cluster = None
    try:
        if "postgres" in args.engines:
            cluster = postgres.Cluster(os.path.join(work, "pg"), 50)
        for size in args.sizes:
            for engine in args.engines:
                folder = os.path.join(work, f"{engine}-{size}")
                server = imported(folder, engine, size, hash_line, cluster)
                try:
                    base = f"{server.base}/v3/images?limit=100"
                    # Each search another text or another marker: a repeated page is
                    # served from the page cache, and the figure is the search itself.
                    n = args.searches
                    picks = [(i * 7919 + 1234) % size for i in range(n)]
                    queries = {
                        "rare": [f"&q=number%20{p}%20for" for p in picks],
                        "common": [f"&q=benchmarking&marker=img-{p:07d}" for p in picks],
                        "none": [f"&marker=img-{p:07d}" for p in picks],
                    }
                    run.get(base + "&q=warm%20up")  # the store's caches, once
                    for name, tails in queries.items():
                        median, worst, body = timed([base + t for t in tails])
                        found = body.count(b'"id"')
                        print(f"search {engine} {size} images q={name}: median {median:.1f} ms, "
                              f"max {worst:.1f} ms ({found} images)", flush=True)
                finally:
                    server.stop()
                if engine == "sled":
                    shutil.rmtree(folder)
    finally:
        if cluster:
            cluster.stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--engines", default="sled,postgres")
    parser.add_argument("--searches", type=int, default=7)
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.engines = args.engines.split(",")
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    hash_line = run.hash_password()
    work = tempfile.mkdtemp(prefix="ui-bench-")
    if os.geteuid() == 0:
        shutil.chown(work, "postgres", "postgres")
    try:
        if not args.skip_page:
            page_figures(work, args, hash_line)
        if not args.skip_search:
            search_figures(work, args, hash_line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""image-catalog on PostgreSQL, beside image-catalog on sled and beside pgbench, in one run.

Figures (issues "Beyond one machine", parts 1 and 2), each the median over rounds; in
every round each figure is measured for every system back to back (the order turning
from round to round), so that a ratio compares neighbours in time:

  get    GET /v3/image/{random id} of a 1,000-image catalog, vs pgbench selecting one
         row of the service's own `images` table by a random key;
  page   GET /v3/images?limit=100&marker={random id} (the page cache holds 64 pages,
         so nearly every page is read from the store), vs pgbench selecting the 101
         rows after a random key (the service asks for limit + 1 to know if more follow);
  post   durable POST /v3/image, vs pgbench running, in one transaction per write, the
         statements the service runs per write: the image INSERT and the audit
         statement (counter UPDATE + audit INSERT), taken from src/store/postgres/mod.rs;
  page_hot  the same fixed page again and again (served from the page cache after a
         generation check), for the two services only;
at 1, 8 and 64 connections (wrk) or clients (pgbench). Then, for issue 13, GET and
POST at 64 connections on one node, beside 2 x 32 connections on two nodes (two
processes, each its own config and port, the same database), two wrk at once.

All on one private PostgreSQL 15 cluster made here (initdb in a temp folder, a free
loopback port, run as the `postgres` user when this runs as root), with PostgreSQL's
default durability: fsync on, synchronous_commit on (the service sets it on too).
The cluster is stopped at the end, also on Ctrl-C.

With --before BINARY, an older build runs as a third node on the same database and
is measured beside the current one in every round (before/after of a change).

Run through bench/postgres.sh, which builds the release binary first. Needs wrk,
pgbench and the PostgreSQL server binaries (PG_BIN, default /usr/lib/postgresql/15/bin).
"""

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no bench/__pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
STORE_SOURCE = os.path.join(run.ROOT, "src", "store", "postgres", "mod.rs")
IMAGES = 1000
CONNECTIONS = (1, 8, 64)


def as_postgres():
    """PostgreSQL refuses to run as root: its tools then run as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Cluster:
    """A private PostgreSQL cluster in `folder`, on a free loopback port."""

    def __init__(self, folder, max_connections):
        self.folder = folder
        self.data = os.path.join(folder, "data")
        self.port = run.free_port()
        os.makedirs(folder)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        subprocess.run(
            as_postgres() + [f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres",
                             "-A", "trust", "-E", "UTF8", "--no-locale"],
            check=True, capture_output=True,
        )
        options = (f"-c port={self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={folder} -c max_connections={max_connections}")
        subprocess.run(
            as_postgres() + [f"{PG_BIN}/pg_ctl", "-D", self.data, "-l",
                             os.path.join(folder, "postgres.log"), "-o", options, "-w", "start"],
            check=True, capture_output=True,
        )
        self.running = True

    def url(self, db):
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}?sslmode=disable"

    def psql(self, db, sql):
        out = subprocess.run(
            [f"{PG_BIN}/psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", "postgres", "-d", db, "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def settings(self):
        names = ["server_version", "fsync", "synchronous_commit", "wal_sync_method",
                 "full_page_writes", "shared_buffers", "max_connections", "commit_delay"]
        return {name: self.psql("postgres", f"SHOW {name}") for name in names}

    def stop(self):
        if self.running:
            self.running = False
            subprocess.run(as_postgres() + [f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast",
                                            "-w", "stop"], capture_output=True)


def write_config(folder, port, hash_line, url=None):
    """A service config: sled in folder/data, or `url`'s database."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.toml")
    store = f'[store]\nbackend = "postgres"\nurl = "{url}"\n' if url else "[store]\ncache_mb = 32\n"
    with open(path, "w") as f:
        f.write(
            f'[server]\nbind = "127.0.0.1:{port}"\n'
            # As in run.py: wrk's connections all come from 127.0.0.1.
            "max_connections_per_address = 1024\n\n"
            f"{store}\n"
            '[policies]\nread_images = ["admin"]\ncreate_image = ["admin"]\n'
            'delete_image = ["admin"]\nread_audit = ["admin"]\n\n'
            f'[[users]]\nname = "admin"\n{hash_line}\nroles = ["admin"]\n'
        )
    return path


def service_sql():
    """The service's image INSERT and audit statement, as the store sends them."""
    source = open(STORE_SOURCE).read()
    insert = re.search(r'const INSERT_SQL: &str =\s*"([^"]+)";', source).group(1)
    audit = re.search(r'const AUDIT_SQL: &str = r#"(.*?)"#;', source, re.S).group(1).strip()
    return insert, audit


def pgbench_scripts(folder, image_json):
    """pgbench scripts for the three operations; returns {name: path}."""
    insert, audit = service_sql()
    # One write as the service makes it for a POST, its parameters given as pgbench
    # expressions (sent as parameters with -M prepared, as the service sends them):
    # a unique id, and the image JSON in the service's shape (its fields, its order).
    id_sql = "('pgb-' || :n::text)"
    before, after = (part.replace("'", "''") for part in image_json.split("ID"))
    json_sql = f"convert_to('{before}' || {id_sql} || '{after}', 'UTF8')"
    insert_params = {"1": id_sql, "2": "'ec2'", "3": json_sql}
    # $1 records, $2 image count change, $3 audit bytes less seq digits, $4 users,
    # $5 methods, $6 ids (JSON strings): one POST by admin.
    audit_params = {"1": "1", "2": "1", "3": "100", "4": "ARRAY['\"admin\"']",
                    "5": "ARRAY['POST']", "6": f"ARRAY['\"' || {id_sql} || '\"']"}

    def bind(sql, params):
        return re.sub(r"\$(\d+)", lambda m: f"({params[m.group(1)]})", sql)

    def colons(sql):
        # With -M prepared pgbench takes every `:name` for a variable, even inside a
        # quoted literal (the time format's `HH24:MI:SS`): such a colon is spelled
        # chr(58), a constant the planner folds once per prepared statement.
        return re.sub(r"'[^']*'", lambda m: re.sub(r":(?=\w)", "' || chr(58) || '", m.group(0)), sql)

    scripts = {
        "get": ("\\set n random(0, 999)\n"
                "SELECT json FROM images WHERE id = 'img-' || lpad(:n::text, 7, '0');\n"),
        "page": ("\\set n random(0, 899)\n"
                 "SELECT id, json FROM images WHERE id > 'img-' || lpad(:n::text, 7, '0') "
                 "ORDER BY id LIMIT 101;\n"),
        "post": ("\\set n random(1, 1000000000000)\n"
                 "BEGIN;\n"
                 + bind(insert, insert_params) + ";\n"
                 + colons(bind(audit, audit_params)) + ";\n"
                 "COMMIT;\n"),
    }
    paths = {}
    for name, text in scripts.items():
        paths[name] = os.path.join(folder, f"{name}.sql")
        with open(paths[name], "w") as f:
            f.write(text)
    return paths


def pgbench(cluster, db, script, clients, seconds):
    cmd = [
        "pgbench", "-n", "-M", "prepared", "-h", "127.0.0.1", "-p", str(cluster.port),
        "-U", "postgres", "-c", str(clients), "-j", str(min(2, clients)),
        "-T", str(seconds), "-f", script, db,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    failed = re.search(r"number of failed transactions: (\d+)", out.stdout)
    if failed and int(failed.group(1)):
        sys.exit(f"pgbench: failed transactions\n{out.stdout}")
    return float(re.search(r"tps = ([\d.]+) \(without initial connection time\)",
                           out.stdout).group(1))


def wrk_command(url, connections, seconds, script=None, script_args=(), threads=None):
    threads = threads or min(2, connections)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
           "-H", f"Authorization: {run.AUTH}"]
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    return cmd


def wrk_rate(url, out):
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        sys.exit(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    if "Socket errors" in out:
        print(f"  note: {url}: {out.split('Socket errors')[1].splitlines()[0]}", file=sys.stderr)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def wrk(url, connections, seconds, script=None, script_args=()):
    cmd = wrk_command(url, connections, seconds, script, script_args)
    return wrk_rate(url, subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def wrk_together(targets, seconds):
    """Several wrk at once, one per (url, connections, script, args); their summed rate."""
    procs = []
    for url, connections, script, script_args in targets:
        cmd = wrk_command(url, connections, seconds, script, script_args, threads=1)
        procs.append((url, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
    total = 0.0
    for url, proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"wrk failed on {url}")
        total += wrk_rate(url, out)
    return total


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5, help="per figure")
    parser.add_argument("--no-two-nodes", action="store_true", help="skip issue 13's figures")
    parser.add_argument("--only", help="comma-separated operations (get,page,post,page_hot)")
    parser.add_argument("--keep", action="store_true",
                        help="start the cluster and servers, print where, and wait (for profiling); Ctrl-C or SIGTERM stops them")
    parser.add_argument("--before", metavar="BINARY",
                        help="also measure this build of image-catalog (e.g. the one before a change) "
                             "on the same database, as system 'before'")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="image-catalog-pgbench-")
    os.chmod(work, 0o755)
    cluster = None
    servers = []

    def stop_all(*_):
        for server in servers:
            try:
                server.stop()
            except (OSError, AttributeError, ValueError):
                pass
        servers.clear()
        if cluster:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        print(f"machine: {os.cpu_count()} cores; load average {loadavg()}; work dir {work}", flush=True)
        cluster = Cluster(os.path.join(work, "pg"), max_connections=200)
        settings = cluster.settings()
        print("postgres:", ", ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
        cluster.psql("postgres", "CREATE DATABASE catalog")

        hash_line = run.hash_password()
        images = os.path.join(work, "images.jsonl")
        run.write_images(images, IMAGES)
        sled_dir, pg_dir, pg2_dir, before_dir = (
            os.path.join(work, n) for n in ("sled", "pg-a", "pg-b", "pg-before"))
        write_config(sled_dir, run.free_port(), hash_line)
        write_config(pg_dir, run.free_port(), hash_line, cluster.url("catalog"))
        write_config(pg2_dir, run.free_port(), hash_line, cluster.url("catalog"))
        write_config(before_dir, run.free_port(), hash_line, cluster.url("catalog"))
        for folder in (sled_dir, pg_dir):
            subprocess.run([run.BINARY, "--config", os.path.join(folder, "config.toml"),
                            "import", images], check=True, capture_output=True)
        sled = run.Server(sled_dir, "serve")
        servers.append(sled)
        sled.wait_warm()
        pg = run.Server(pg_dir, "serve")
        servers.append(pg)
        pg2 = None
        if not args.no_two_nodes:
            pg2 = run.Server(pg2_dir, "serve")
            servers.append(pg2)
        before = None
        if args.before:
            binary, run.BINARY = run.BINARY, args.before
            before = run.Server(before_dir, "serve")
            run.BINARY = binary
            servers.append(before)
        # The first Basic request of each server pays argon2; the figures are for the
        # cached verification.
        for server in servers:
            run.get(f"{server.base}/v3/image/img-0000500")
        # Both backends answer the same bytes.
        for path in ("/v3/image/img-0000500", "/v3/images?limit=100&marker=img-0000400"):
            assert run.get(sled.base + path) == run.get(pg.base + path), path
        pg_json = run.get(pg.base + "/v3/image/img-0000500").decode()
        template = pg_json.replace("img-0000500", "ID").replace(
            "Image number 500 for benchmarking", "bench image").replace('"static"', '"ec2"') \
            .replace('"openstack"', '"ec2"')
        scripts = pgbench_scripts(work, template)

        ops = {
            "get": (run.GET_RANDOM_LUA, ("1000",), "/v3/image"),
            "page": (run.PAGE_RANDOM_LUA, ("1000",), "/v3/images"),
            "post": (run.POST_LUA, None, "/v3/image"),
            "page_hot": (None, (), "/v3/images?limit=100&marker=img-0000400"),
        }
        only = args.only.split(",") if args.only else list(ops)
        samples = {}

        def add(name, value):
            samples.setdefault(name, []).append(value)

        if args.keep:
            print(f"sled {sled.base}, postgres {pg.base}" + (f" and {pg2.base}" if pg2 else "")
                  + f", database {cluster.url('catalog')}; pgbench scripts in {work}; Ctrl-C stops",
                  flush=True)
            signal.pause()

        for round_ in range(args.rounds):
            systems = ["sled", "postgres", "pgbench"] + (["before"] if before else [])
            systems = systems[round_ % 3:] + systems[:round_ % 3]
            for op in only:
                script, script_args, path = ops[op]
                for c in CONNECTIONS:
                    for system in systems:
                        if system == "pgbench":
                            if op == "page_hot":
                                continue
                            rate = pgbench(cluster, "catalog", scripts[op], c, args.seconds)
                        else:
                            server = {"sled": sled, "postgres": pg, "before": before}[system]
                            extra = script_args
                            if op == "post":
                                extra = (f"{system}-r{round_}c{c}",)
                            rate = wrk(server.base + path, c, args.seconds, script, extra)
                        add(f"{op}_{system}_c{c}", rate)
            if pg2 and ("get" in only or "post" in only):
                # Issue 13: 64 connections on one node, beside 32 + 32 on two nodes.
                for op in [o for o in ("get", "post") if o in only]:
                    script, script_args, path = ops[op]
                    order = ["one", "two"] if round_ % 2 == 0 else ["two", "one"]
                    for nodes in order:
                        tag = f"n{nodes}-r{round_}"
                        if nodes == "one":
                            extra = (tag,) if op == "post" else script_args
                            rate = wrk(pg.base + path, 64, args.seconds, script, extra)
                        else:
                            rate = wrk_together([
                                (pg.base + path, 32, script, (tag + "a",) if op == "post" else script_args),
                                (pg2.base + path, 32, script, (tag + "b",) if op == "post" else script_args),
                            ], args.seconds)
                        add(f"{op}_{nodes}_node_c64", rate)
            print(f"round {round_ + 1}/{args.rounds} done, load {loadavg()}: "
                  + ", ".join(f"{k} {v[-1]:.0f}" for k, v in samples.items()), flush=True)

        m = {name: statistics.median(values) for name, values in samples.items()}
        print(f"\n== medians of {args.rounds} rounds of {args.seconds} s, req/s (pgbench: tps)")
        print(f"  {'figure':<10} {'conns':>5} {'sled':>10} {'postgres':>10} {'pgbench':>10} "
              f"{'pg/pgbench':>10} {'pg/sled':>8}" + (f" {'before':>10} {'bf/pgbench':>10}" if before else ""))
        ratios = {}
        for op in only:
            for c in CONNECTIONS:
                s, p = m[f"{op}_sled_c{c}"], m[f"{op}_postgres_c{c}"]
                b = m.get(f"{op}_pgbench_c{c}")
                if b:
                    ratios[f"{op}_c{c}_postgres_vs_pgbench"] = p / b
                ratios[f"{op}_c{c}_postgres_vs_sled"] = p / s
                line = (f"  {op:<10} {c:>5} {s:>10,.0f} {p:>10,.0f} "
                        f"{(f'{b:,.0f}' if b else '-'):>10} {(f'{p / b:.2f}' if b else '-'):>10} {p / s:>8.2f}")
                if before:
                    f = m[f"{op}_before_c{c}"]
                    ratios[f"{op}_c{c}_before_vs_pgbench"] = f / b if b else None
                    line += f" {f:>10,.0f} {(f'{f / b:.2f}' if b else '-'):>10}"
                print(line)
        if "get_one_node_c64" in m or "post_one_node_c64" in m:
            print("== one node (64 connections) vs two nodes (32 + 32), one database")
            for op in ("get", "post"):
                if f"{op}_one_node_c64" in m:
                    one, two = m[f"{op}_one_node_c64"], m[f"{op}_two_node_c64"]
                    ratios[f"{op}_two_nodes_vs_one"] = two / one
                    print(f"  {op:<6} one {one:>10,.0f}  two {two:>10,.0f}  two/one {two / one:.2f}")
        misses = [k for k, v in ratios.items() if k.endswith("_postgres_vs_pgbench") and v < 0.5]
        print("== target: postgres >= 0.5 x pgbench for each operation and client count:",
              "PASS" if not misses else "MISS " + ", ".join(misses))
        print("load average at the end:", loadavg())
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"settings": settings, "samples": samples, "medians": m,
                           "ratios": ratios}, f, indent=2)
    finally:
        stop_all()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The database agent against pgbouncer (issue 19's benchmark; `scripts/bench --phases dbagent` runs this).

    scripts/bench-dbagent.py                  # 3 rounds, 3 s per cell, 1, 8 and 64 callers (about 4 minutes)
    scripts/bench-dbagent.py --quick          # 1 round, 2 s per cell
    scripts/bench-dbagent.py --db postgres://user:pass@127.0.0.1:5432/db --no-build

Setup: the throwaway PostgreSQL of `scripts/db start` on 127.0.0.1 (started here when it is not running, and
stopped at the end then), unless --db names one; `pgbench -i` fills it; pgbouncer (Debian's) runs in transaction
pooling in front of it on a port of its own, its configuration in a temporary folder, stopped at the end.
pgbench and pgbouncer are installed with apt-get when missing (as root; otherwise the script says what to install).

Rows, at each concurrency N (one point select a query, `SELECT abalance FROM pgbench_accounts WHERE aid = ?`):
  agent    `switchyard bench dbagent`: N async callers through an in-process database agent (named statement, TCP
           on 127.0.0.1), against the same pool used directly in the same process (pool of --pool-size connections)
  pgbouncer `pgbench -S -M extended -c N -j 2 -T S` through pgbouncer (default_pool_size = --pool-size), against
           pgbench straight to PostgreSQL
Each round measures every cell, alternating which side of a pair goes first; the report gives the medians over the
rounds of each ratio (through / direct) and latency (p50, p99), with the load average beside each run.

Target (issue 19): the agent's ratio >= pgbouncer's at every concurrency, and the agent's p99 <= 2x direct p99.
Writes Benchmarks/results/dbagent-latest.md and dbagent-latest.json.
"""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from urllib.parse import urlparse, unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRATCH = os.path.join(ROOT, ".build-pg")
SWITCHYARD = os.path.join(SCRATCH, "release", "switchyard")
RESULTS = os.path.join(ROOT, "Benchmarks", "results")
DB_SCRIPT = os.path.join(ROOT, "scripts", "db")
DB_ENV = os.path.join(ROOT, ".build-db", "env")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def loadavg():
    return round(os.getloadavg()[0], 2)


def ensure_tools():
    """pgbench and pgbouncer, installed with apt-get when missing (as root)."""
    need = {"pgbench": "postgresql-client postgresql-contrib", "pgbouncer": "pgbouncer"}
    missing = [tool for tool in need if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")]
    if not missing:
        return
    packages = " ".join(need[t] for t in missing).split()
    if os.geteuid() != 0:
        sys.exit(f"bench-dbagent: missing {', '.join(missing)}: install {' '.join(packages)} (apt-get) and rerun")
    log(f"installing {' '.join(packages)} ...")
    # The packages must not start a system-wide pgbouncer: Debian's policy-rc.d answering 101 says so.
    policy, added = "/usr/sbin/policy-rc.d", False
    if not os.path.exists(policy):
        with open(policy, "w") as f:
            f.write("#!/bin/sh\nexit 101\n")
        os.chmod(policy, 0o755)
        added = True
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        r = subprocess.run(["apt-get", "install", "-y", "-qq"] + packages,
                           env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    finally:
        if added:
            os.remove(policy)
    still = [t for t in missing if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if r.returncode != 0 or still:
        sys.exit(f"bench-dbagent: apt-get could not install {' '.join(packages)}; install them and rerun")


def tool(name):
    return shutil.which(name) or f"/usr/sbin/{name}"


def db_url(opts):
    """The PostgreSQL URL and whether this script started the server."""
    if opts.db:
        return opts.db, False
    started = False
    if not os.path.exists(DB_ENV) or "not started" in subprocess.run([DB_SCRIPT, "status"], capture_output=True,
                                                                    text=True).stdout:
        log("starting the throwaway databases (scripts/db start) ...")
        subprocess.run([DB_SCRIPT, "start"], check=True)
        started = True
    with open(DB_ENV) as f:
        m = re.search(r"SWITCHYARD_TEST_POSTGRES_URL='([^']+)'", f.read())
    if not m:
        sys.exit("bench-dbagent: .build-db/env has no PostgreSQL URL")
    return m.group(1), started


class PG:
    """The parts of a postgres:// URL, for pgbench and pgbouncer."""

    def __init__(self, url):
        u = urlparse(url)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 5432
        self.user = unquote(u.username or "postgres")
        self.password = unquote(u.password or "")
        self.db = u.path.lstrip("/") or self.user

    def env(self):
        return dict(os.environ, PGPASSWORD=self.password)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Bouncer:
    """pgbouncer in transaction pooling in front of `pg`, on a port of its own; files in a temporary folder."""

    def __init__(self, pg, pool_size, max_clients):
        self.dir = tempfile.mkdtemp(prefix="switchyard-pgbouncer.")
        self.port = free_port()
        conf = os.path.join(self.dir, "pgbouncer.ini")
        users = os.path.join(self.dir, "users.txt")
        with open(users, "w") as f:
            f.write(f'"{pg.user}" "{pg.password}"\n')
        with open(conf, "w") as f:
            f.write(f"""[databases]
{pg.db} = host={pg.host} port={pg.port} dbname={pg.db} user={pg.user} password={pg.password}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = plain
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = {pool_size}
max_client_conn = {max_clients + 16}
log_connections = 0
log_disconnections = 0
logfile = {os.path.join(self.dir, "pgbouncer.log")}
pidfile = {os.path.join(self.dir, "pgbouncer.pid")}
""")
        cmd = [tool("pgbouncer"), conf]
        if os.geteuid() == 0:
            # pgbouncer refuses to run as root: as the postgres user (Debian's), which must read the folder.
            shutil.chown(self.dir, "postgres")
            for name in (conf, users):
                shutil.chown(name, "postgres")
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.proc.stderr.read().strip()[-400:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("pgbouncer did not listen within 15 s")

    def stop(self):
        if self.proc.poll() is None:
            # runuser passes the signal on to pgbouncer (its session: we started it in a new one).
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))])


def pgbench(pg, port, clients, seconds):
    """`pgbench -S` for `seconds`: transactions/s and the p50/p99 of the transactions' latencies (µs)."""
    logdir = tempfile.mkdtemp(prefix="switchyard-pgbench.")
    try:
        cmd = [tool("pgbench"), "-n", "-S", "-M", "extended", "-c", str(clients), "-j", str(min(2, clients)),
               "-T", str(seconds), "-l", "--log-prefix", os.path.join(logdir, "tx"),
               "-h", "127.0.0.1", "-p", str(port), "-U", pg.user, pg.db]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=pg.env(), timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"pgbench -c {clients} on port {port} did not end within {seconds + 30} s")
        m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", r.stdout)
        if r.returncode != 0 or not m:
            raise RuntimeError(f"pgbench failed: {(r.stdout + r.stderr).strip()[-400:]}")
        latencies = []
        for path in glob.glob(os.path.join(logdir, "tx*")):
            with open(path) as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 3:
                        latencies.append(int(fields[2]))
        latencies.sort()
        return {"qps": float(m.group(1)), "p50_us": percentile(latencies, 0.5),
                "p99_us": percentile(latencies, 0.99), "queries": len(latencies)}
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def agent_bench(opts, url, clients, seconds, agent_first):
    cmd = [opts.switchyard, "bench", "dbagent", "--db", url, "--callers", str(clients), "--seconds", str(seconds),
           "--pool-size", str(opts.pool_size), "--json"] + (["--agent-first"] if agent_first else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"switchyard bench dbagent -c {clients} did not end within {seconds * 4 + 120} s")
    rows = None
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("["):
            rows = json.loads(line)
            break
    if r.returncode != 0 or not rows:
        raise RuntimeError(f"switchyard bench dbagent failed: {(r.stdout + r.stderr).strip()[-400:]}")
    return {row["mode"]: {"qps": row["queries_per_second"], "p50_us": row["p50_us"], "p99_us": row["p99_us"],
                          "queries": row["queries"], "errors": row["errors"], "cpu_us": row["cpu_us_per_query"],
                          "switches": row["context_switches_per_query"]} for row in rows}


def build(opts):
    if opts.no_build or opts.switchyard_given:
        return
    log("building switchyard (release, PostgreSQL trait, .build-pg) ...")
    subprocess.run(["swift", "build", "-c", "release", "--traits", "PostgreSQL", "--product", "switchyard",
                    "--scratch-path", SCRATCH], cwd=ROOT, check=True)


def fmt(x):
    return f"{x:,.0f}".replace(",", " ")


def markdown(report):
    meta = report["meta"]
    o = [f"# Database agent against pgbouncer ({meta['date']})", "",
         f"`{meta['command']}` at {meta['commit']}: rounds {meta['rounds']}, {meta['seconds']} s per cell, pool of "
         f"{meta['pool_size']} connections (the agent's and the direct pool; pgbouncer's default_pool_size), "
         f"PostgreSQL {meta['postgres']}, pgbouncer {meta['pgbouncer']}, pgbench scale {meta['scale']}, "
         f"{meta['cpus']} CPUs shared; load average {meta['load_before']} before, {meta['load_after']} after. "
         "Medians over rounds; ratio = through / direct, per round.", "",
         "| callers | agent q/s | pool direct q/s | agent ratio | pgbouncer q/s | pgbench direct q/s | pgbouncer ratio "
         "| agent p50/p99 µs | direct p50/p99 µs | pgbouncer p50/p99 µs | pgbench p50/p99 µs | target |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in report["summary"]:
        o.append(f"| {s['callers']} | {fmt(s['agent_qps'])} | {fmt(s['direct_qps'])} | {s['agent_ratio']:.2f} "
                 f"| {fmt(s['bouncer_qps'])} | {fmt(s['pgbench_qps'])} | {s['bouncer_ratio']:.2f} "
                 f"| {fmt(s['agent_p50'])} / {fmt(s['agent_p99'])} | {fmt(s['direct_p50'])} / {fmt(s['direct_p99'])} "
                 f"| {fmt(s['bouncer_p50'])} / {fmt(s['bouncer_p99'])} | {fmt(s['pgbench_p50'])} / "
                 f"{fmt(s['pgbench_p99'])} | {s['verdict']} |")
    o += ["", "The process of `switchyard bench dbagent` (callers, agent, pool), per query: CPU time (user + system, "
          "every thread) and context switches, agent against direct (a measure that load on the machine moves less "
          "than queries/s):", "",
          "| callers | agent CPU µs/query | direct CPU µs/query | agent switches/query | direct switches/query |",
          "|---:|---:|---:|---:|---:|"]
    for s in report["summary"]:
        o.append(f"| {s['callers']} | {s['agent_cpu_us']:.0f} | {s['direct_cpu_us']:.0f} | {s['agent_switches']:.1f} "
                 f"| {s['direct_switches']:.1f} |")
    o += ["", "Target (issue 19): agent ratio >= pgbouncer ratio at every concurrency, and agent p99 <= 2x direct p99.",
          "", "Runs (load average at the start of each):", "",
          "| round | callers | agent q/s | direct q/s | pgbouncer q/s | pgbench q/s | load |",
          "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        o.append(f"| {r['round']} | {r['callers']} | {fmt(r['agent']['qps'])} | {fmt(r['direct']['qps'])} "
                 f"| {fmt(r['bouncer']['qps'])} | {fmt(r['pgbench']['qps'])} | {r['load']} |")
    for note in meta["notes"]:
        o += ["", note]
    return "\n".join(o) + "\n"


def summarize(runs, callers_list):
    summary = []
    for n in callers_list:
        rs = [r for r in runs if r["callers"] == n]
        if not rs:
            continue
        med = lambda f: statistics.median(f(r) for r in rs)
        s = {"callers": n,
             "agent_qps": med(lambda r: r["agent"]["qps"]), "direct_qps": med(lambda r: r["direct"]["qps"]),
             "bouncer_qps": med(lambda r: r["bouncer"]["qps"]), "pgbench_qps": med(lambda r: r["pgbench"]["qps"]),
             "agent_ratio": med(lambda r: r["agent"]["qps"] / max(1e-9, r["direct"]["qps"])),
             "bouncer_ratio": med(lambda r: r["bouncer"]["qps"] / max(1e-9, r["pgbench"]["qps"]))}
        for side in ("agent", "direct", "bouncer", "pgbench"):
            s[f"{side}_p50"] = med(lambda r: r[side]["p50_us"])
            s[f"{side}_p99"] = med(lambda r: r[side]["p99_us"])
        for side in ("agent", "direct"):
            s[f"{side}_cpu_us"] = med(lambda r: r[side]["cpu_us"])
            s[f"{side}_switches"] = med(lambda r: r[side]["switches"])
        s["ratio_ok"] = s["agent_ratio"] >= s["bouncer_ratio"]
        s["p99_ok"] = s["agent_p99"] <= 2 * s["direct_p99"]
        s["verdict"] = ("met" if s["ratio_ok"] and s["p99_ok"] else "missed: " + ", ".join(
            x for x, ok in (("ratio", s["ratio_ok"]), ("p99", s["p99_ok"])) if not ok))
        summary.append(s)
    return summary


def version(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        m = re.search(r"(\d+\.\d+(\.\d+)?)", out)
        return m.group(1) if m else out
    except OSError:
        return "?"


def git_describe():
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "Sources", "Package.swift"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, 2 s per cell")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    p.add_argument("--seconds", type=float, help="seconds per cell (default 3; --quick 2)")
    p.add_argument("--callers", default="1,8,64", help="concurrent callers (default 1,8,64)")
    p.add_argument("--pool-size", type=int, default=8, help="pool connections on every side (default 8)")
    p.add_argument("--scale", type=int, default=1, help="pgbench -i scale (default 1: 100,000 accounts)")
    p.add_argument("--db", help="postgres:// URL to use (default: scripts/db's throwaway PostgreSQL)")
    p.add_argument("--no-build", action="store_true", help="use the switchyard binary already built")
    p.add_argument("--switchyard", metavar="PATH", help="switchyard binary with the PostgreSQL trait "
                   "(default .build-pg/release/switchyard, built here)")
    p.add_argument("--out", default=RESULTS, help="where dbagent-latest.md/json go")
    opts = p.parse_args()
    opts.rounds = opts.rounds or (1 if opts.quick else 3)
    seconds = int(opts.seconds or (2 if opts.quick else 3))
    callers = [int(x) for x in opts.callers.split(",") if x]
    opts.switchyard_given = bool(opts.switchyard)
    opts.switchyard = os.path.abspath(opts.switchyard) if opts.switchyard else SWITCHYARD

    ensure_tools()
    build(opts)
    if not os.access(opts.switchyard, os.X_OK):
        sys.exit(f"bench-dbagent: no switchyard binary at {opts.switchyard}")
    url, started_db = db_url(opts)
    pg = PG(url)
    bouncer = None
    started = time.time()
    load_before = loadavg()
    runs, notes = [], []
    try:
        log(f"pgbench -i -s {opts.scale} into {pg.db} on {pg.host}:{pg.port} ...")
        r = subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(opts.scale), "-h", pg.host, "-p", str(pg.port),
                            "-U", pg.user, pg.db], capture_output=True, text=True, env=pg.env())
        if r.returncode != 0:
            sys.exit(f"bench-dbagent: pgbench -i failed: {r.stderr.strip()[-400:]}")
        bouncer = Bouncer(pg, opts.pool_size, max(callers))
        log(f"pgbouncer (transaction pooling, pool {opts.pool_size}) on 127.0.0.1:{bouncer.port}")
        for rnd in range(opts.rounds):
            for i, n in enumerate(callers):
                load = loadavg()
                flip = (rnd + i) % 2 == 1
                pair = [("bouncer", bouncer.port), ("pgbench", pg.port)]
                measured = {}
                try:
                    agent = agent_bench(opts, url, n, seconds, agent_first=flip)
                    for side, port in (reversed(pair) if flip else pair):
                        measured[side] = pgbench(pg, port, n, seconds)
                except RuntimeError as e:
                    # One stuck or failed run costs its cell in this round, not the whole benchmark.
                    log(f"  ! r{rnd} x{n}: {e}")
                    notes.append(f"Round {rnd}, {n} callers: not measured ({e}).")
                    continue
                run = {"round": rnd, "callers": n, "load": load, "agent": agent["agent"], "direct": agent["direct"],
                       "bouncer": measured["bouncer"], "pgbench": measured["pgbench"]}
                runs.append(run)
                log(f"  r{rnd} x{n:<3} agent {agent['agent']['qps']:8.0f}/s direct {agent['direct']['qps']:8.0f}/s "
                    f"({agent['agent']['qps'] / max(1e-9, agent['direct']['qps']):.2f})   pgbouncer "
                    f"{measured['bouncer']['qps']:8.0f}/s pgbench {measured['pgbench']['qps']:8.0f}/s "
                    f"({measured['bouncer']['qps'] / max(1e-9, measured['pgbench']['qps']):.2f})   "
                    f"p99 agent {agent['agent']['p99_us']:.0f} direct {agent['direct']['p99_us']:.0f} us  load {load}")
                if agent["agent"]["errors"] or agent["direct"]["errors"]:
                    notes.append(f"Round {rnd}, {n} callers: {agent['agent']['errors']} agent and "
                                 f"{agent['direct']['errors']} direct queries failed.")
    finally:
        if bouncer:
            bouncer.stop()
        if started_db:
            subprocess.run([DB_SCRIPT, "stop"], check=False)
    report = {
        "meta": {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
                 "rounds": opts.rounds, "seconds": seconds, "pool_size": opts.pool_size, "scale": opts.scale,
                 "command": " ".join(["scripts/bench-dbagent.py"] + sys.argv[1:]), "commit": git_describe(),
                 "postgres": version([tool("pgbench"), "--version"]),
                 "pgbouncer": version([tool("pgbouncer"), "--version"]),
                 "load_before": load_before, "load_after": loadavg(), "elapsed_s": time.time() - started,
                 "notes": notes},
        "runs": runs, "summary": summarize(runs, callers)}
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "dbagent-latest.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(opts.out, "dbagent-latest.md"), "w") as f:
        f.write(md)
    log("")
    log(md)
    log(f"wrote {opts.out}/dbagent-latest.md and dbagent-latest.json")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The reverse proxy against HAProxy and nginx (issue 18): the C ping-pong client through each proxy to one C echo
backend.

    scripts/bench-proxy.py               # 5 rounds, 1 s cells (about 8 minutes on 2 cores)
    scripts/bench-proxy.py --quick       # smoke run: 1 round, short cells (about 1 minute)
    scripts/bench --phases proxy         # the same from the suite (scripts/bench --quick --phases proxy: smoke run)

Cells: {16 B, 4 KiB, 64 KiB} x {10, 100, 1000} connections in a closed loop (pingpong), and a connection-rate cell:
16 B over --rate-conns connections that each close after their reply and open the next (pingpong --reconnect).
Rows, in every cell:
  direct             the client straight to the echo server: the path without a proxy
  haproxy            Debian's haproxy, `mode tcp`, nbthread = --loops, no logging, generous maxconn and timeouts
  nginx              Debian's nginx with libnginx-mod-stream, a stream server's `proxy_pass`, worker_processes = --loops
  switchyard-auto    `switchyard proxy --loops N` (its default, --splice auto: read/write for short reads, splice
                     once a read fills the buffer): each connection's backend from a local agent (a name service on
                     SQLite holds the echo server as the route's one host, a reporter takes the reports)
  switchyard-splice  the same with --splice on (always splice)
  switchyard-rw      the same with --splice off (read/write)
  haproxy-copy       (--noise-check) a second HAProxy: its ratios to the first show how far a ratio strays by chance
Until `switchyard proxy` exists its rows are skipped with a note. haproxy and nginx are installed with apt-get when
missing (as root, or through `sudo -n`).

Within a round every cell runs each row in turn, the order rotated from cell to cell and round to round (as
scripts/bench does: the first run after a change of cell pays for it); the proxies live for one round, the backend,
name service, reporter and agent for the whole run. pingpong warms up (--warmup, not counted) and marks its measured
window on stderr; the CPU of each process (the sum of its threads' on-CPU time, /proc/PID/task/*/schedstat, as
scripts/bench measures; nginx: its workers) is read at those marks, so connection setup and teardown stay out of the
per-message figures. Per cell: msgs/s, proxy CPU per message (the connection-rate cell: connections/s and proxy CPU
per connection), the backend's and the agent's CPU beside it; per round the ratios Switchyard/HAProxy and
Switchyard/nginx, and the report gives their medians over rounds and geometric means over cells, and checks the
issue's targets (PASS/FAIL).

Writes Benchmarks/results/proxy-latest.md and proxy-latest.json (--out DIR).
"""

import argparse
import importlib.machinery
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    """scripts/bench as a module: its paths, build settings and statistics, shared with this script."""
    path = os.path.join(ROOT, "scripts", "bench")
    sys.dont_write_bytecode = True  # no scripts/__pycache__ for a script
    loader = importlib.machinery.SourceFileLoader("switchyard_bench", path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


bench = load_bench()
BENCH = bench.BENCH
BENCH_BIN = bench.BENCH_BIN
LOGS = bench.LOGS
RESULTS = bench.RESULTS
SWITCHYARD = bench.SWITCHYARD
MODID, CMDID = 1801, 1  # the route of the echo backend
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROWS = ["direct", "haproxy", "nginx", "switchyard-auto", "switchyard-splice", "switchyard-rw"]
AGENT_BUSY_POLL_US = 50  # --agent-busy-poll-us
NOISE_ROW = "haproxy-copy"  # --noise-check: HAProxy against itself shows how far a ratio strays by chance
SWITCHYARD_ROWS = ("switchyard-auto", "switchyard-splice", "switchyard-rw")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
log = bench.log


# ---------------------------------------------------------------- processes


def thread_cpu(pid):
    """{(pid, tid): on-CPU seconds so far} of the threads of `pid` (schedstat; without it utime+stime in clock
    ticks, the whole process as one entry)."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    out[(pid, tid)] = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                pass  # the thread ended meanwhile
    except OSError:
        pass
    if out and any(out.values()):
        return out
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return {(pid, "stat"): (int(fields[11]) + int(fields[12])) / CLK_TCK}
    except (OSError, ValueError, IndexError):
        return {}


def cpu_between(before, after):
    """CPU seconds spent between two thread_cpu samples: per thread, so that a thread that ends in between does not
    take its earlier time away from the sum (a thread started in between counts whole)."""
    return sum(v - before.get(k, 0.0) for k, v in after.items())


def child_pids(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A process started from a command line, with stdout and stderr in a log. Ready when a line of either matches
    `ready` (a regex; `match` keeps it), or, without one, when `port` takes a TCP connection. With `workers`, its CPU
    is that of its children (nginx: the master forks the workers that serve)."""

    def __init__(self, name, cmd, ready=None, port=None, workers=False):
        self.name = name
        self.cmd = cmd
        self.ready = re.compile(ready) if ready else None
        self.port = port
        self.workers = workers
        self.proc = None
        self.match = None
        self.log_path = os.path.join(LOGS, f"proxy-{name}.log")

    def start(self, timeout=20.0):
        os.makedirs(LOGS, exist_ok=True)
        logf = open(self.log_path, "ab")
        lock = threading.Lock()
        found = threading.Event()
        self.match = None
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

        def pump(stream):
            # Reads forever (the process never blocks on a full pipe), looking for the ready line.
            for raw in stream:
                with lock:
                    logf.write(raw)
                    logf.flush()
                if self.ready is not None and not found.is_set():
                    m = self.ready.search(raw.decode(errors="replace"))
                    if m:
                        self.match = m
                        found.set()

        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=pump, args=(stream,), daemon=True).start()
        deadline = time.time() + timeout
        ok = False
        while time.time() < deadline and self.proc.poll() is None:
            if self.ready is not None:
                if found.wait(0.02):
                    ok = True
                    break
            else:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    ok = True
                    break
                except OSError:
                    time.sleep(0.02)
        if ok and self.workers:
            while time.time() < deadline and not child_pids(self.proc.pid):
                time.sleep(0.02)
            ok = bool(child_pids(self.proc.pid))
        if not ok:
            code = self.proc.poll()
            self.stop()
            raise RuntimeError(f"{self.name} did not start" + (f" (exit {code})" if code is not None else "")
                               + f": see {self.log_path}")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def cpu_sample(self):
        """A thread_cpu sample of the process (with `workers`: of its children)."""
        out = {}
        for pid in child_pids(self.proc.pid) if self.workers else [self.proc.pid]:
            out.update(thread_cpu(pid))
        return out

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------- installing and building


def apt_install(packages, notes):
    """apt-get install, as root or through `sudo -n`; an apt-get update and a second try when the first fails."""
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        notes.append(f"Not root and no sudo: could not install {' '.join(packages)}.")
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log(f"installing {' '.join(packages)} (apt-get) ...")
    cmd = prefix + ["apt-get", "install", "-y", "--no-install-recommends"] + packages
    for attempt in range(2):
        if attempt:
            subprocess.run(prefix + ["apt-get", "update"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode == 0:
            return True
    notes.append(f"apt-get install {' '.join(packages)} failed: {(r.stdout + r.stderr).strip()[-200:]}")
    return False


def find_binary(name):
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)


def nginx_stream_static(nginx):
    """True when nginx has the stream module compiled in (no load_module needed)."""
    r = subprocess.run([nginx, "-V"], capture_output=True, text=True)
    flags = (r.stdout + r.stderr).split()
    return "--with-stream" in flags


def ensure_installed(rows, notes):
    """haproxy and nginx (with a stream module) for their rows; the rows that cannot run are dropped."""
    want = []
    if {"haproxy", NOISE_ROW} & set(rows) and not find_binary("haproxy"):
        want.append("haproxy")
    nginx = find_binary("nginx")
    if "nginx" in rows and (not nginx or (not nginx_stream_static(nginx) and not os.path.exists(NGINX_STREAM_MODULE))):
        want += (["nginx"] if not nginx else []) + ["libnginx-mod-stream"]
    if want:
        apt_install(want, notes)
    out = []
    for row in rows:
        if row in ("haproxy", NOISE_ROW, "nginx") and not find_binary(row.split("-")[0]):
            notes.append(f"{row} is not installed: its rows were skipped.")
            continue
        out.append(row)
    return out


def build(opts, notes):
    """`switchyard` as scripts/bench builds it (release, static Swift runtime, the same scratch path) and the two C
    programs of Benchmarks/ (the client and the echo backend)."""
    if opts.no_build:
        return
    if not opts.switchyard:
        log("building switchyard (release, static Swift runtime) ...")
        r = subprocess.run(["swift", "build", "-c", "release", "--product", "switchyard", "--static-swift-stdlib",
                            "--scratch-path", os.path.join(ROOT, ".build-static")], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
            log(f"  ! switchyard did not build:\n{tail}")
            notes.append("The switchyard binary did not build; any existing binary was used.")
    for product in ("pingpong", "c-echo-server"):
        log(f"building {product} (release) ...")
        subprocess.run(["swift", "build", "-c", "release", "--package-path", BENCH, "--scratch-path",
                        os.path.join(BENCH, ".build"), "--product", product], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)


def version_of(cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (r.stdout + r.stderr).strip().splitlines()
    return lines[0].strip() if lines else None


# ---------------------------------------------------------------- the backend and the load-balancing system


class Backend:
    """The C echo server, and (for the Switchyard rows) a name service on SQLite with the echo server as the one host
    of (MODID, CMDID), a reporter on the same database and an agent on three UDP ports the kernel picks."""

    def __init__(self, work):
        self.work = work
        self.echo = Proc("echo", [os.path.join(BENCH_BIN, "c-echo-server"), "0"], ready=r"127\.0\.0\.1:(\d+)")
        self.names = self.reporter = self.agent = None
        self.agent_ports = None

    @property
    def port(self):
        return int(self.echo.match.group(1))

    def start_echo(self):
        self.echo.start()

    def start_lb(self):
        db = "sqlite:" + os.path.join(self.work, "proxy.sqlite")
        r = subprocess.run([SWITCHYARD, "route", "add", "--modid", str(MODID), "--cmdid", str(CMDID),
                            "--ip", "127.0.0.1", "--port", str(self.port), "--db", db],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"route add failed: {(r.stdout + r.stderr).strip()[-300:]}")
        quiet = ["--log-level", "warning"]
        self.names = Proc("names", [SWITCHYARD, "names", "--port", "0", "--db", db] + quiet,
                          ready=r"listening on 127\.0\.0\.1:(\d+)").start()
        self.reporter = Proc("reporter", [SWITCHYARD, "reporter", "--port", "0", "--db", db] + quiet,
                             ready=r"listening on 127\.0\.0\.1:(\d+)").start()
        self.agent = Proc("agent", [SWITCHYARD, "agent", "--ports", "0,0,0",
                                    "--names", f"127.0.0.1:{self.names.match.group(1)}",
                                    "--reporter", f"127.0.0.1:{self.reporter.match.group(1)}",
                                    "--route-cache", os.path.join(self.work, "routes.json"),
                                    "--busy-poll-us", str(AGENT_BUSY_POLL_US)] + quiet,
                          ready=r"listening on udp (\S+)").start()
        self.agent_ports = re.findall(r":(\d+)", self.agent.match.group(1))
        if len(self.agent_ports) != 3:
            raise RuntimeError(f"agent: three UDP ports expected in {self.agent.match.group(0)!r}")
        # The agent fetches the route on the first request: ask until it answers with the echo server.
        r = subprocess.run([SWITCHYARD, "gethost", "--modid", str(MODID), "--cmdid", str(CMDID),
                            "--ports", ",".join(self.agent_ports), "--retry-ms", "10000"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or str(self.port) not in r.stdout:
            raise RuntimeError(f"the agent does not give the echo backend: {(r.stdout + r.stderr).strip()[-300:]}")

    def stop(self):
        for p in (self.agent, self.reporter, self.names, self.echo):
            if p is not None:
                p.stop()


def proxy_for(row, backend, opts, work, proxy_help):
    """The Proc of one proxy row, listening on a free port, forwarding to the echo backend."""
    port = free_port()
    loops = opts.loops
    if row in ("haproxy", NOISE_ROW):
        conf = os.path.join(work, f"{row}.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
    nbthread {loops}
    maxconn {opts.max_connections}
{f"    tune.bufsize {opts.haproxy_bufsize}" if opts.haproxy_bufsize else ""}

defaults
    mode tcp
    maxconn {opts.max_connections}
    timeout connect 5s
    timeout client 120s
    timeout server 120s
{"    option splice-auto" if opts.haproxy_splice else ""}

frontend proxy
    bind 127.0.0.1:{port}
    default_backend echo

backend echo
    server echo 127.0.0.1:{backend.port}
""")
        return Proc(row, [find_binary("haproxy"), "-db", "-f", conf], port=port)
    if row == "nginx":
        nginx = find_binary("nginx")
        prefix = os.path.join(work, "nginx")
        os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
        load = "" if nginx_stream_static(nginx) else f"load_module {NGINX_STREAM_MODULE};"
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""{load}
worker_processes {loops};
worker_rlimit_nofile {opts.max_connections * 2 + 1024};
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
error_log stderr error;
pid {prefix}/nginx.pid;
events {{ worker_connections {opts.max_connections * 2 + 1024}; }}
stream {{
    upstream echo {{ server 127.0.0.1:{backend.port}; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass echo;
        proxy_connect_timeout 5s;
        proxy_timeout 120s;
    }}
}}
""")
        return Proc("nginx", [nginx, "-p", prefix, "-c", conf], port=port, workers=True)
    splice = {"switchyard-splice": "on", "switchyard-rw": "off"}.get(row, "auto")
    cmd = [SWITCHYARD, "proxy", "--route", f"{port}:{MODID}:{CMDID}", "--agent-ports", ",".join(backend.agent_ports),
           "--splice", splice, "--loops", str(loops), "--max-connections", str(opts.max_connections)]
    if "--host" in proxy_help:
        cmd += ["--host", "127.0.0.1"]
    if "--log-level" in proxy_help:
        cmd += ["--log-level", "warning"]
    return Proc(row, cmd + opts.proxy_args, ready=r"listening", port=port)


# ---------------------------------------------------------------- one client run


def measured_run(port, cell, opts, procs):
    """pingpong on `port` for one cell, with the CPU seconds of each of `procs` ({role: Proc}) over its measured
    window (between its `measuring` and `measured` marks)."""
    cmd = [os.path.join(BENCH_BIN, "pingpong"), "--host", "127.0.0.1", "--port", str(port),
           "--connections", str(cell["connections"]), "--size", str(cell["size"]), "--seconds", str(opts.seconds),
           "--warmup", str(opts.warmup)]
    if cell["kind"] == "rate":
        cmd.append("--reconnect")
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    watchdog = threading.Timer(opts.seconds + opts.warmup + 90, client.kill)
    watchdog.start()
    marks, errors = {}, []

    def read_marks():
        for line in client.stderr:
            line = line.strip()
            if line in ("measuring", "measured"):
                marks[line] = {role: p.cpu_sample() for role, p in procs.items()}
            elif line:
                errors.append(line)

    reader = threading.Thread(target=read_marks, daemon=True)
    reader.start()
    out = client.stdout.read()
    client.wait()
    reader.join(5)
    watchdog.cancel()
    line = out.strip().splitlines()[-1] if out.strip() else ""
    if client.returncode != 0 or not line.startswith("{") or set(marks) != {"measuring", "measured"}:
        raise RuntimeError(f"pingpong failed ({client.returncode}): {' '.join(errors)[:300]}")
    res = json.loads(line)
    count = res["messages"]
    for role in procs:
        cpu = cpu_between(marks["measuring"][role], marks["measured"][role])
        res[f"{role}_cpu_s"] = cpu
        res[f"{role}_cpu_us_per_msg"] = cpu * 1e6 / count if count else None
    res["client_cpu_share"] = res["client_cpu_s"] / (res["seconds"] + opts.warmup)
    return res


def cell_name(cell):
    if cell["kind"] == "rate":
        return f"connect {bench.fmt_size(cell['size'])} x {cell['connections']}"
    return f"{bench.fmt_size(cell['size'])} x {cell['connections']}"


def run_rounds(rows, cells, backend, opts, work, proxy_help, runs):
    for rnd in range(opts.rounds):
        proxies = {}
        try:
            for row in rows:
                if row == "direct":
                    continue
                try:
                    proxies[row] = proxy_for(row, backend, opts, work, proxy_help).start()
                except RuntimeError as e:
                    log(f"  ! {e}")
            present = [r for r in rows if r == "direct" or r in proxies]
            for index, cell in enumerate(cells):
                shift = (rnd + index) % len(present) if present else 0
                for row in present[shift:] + present[:shift]:
                    proxy = proxies.get(row)
                    if proxy is not None and not proxy.alive():
                        log(f"  ! {row} died; restarting")
                        try:
                            proxy.start()
                        except RuntimeError as e:
                            log(f"  ! {e}")
                            continue
                    procs = {"backend": backend.echo}
                    if proxy is not None:
                        procs["proxy"] = proxy
                    if row in SWITCHYARD_ROWS:
                        procs["agent"] = backend.agent
                    try:
                        res = measured_run(proxy.port if proxy else backend.port, cell, opts, procs)
                    except (RuntimeError, OSError, ValueError) as e:
                        log(f"  ! {row} {cell_name(cell)}: {e}")
                        continue
                    res.update(round=rnd, row=row, kind=cell["kind"])
                    runs.append(res)
                    rate = res["connections_per_sec"] if cell["kind"] == "rate" else res["msgs_per_sec"]
                    unit = "conn/s" if cell["kind"] == "rate" else "msg/s"
                    per = "conn" if cell["kind"] == "rate" else "msg"
                    log(f"  r{rnd} {cell_name(cell):20} {row:18} {rate:>9.0f} {unit:6} "
                        f"proxy {bench.fmt(res.get('proxy_cpu_us_per_msg')):>6} us/{per}  "
                        f"backend {bench.fmt(res.get('backend_cpu_us_per_msg')):>5}"
                        + (f"  agent {bench.fmt(res.get('agent_cpu_us_per_msg'))}" if "agent" in procs else "")
                        + f"  p99 {res['p99_us']:8.0f} us"
                        + (f"  errors {res['errors']}" if res.get("errors") else ""))
        finally:
            for p in proxies.values():
                p.stop()


# ---------------------------------------------------------------- analysis


def summarize(runs):
    """Per cell and row: medians over rounds; per cell and Switchyard row: medians of the per-round ratios."""
    cells = {}
    for r in runs:
        key = (0 if r["kind"] == "echo" else 1, r["size"], r["connections"])
        cells.setdefault(key, {}).setdefault(r["round"], {})[r["row"]] = r
    out = []
    for (order, size, conns), rounds in sorted(cells.items()):
        kind = "echo" if order == 0 else "rate"
        names = [n for n in ROWS + [NOISE_ROW] if any(n in rr for rr in rounds.values())]
        cell = {"kind": kind, "size": size, "connections": conns, "rows": {}, "ratios": {}}
        rate_key = "connections_per_sec" if kind == "rate" else "msgs_per_sec"
        for n in names:
            rs = [rr[n] for rr in rounds.values() if n in rr]
            cell["rows"][n] = {
                "rate": bench.median([x[rate_key] for x in rs]),
                "proxy_cpu_us": bench.median([x.get("proxy_cpu_us_per_msg") for x in rs]),
                "backend_cpu_us": bench.median([x.get("backend_cpu_us_per_msg") for x in rs]),
                "agent_cpu_us": bench.median([x.get("agent_cpu_us_per_msg") for x in rs]),
                "p50_us": bench.median([x["p50_us"] for x in rs]),
                "p99_us": bench.median([x["p99_us"] for x in rs]),
                "client_cpu_share": bench.median([x["client_cpu_share"] for x in rs]),
                "errors": sum(x.get("errors", 0) for x in rs),
                "rounds": len(rs),
            }

        def ratio(a, b):
            """a/b: rate, proxy CPU, and proxy CPU with the agent's (the Switchyard rows' GetHost and Report)."""
            rate, cpu, with_agent = [], [], []
            for rr in rounds.values():
                if a in rr and b in rr:
                    x, y = rr[a], rr[b]
                    if y[rate_key]:
                        rate.append(x[rate_key] / y[rate_key])
                    if x.get("proxy_cpu_us_per_msg") and y.get("proxy_cpu_us_per_msg"):
                        cpu.append(x["proxy_cpu_us_per_msg"] / y["proxy_cpu_us_per_msg"])
                        with_agent.append((x["proxy_cpu_us_per_msg"] + (x.get("agent_cpu_us_per_msg") or 0))
                                          / (y["proxy_cpu_us_per_msg"] + (y.get("agent_cpu_us_per_msg") or 0)))
            return {"rate": bench.median(rate), "cpu": bench.median(cpu), "cpu_with_agent": bench.median(with_agent),
                    "rounds": len(rate)}

        for n in names:
            if n == "direct":
                continue
            if "direct" in names:
                cell["ratios"][f"{n}/direct"] = ratio(n, "direct")
            if n == NOISE_ROW and "haproxy" in names:
                cell["ratios"][f"{n}/haproxy"] = ratio(n, "haproxy")
            if n in SWITCHYARD_ROWS:
                for ref in ("haproxy", "nginx"):
                    if ref in names:
                        cell["ratios"][f"{n}/{ref}"] = ratio(n, ref)
        if "switchyard-splice" in names and "switchyard-rw" in names:
            cell["ratios"]["switchyard-splice/switchyard-rw"] = ratio("switchyard-splice", "switchyard-rw")
        out.append(cell)
    return out


def targets(summary):
    """The issue's targets, per Switchyard row (splice and read/write) where measured."""
    out = []
    echo = [c for c in summary if c["kind"] == "echo"]
    rate = [c for c in summary if c["kind"] == "rate"]

    def values(cells, key, metric):
        return [c["ratios"][key][metric] for c in cells if c["ratios"].get(key, {}).get(metric) is not None]

    for row in SWITCHYARD_ROWS:
        key = f"{row}/haproxy"
        cpus = values(echo, key, "cpu")
        if cpus:
            g = bench.geomean(cpus)
            out.append({"target": f"{row}: proxy CPU/msg <= 0.9x HAProxy's, geometric mean over {len(cpus)} cells",
                        "value": f"{g:.2f}", "met": g <= 0.9})
            out.append({"target": f"{row}: proxy CPU/msg <= 1.0x HAProxy's in every cell",
                        "value": f"max {max(cpus):.2f}", "met": max(cpus) <= 1.0})
        rates = values(echo, key, "rate")
        if rates:
            g = bench.geomean(rates)
            out.append({"target": f"{row}: msgs/s >= 1.0x HAProxy's, geometric mean over {len(rates)} cells",
                        "value": f"{g:.2f}", "met": g >= 1.0})
        conns = values(rate, key, "rate")
        if conns:
            out.append({"target": f"{row}: connections/s >= 1.0x HAProxy's", "value": f"{min(conns):.2f}",
                        "met": min(conns) >= 1.0})
    big = [c for c in echo if c["size"] == 65536]
    splice = values(big, "switchyard-splice/switchyard-rw", "cpu")
    if splice:
        g = bench.geomean(splice)
        out.append({"target": f"splice: proxy CPU per byte <= 0.7x read/write's at 64 KiB (geometric mean over "
                              f"{len(splice)} cells)", "value": f"{g:.2f}", "met": g <= 0.7})
    return out


def markdown(report):
    meta = report["meta"]
    L = ["# Reverse proxy benchmark\n"]
    L.append(f"Run {meta['date']} on {meta['host']} ({meta['cpus']} cores), {meta['rounds']} round(s), "
             f"{meta['seconds']} s measured per cell after {meta['warmup']} s of warm-up, {meta['loops']} I/O "
             f"loops/threads/workers per proxy, one C ping-pong client thread, one single-threaded C echo backend. "
             f"Measuring took {meta['elapsed_s']:.0f} s.\n")
    L.append(f"Reproduce: `{meta['command'].strip()}`"
             + (f" (sources at {meta['commit']})" if meta.get("commit") else "") + "\n")
    for k in ("haproxy", "nginx"):
        if meta.get("versions", {}).get(k):
            L.append(f"- {k}: {meta['versions'][k]}")
    for note in meta["notes"]:
        L.append(f"- {note}")
    L.append("")
    L.append("Ratios are medians over rounds of per-round ratios (same round, same cell): a rate above 1 and a CPU "
             "below 1 favour the Switchyard row. `proxy CPU` is the proxy process's CPU over the measured window "
             "per message (the connect cell: per connection); `backend` the echo server's, `agent` the agent's "
             "(the Switchyard rows ask it for a host per connection; not in `proxy CPU`). `client CPU` is the "
             "client's CPU seconds per second: near 1.0 the client is the bottleneck. Absolute numbers vary between "
             "runs on this shared machine; compare ratios.\n")
    L.append("| cell | row | msg/s | proxy CPU us/msg | backend us/msg | agent us/msg | p50 us | p99 us | client CPU | "
             "rate / direct | rate / HAProxy | CPU / HAProxy | rate / nginx | CPU / nginx |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = bench.fmt
    for c in report["summary"]:
        for n, s in c["rows"].items():
            d = c["ratios"].get(f"{n}/direct", {})
            h = c["ratios"].get(f"{n}/haproxy", {})
            x = c["ratios"].get(f"{n}/nginx", {})
            err = f" ({s['errors']} errors)" if s.get("errors") else ""
            rate = fmt(s["rate"], 0) + (" conn/s" if c["kind"] == "rate" else "")
            L.append(f"| {cell_name(c)} | {n}{err} | {rate} | {fmt(s['proxy_cpu_us'])} | {fmt(s['backend_cpu_us'])} | "
                     f"{fmt(s['agent_cpu_us'])} | {fmt(s['p50_us'], 0)} | {fmt(s['p99_us'], 0)} | "
                     f"{fmt(s['client_cpu_share'])} | {fmt(d.get('rate'))} | {fmt(h.get('rate'))} | "
                     f"{fmt(h.get('cpu'))} | {fmt(x.get('rate'))} | {fmt(x.get('cpu'))} |")
    L.append("")
    echo = [c for c in report["summary"] if c["kind"] == "echo"]
    keys = [k for k in ("switchyard-auto/haproxy", "switchyard-splice/haproxy", "switchyard-rw/haproxy",
                        "switchyard-auto/nginx", "switchyard-splice/nginx",
                        "switchyard-rw/nginx", "switchyard-splice/switchyard-rw", f"{NOISE_ROW}/haproxy")
            if any(k in c["ratios"] for c in echo)]
    if keys:
        L.append("Geometric means over the closed-loop cells of the per-cell median ratios (`+ agent`: the proxy's "
                 "CPU with the agent's):\n")
        L.append("| ratio | msg/s | proxy CPU/msg | proxy + agent CPU/msg |")
        L.append("|---|---:|---:|---:|")
        for k in keys:
            def g(metric):
                return fmt(bench.geomean([c["ratios"][k].get(metric) for c in echo if k in c["ratios"]]))
            L.append(f"| {k} | {g('rate')} | {g('cpu')} | {g('cpu_with_agent')} |")
        L.append("")
    for c in [c for c in report["summary"] if c["kind"] == "rate"]:
        found = [(k, c["ratios"][k]) for k in keys if k in c["ratios"]]
        if found:
            L.append(f"{cell_name(c)} (a new connection per request):\n")
            L.append("| ratio | connections/s | proxy CPU/connection | proxy + agent CPU/connection |")
            L.append("|---|---:|---:|---:|")
            for k, r in found:
                L.append(f"| {k} | {fmt(r.get('rate'))} | {fmt(r.get('cpu'))} | {fmt(r.get('cpu_with_agent'))} |")
            L.append("")
    L.append("## Targets (issue 18)\n")
    if report["targets"]:
        L.append("| target | value | |")
        L.append("|---|---:|---|")
        for t in report["targets"]:
            L.append(f"| {t['target']} | {t['value']} | {'PASS' if t['met'] else 'FAIL'} |")
    else:
        L.append("No Switchyard proxy row was measured: no target checked.")
    L.append("")
    L.append("Raw runs: `proxy-latest.json`.")
    return "\n".join(L) + "\n"


def write_report(report, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "proxy-latest.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = markdown(report)
    with open(os.path.join(out, "proxy-latest.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    for t in report["targets"]:
        log(f"{'PASS' if t['met'] else 'FAIL'}  {t['target']}: {t['value']}")
    log(f"wrote {out}/proxy-latest.md, proxy-latest.json (run took {report['meta']['elapsed_s']:.0f} s)")


# ---------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, short cells (0.5 s after 0.2 s of warm-up)")
    p.add_argument("--rounds", type=int, help="rounds (default 5; --quick 1)")
    p.add_argument("--seconds", type=float, help="measured seconds per cell (default 1; --quick 0.5)")
    p.add_argument("--warmup", type=float, help="seconds of load before each measured window (default 0.5; "
                   "--quick 0.2)")
    p.add_argument("--sizes", default="16,4096,65536", help="message sizes (default 16,4096,65536)")
    p.add_argument("--conns", default="10,100,1000",
                   help="connection counts (default 10,100,1000; empty: only the connection-rate cell)")
    p.add_argument("--rate-conns", type=int, default=10,
                   help="connections of the connection-rate cell, each reconnecting per request (default 10; 0: no "
                   "such cell)")
    p.add_argument("--rows", default=",".join(ROWS), help=f"rows to run (default {','.join(ROWS)})")
    p.add_argument("--agent-busy-poll-us", type=int, default=50,
                   help="the agent's --busy-poll-us (default 50, its own default; 0: it sleeps at once)")
    p.add_argument("--loops", type=int, default=2,
                   help="I/O loops of Switchyard's proxy, HAProxy's nbthread, nginx's worker_processes (default 2)")
    p.add_argument("--max-connections", type=int, default=4096,
                   help="every proxy's connection limit (default 4096; HAProxy needs 2 descriptors a connection "
                   "under the hard RLIMIT_NOFILE)")
    p.add_argument("--noise-check", action="store_true",
                   help=f"add a second HAProxy ({NOISE_ROW}): its ratios to haproxy show the noise of a ratio")
    p.add_argument("--haproxy-splice", action="store_true", help="HAProxy with `option splice-auto` (default off)")
    p.add_argument("--haproxy-bufsize", type=int,
                   help="HAProxy's tune.bufsize in bytes (default HAProxy's, 16384; Switchyard's proxy holds 64 KiB "
                   "per direction, --buffer-kib)")
    p.add_argument("--proxy-args", default="", help="more arguments for `switchyard proxy`")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--switchyard", metavar="PATH", help="switchyard binary (default .build-static/release/switchyard; "
                   "not built then)")
    p.add_argument("--out", default=RESULTS, help="where proxy-latest.md and .json go (default Benchmarks/results)")
    p.add_argument("--render", metavar="JSON", help="only rewrite proxy-latest.md from a proxy-latest.json")
    opts = p.parse_args()
    global AGENT_BUSY_POLL_US
    AGENT_BUSY_POLL_US = opts.agent_busy_poll_us
    if opts.render:
        with open(opts.render) as f:
            report = json.load(f)
        report["summary"] = summarize(report["runs"])
        report["targets"] = targets(report["summary"])
        write_report(report, opts.out)
        return

    global SWITCHYARD
    if opts.switchyard:
        SWITCHYARD = os.path.abspath(opts.switchyard)
    q = opts.quick
    opts.rounds = opts.rounds or (1 if q else 5)
    opts.seconds = opts.seconds or (0.5 if q else 1.0)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.2 if q else 0.5)
    opts.proxy_args = opts.proxy_args.split()
    rows = [r for r in bench.parse_list(opts.rows) if r in ROWS] + ([NOISE_ROW] if opts.noise_check else [])
    cells = [{"kind": "echo", "size": s, "connections": c}
             for s in bench.parse_list(opts.sizes, int) for c in (bench.parse_list(opts.conns, int) or [])]
    if opts.rate_conns > 0:
        cells.append({"kind": "rate", "size": 16, "connections": opts.rate_conns})

    # Each proxied connection holds two descriptors; the client and the backend one per connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * opts.max_connections + 1024
    want = max(soft, min(hard, need) if hard != resource.RLIM_INFINITY else need)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        pass

    started = time.time()
    notes = []
    build(opts, notes)
    for b in ("pingpong", "c-echo-server"):
        if not os.access(os.path.join(BENCH_BIN, b), os.X_OK):
            sys.exit(f"missing {BENCH_BIN}/{b}: build the Benchmarks package (scripts/bench builds it)")
    rows = ensure_installed(rows, notes)
    proxy_help = ""
    if any(r in SWITCHYARD_ROWS for r in rows):
        if has_proxy(SWITCHYARD):
            proxy_help = subprocess.run([SWITCHYARD, "proxy", "--help"], capture_output=True, text=True).stdout
        else:
            msg = "`switchyard proxy` is not available; its rows were skipped (direct, HAProxy and nginx only)."
            notes.append(msg)
            log("note: " + msg)
            rows = [r for r in rows if r not in SWITCHYARD_ROWS]

    work = tempfile.mkdtemp(prefix="bench-proxy-")
    backend = Backend(work)
    runs = []
    try:
        backend.start_echo()
        if any(r in SWITCHYARD_ROWS for r in rows):
            try:
                backend.start_lb()
            except RuntimeError as e:
                log(f"  ! {e}")
                notes.append(f"The load-balancing system did not start ({e}); the Switchyard rows were skipped.")
                rows = [r for r in rows if r not in SWITCHYARD_ROWS]
        log(f"proxy: {len(cells)} cells x {len(rows)} rows x {opts.rounds} rounds; echo backend on "
            f"127.0.0.1:{backend.port}" + (f", agent on udp {','.join(backend.agent_ports)}" if backend.agent_ports
                                          else ""))
        run_rounds(rows, cells, backend, opts, work, proxy_help, runs)
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarize(runs)
    report = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": os.uname().nodename, "cpus": os.cpu_count(), "rounds": opts.rounds, "seconds": opts.seconds,
            "warmup": opts.warmup, "loops": opts.loops, "rows": rows,
            "command": " ".join(["scripts/bench-proxy.py"] + sys.argv[1:]),
            "commit": bench.git_describe(), "elapsed_s": time.time() - started, "notes": notes,
            "versions": {"haproxy": version_of([find_binary("haproxy") or "haproxy", "-v"]),
                         "nginx": version_of([find_binary("nginx") or "nginx", "-v"])},
        },
        "summary": summary, "runs": runs,
    }
    report["targets"] = targets(summary)
    write_report(report, opts.out)


def has_proxy(binary):
    """True when `binary proxy --help` documents the proxy (scripts/bench's test for a subcommand)."""
    saved = bench.SWITCHYARD
    bench.SWITCHYARD = binary
    try:
        return bench.switchyard_has(["proxy"])
    finally:
        bench.SWITCHYARD = saved


if __name__ == "__main__":
    main()

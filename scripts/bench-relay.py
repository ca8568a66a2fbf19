#!/usr/bin/env python3
"""The media relay against nginx: one 1 Mbit/s, 25 fps movie to N viewers in another process.

    scripts/bench-relay.py                      # 1, 100 and 1000 viewers, 20 s movie, both servers
    scripts/bench-relay.py --viewers 100 --seconds 10 --servers switchyard

Makes the movie with ffmpeg (H.264 at a constant 1 Mbit/s, a keyframe a second, MP2 audio), then for each viewer
count runs each server on it:
  switchyard  `switchyard relay --threads 1` (release build), viewers on /live/movie.ts: one playback, read once,
              paced by the stream's clock
  nginx       Debian's nginx (one worker), the same file over HTTP with `limit_rate` at the movie's average rate:
              what a user would otherwise deploy to send a file at its rate
The viewers (this script, one thread, epoll) open their connections at once and read as fast as they can. Reported:
delivered Mbit/s (all viewers), the share of frames delivered within 100 ms of their due time (a frame is due at
the viewer's first byte plus its presentation time since the viewer's first frame: what a player needs), server CPU
per delivered GB (utime+stime of the server process), and the server's peak RSS.
"""

import argparse
import json
import os
import re
import resource
import select
import shutil
import statistics
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWITCHYARD = os.path.join(ROOT, ".build", "release", "switchyard")
TICK = os.sysconf("SC_CLK_TCK")
RELAY_ARGS = []  # --relay-args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def make_movie(path, seconds):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-b:v", "900k", "-minrate", "900k",
                    "-maxrate", "900k", "-bufsize", "900k", "-x264-params", "nal-hrd=cbr", "-c:a", "mp2",
                    "-b:a", "96k", "-f", "mpegts", "-muxrate", "1100k", path], check=True)


def frame_schedule(path):
    """(byte position, presentation seconds) of each video frame, in file order."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=pos,pts_time",
                          "-of", "csv=p=0", path], check=True, capture_output=True, text=True).stdout
    frames = []
    for line in out.splitlines():
        parts = line.split(",")
        if len(parts) >= 2 and parts[0] not in ("", "N/A") and parts[1] not in ("", "N/A"):
            a, b = parts[0], parts[1]
            # ffprobe prints the fields in its own order: pts_time has a dot, pos does not.
            pts, pos = (float(a), int(b)) if "." in a else (float(b), int(a))
            frames.append((pos, pts))
    frames.sort()
    return frames


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Viewer:
    def __init__(self, port, path):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.sock.send(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        self.head = b""
        self.body_start = None  # bytes of the first body piece kept, to find where the viewer's stream starts
        self.first = None
        self.bytes = 0
        self.arrivals = []  # (time, body bytes so far), one per read
        self.done = False


def run_viewers(port, path, count, duration, frames, file_bytes, prefix):
    viewers = [Viewer(port, path) for _ in range(count)]
    poller = select.epoll()
    by_fd = {}
    for v in viewers:
        poller.register(v.sock.fileno(), select.EPOLLIN)
        by_fd[v.sock.fileno()] = v
    buf = bytearray(1 << 16)
    open_count = count
    deadline = time.monotonic() + duration + 30
    while open_count > 0 and time.monotonic() < deadline:
        for fd, _ in poller.poll(1.0):
            v = by_fd[fd]
            try:
                n = v.sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            now = time.monotonic()
            if n == 0:
                poller.unregister(fd)
                v.sock.close()
                v.done = True
                open_count -= 1
                continue
            data = bytes(buf[:n])
            if v.first is None:
                v.head += data
                end = v.head.find(b"\r\n\r\n")
                if end < 0:
                    continue
                data = v.head[end + 4:]
                v.first = now
                v.body_start = data[:188 * 8]
            elif len(v.body_start) < 188 * 8:
                v.body_start += data[:188 * 8 - len(v.body_start)]
            v.bytes += len(data)
            v.arrivals.append((now, v.bytes))
    return viewers, score(viewers, frames, file_bytes, prefix)


def score(viewers, frames, file_bytes, prefix):
    """Frames delivered within 100 ms of their due time, over every viewer. `prefix`: bytes the server sends before
    the file's own (the relay: the program tables, two packets, then the file from a keyframe on)."""
    on_time = total = 0
    for v in viewers:
        if v.first is None or not v.arrivals:
            continue
        start = 0
        if prefix:
            found = file_bytes.find(v.body_start[prefix:prefix + 188 * 2])
            start = max(found, 0)
        first_frame = next((i for i, f in enumerate(frames) if f[0] >= start), 0)
        base_pts = frames[first_frame][1]
        k = 0
        for i in range(first_frame, len(frames) - 1):
            need = prefix + frames[i + 1][0] - start  # bytes the viewer must have to hold all of frame i
            due = v.first + (frames[i][1] - base_pts)
            while k < len(v.arrivals) and v.arrivals[k][1] < need:
                k += 1
            total += 1
            if k < len(v.arrivals) and v.arrivals[k][0] - due <= 0.100:
                on_time += 1
    return on_time / total if total else 0.0


def run_switchyard(movie, viewers, duration, frames, file_bytes, workdir):
    db = os.path.join(workdir, "relay.sqlite")
    if not os.path.exists(db):
        subprocess.run([SWITCHYARD, "resource", "add", "--name", "movie", "--path", movie, "--db", f"sqlite:{db}"],
                       check=True, capture_output=True)
    server = subprocess.Popen([SWITCHYARD, "relay", "--port", "0", "--http-port", "0", "--db", f"sqlite:{db}",
                               "--threads", "1", "--capacity", str(max(viewers, 1000)), "--log-level", "warning"]
                              + RELAY_ARGS,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    port = int(re.search(r"http 127\.0\.0\.1:(\d+)", line).group(1))
    return measure(server, port, "/live/movie.ts", viewers, duration, frames, file_bytes, prefix=376)


def run_nginx(movie, viewers, duration, frames, file_bytes, workdir, rate):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = os.path.join(workdir, "nginx")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
error_log stderr error;
pid {prefix}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ video/mp2t ts; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {os.path.dirname(movie)};
        location / {{ limit_rate {rate}; }}
    }}
}}
""")
    server = subprocess.Popen([nginx, "-p", prefix, "-c", conf], stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    # nginx's master forks the worker that serves: measure the worker.
    worker = None
    for _ in range(100):
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        if children:
            worker = int(children[0])
            break
        time.sleep(0.05)
    return measure(server, port, "/" + os.path.basename(movie), viewers, duration, frames, file_bytes,
                   prefix=0, pid=worker or server.pid)


def measure(server, port, path, count, duration, frames, file_bytes, prefix, pid=None):
    pid = pid or server.pid
    peak = [rss_kib(pid)]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            try:
                peak[0] = max(peak[0], rss_kib(pid))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    viewers, on_time = run_viewers(port, path, count, duration, frames, file_bytes, prefix)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    stop.set()
    sampler.join()
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
    delivered = sum(v.bytes for v in viewers)
    complete = sum(1 for v in viewers if v.done and v.bytes > len(file_bytes) // 2)
    return {
        "viewers": count, "complete": complete, "seconds": round(elapsed, 2),
        "mbit_s": round(delivered * 8 / elapsed / 1e6, 1), "on_time": round(on_time, 4),
        "cpu_s": round(cpu, 2), "cpu_s_per_gb": round(cpu / (delivered / 1e9), 2) if delivered else None,
        "peak_rss_mib": round(peak[0] / 1024, 1),
    }


def main():
    global SWITCHYARD
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--viewers", default="1,100,1000", help="viewer counts (default 1,100,1000)")
    p.add_argument("--seconds", type=int, default=20, help="length of the movie (default 20)")
    p.add_argument("--servers", default="switchyard,nginx", help="switchyard,nginx")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--no-build", action="store_true", help="use the release build as it is")
    p.add_argument("--relay-args", default="", help="more arguments for `switchyard relay` (e.g. --write-interval-ms 0)")
    p.add_argument("--switchyard", default=SWITCHYARD, help="the switchyard binary (default the release build)")
    p.add_argument("--rounds", type=int, default=1,
                   help="runs of every cell, the servers alternating; the table shows medians (default 1)")
    opts = p.parse_args()
    if opts.rounds < 1:
        sys.exit("bench-relay: --rounds must be at least 1")
    RELAY_ARGS.extend(opts.relay_args.split())
    SWITCHYARD = os.path.abspath(opts.switchyard)
    if not opts.no_build and opts.switchyard != os.path.join(ROOT, ".build", "release", "switchyard"):
        opts.no_build = True  # a binary of its own is run as it is
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1000 viewers: above the usual 1024
    servers = opts.servers.split(",")
    if "switchyard" in servers and not opts.no_build:
        subprocess.run(["swift", "build", "-c", "release", "--product", "switchyard"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
    if "nginx" in servers and not (shutil.which("nginx") or os.path.exists("/usr/sbin/nginx")):
        sys.exit("bench-relay: nginx is not installed (apt-get install nginx-light)")
    work = tempfile.mkdtemp(prefix="bench-relay-")
    movie = os.path.join(work, "movie.ts")
    make_movie(movie, opts.seconds)
    with open(movie, "rb") as f:
        file_bytes = f.read()
    frames = frame_schedule(movie)
    duration = frames[-1][1] - frames[0][1]
    rate = int(len(file_bytes) / (duration + 0.04))
    log(f"movie: {len(file_bytes)} bytes, {len(frames)} frames, {duration:.2f} s, {rate * 8 / 1e6:.2f} Mbit/s")
    results = []
    for count in [int(x) for x in opts.viewers.split(",")]:
        rounds = {name: [] for name in servers}
        for _ in range(opts.rounds):
            for name in servers:
                if name == "switchyard":
                    r = run_switchyard(movie, count, duration, frames, file_bytes, work)
                else:
                    r = run_nginx(movie, count, duration, frames, file_bytes, work, rate)
                r["server"] = name
                rounds[name].append(r)
                log(f"{name:10} {count:5} viewers: {r['mbit_s']:7.1f} Mbit/s, {r['on_time'] * 100:6.2f}% on time, "
                    f"{r['cpu_s_per_gb']} CPU s/GB, peak RSS {r['peak_rss_mib']} MiB, {r['complete']}/{count} "
                    "complete")
        for name in servers:
            runs = rounds[name]
            if len(runs) == 1:
                results.append(runs[0])
                continue
            merged = dict(runs[0])
            for field in ("mbit_s", "on_time", "cpu_s", "cpu_s_per_gb", "peak_rss_mib", "seconds"):
                values = [r[field] for r in runs if r[field] is not None]
                merged[field] = statistics.median(values) if values else None
            merged["complete"] = min(r["complete"] for r in runs)
            merged["cpu_s_per_gb_runs"] = [r["cpu_s_per_gb"] for r in runs]
            results.append(merged)
    shutil.rmtree(work, ignore_errors=True)
    if opts.json:
        print(json.dumps({"movie_bytes": len(file_bytes), "results": results}))
    else:
        print("| server | viewers | delivered Mbit/s | frames on time (100 ms) | CPU s per GB | peak RSS MiB |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['server']} | {r['viewers']} | {r['mbit_s']} | {r['on_time'] * 100:.2f}% | "
                  f"{r['cpu_s_per_gb']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()

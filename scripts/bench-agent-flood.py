#!/usr/bin/env python3
"""Floods an agent with GetHost datagrams for random module ids, as the attack of issue 15 did, and measures it.

    scripts/bench-agent-flood.py [--count 20000] [--route-cache] [--switchyard PATH]

Starts `switchyard names` (a temporary SQLite file with one route, 1/2 -> 127.0.0.1:9000) and `switchyard agent`
on free ports (with `--route-cache FILE` when asked), sends COUNT GetHost datagrams for random module ids in about
0.4 s, then: the agent's peak RSS over the next 10 s, the latency of real GetHost calls for 1/2 meanwhile (and how
many got no answer within 1 s), the route cache file's size, and how long SIGTERM takes. Only 127.0.0.1 is used.
"""
import argparse, os, random, signal, socket, struct, subprocess, tempfile, time

from larsframes import field, frame


def get_host(seq, modid, cmdid):
    body = field(1, seq) + field(2, modid) + field(3, cmdid)
    return frame(4, body)


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--route-cache", action="store_true")
    parser.add_argument("--switchyard", default=".build/release/switchyard")
    args = parser.parse_args()
    directory = tempfile.mkdtemp()
    db = f"sqlite:{directory}/lb.sqlite"
    sy = args.switchyard
    subprocess.run([sy, "route", "add", "--modid", "1", "--cmdid", "2", "--ip", "127.0.0.1", "--port", "9000",
                    "--db", db], check=True, stdout=subprocess.DEVNULL)
    names_port = free_port(socket.SOCK_STREAM)
    names = subprocess.Popen([sy, "names", "--db", db, "--port", str(names_port)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    names.stdout.readline()
    ports = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    command = [sy, "agent", "--names", f"127.0.0.1:{names_port}", "--reporter", f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",
               "--ports", ",".join(map(str, ports))]
    cache = f"{directory}/routes.json"
    if args.route_cache:
        command += ["--route-cache", cache]
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    agent.stdout.readline()
    real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    real.settimeout(1.0)

    def call(seq):
        start = time.monotonic()
        real.sendto(get_host(seq, 1, 2), ("127.0.0.1", ports[(1 + 2) % 3]))
        try:
            while True:
                data, _ = real.recvfrom(65536)
                if data[:4] == struct.pack("<i", 5):
                    return time.monotonic() - start
        except socket.timeout:
            return None

    for seq in range(50):  # warm: the route arrives
        if call(seq) is not None and seq > 3:
            break
        time.sleep(0.05)
    start_rss = rss_mb(agent.pid)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.setblocking(False)
    started = time.monotonic()
    for i in range(args.count):
        modid = random.randint(1000, 1_000_000_000)
        try:
            flood.sendto(get_host(i, modid, 1), ("127.0.0.1", ports[(modid + 1) % 3]))
        except BlockingIOError:
            time.sleep(0.0005)
    sent_in = time.monotonic() - started
    peak = start_rss
    latencies = []
    lost = 0
    end = time.monotonic() + 10
    seq = 1000
    while time.monotonic() < end:
        peak = max(peak, rss_mb(agent.pid))
        latency = call(seq)
        seq += 1
        if latency is None:
            lost += 1
        else:
            latencies.append(latency)
        time.sleep(0.05)
    latencies.sort()
    worst = latencies[-1] * 1000 if latencies else float("nan")
    median = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    size = os.path.getsize(cache) if os.path.exists(cache) else 0
    term = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    try:
        agent.wait(timeout=30)
        stop = f"{time.monotonic() - term:.2f} s"
    except subprocess.TimeoutExpired:
        agent.kill()
        stop = "not within 30 s (killed)"
    print(f"{args.count} GetHost for random modules in {sent_in:.2f} s, route cache {'on' if args.route_cache else 'off'}: "
          f"RSS {start_rss:.0f} -> peak {peak:.0f} MB; real calls: median {median:.1f} ms, worst {worst:.0f} ms, "
          f"{lost} unanswered of {len(latencies) + lost}; cache file {size} bytes; SIGTERM took {stop}")
    names.terminate()
    names.wait(timeout=20)


if __name__ == "__main__":
    main()

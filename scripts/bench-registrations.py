#!/usr/bin/env python3
"""Registers many hosts with a name service (message 102) and measures it, as the attack of issue 15 did.

    scripts/bench-registrations.py [--total 100000] [--sources 100] [--switchyard PATH]

Starts `switchyard names` on a temporary SQLite file (port 0), registers TOTAL hosts spread over SOURCES source
addresses (127.0.0.1, 127.0.0.2, ...: the per-source limit counts by address), pipelined in blocks of 10,000,
while another connection asks for a route every 50 ms (1 s timeout). Prints the time of each block, the GetRoute
calls that timed out, and the CPU the service burns over 10 s afterwards with every registration held and no
traffic. Only 127.0.0.0/8 is used.
"""
import argparse, os, socket, struct, subprocess, sys, tempfile, threading, time

from larsframes import field, frame


def read_frame(sock, buffer):
    while len(buffer) < 8:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    message_id, length = struct.unpack("<ii", buffer[:8])
    while len(buffer) < 8 + length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer.extend(chunk)
    body = bytes(buffer[8:8 + length])
    del buffer[:8 + length]
    return message_id, body


def ok_field(body):
    # RegisterHostResponse: field 3 (bool ok) is tag 0x18.
    i = 0
    while i < len(body):
        key = body[i]; i += 1
        if key == 0x18:
            return body[i] == 1
        if key & 7 == 0:
            while body[i] & 0x80: i += 1
            i += 1
        elif key & 7 == 2:
            n = body[i]; i += 1 + n
        else:
            return False
    return False


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--switchyard", default=".build/release/switchyard")
    args = parser.parse_args()
    directory = tempfile.mkdtemp()
    db = f"sqlite:{directory}/names.sqlite"
    subprocess.run([args.switchyard, "route", "list", "--db", db], check=True, stdout=subprocess.DEVNULL)
    names = subprocess.Popen([args.switchyard, "names", "--db", db, "--port", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    first = names.stdout.readline()
    port = int(first.split(" on ")[1].split()[0].rsplit(":", 1)[1])
    print(f"names pid {names.pid} on port {port}", flush=True)

    stop = threading.Event()
    calls = {"sent": 0, "timeouts": 0, "worst": 0.0}

    def prober():
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(1.0)
        buffer = bytearray()
        while not stop.is_set():
            body = field(1, 424242) + field(2, 1)
            start = time.monotonic()
            sock.sendall(frame(1, body))
            calls["sent"] += 1
            try:
                while True:
                    got = read_frame(sock, buffer)
                    if got is None or got[0] == 2:
                        break
                calls["worst"] = max(calls["worst"], time.monotonic() - start)
            except socket.timeout:
                calls["timeouts"] += 1
                sock.close()
                sock = socket.create_connection(("127.0.0.1", port))
                sock.settimeout(1.0)
                buffer = bytearray()
            time.sleep(0.05)
        sock.close()

    probe = threading.Thread(target=prober)
    probe.start()
    per_source = args.total // args.sources
    connections = []
    for s in range(args.sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((f"127.0.{s // 250}.{s % 250 + 1}", 0))
        sock.connect(("127.0.0.1", port))
        connections.append(sock)
    registered = refused = 0
    started = time.monotonic()
    block = 10_000
    n = 0
    while n < args.total:
        block_start = time.monotonic()
        end = min(n + block, args.total)
        jobs = {}
        for i in range(n, end):
            source = i // per_source
            ip = 0x0A000000 + i
            body = field(1, 7000 + i // 1000) + field(2, 1) + field(3, ip) + field(4, 8000) + field(5, 600_000)
            jobs.setdefault(source, []).append(frame(102, body))
        for source, frames in jobs.items():
            connections[source].sendall(b"".join(frames))
        for source, frames in jobs.items():
            buffer = bytearray()
            got = 0
            while got < len(frames):
                message = read_frame(connections[source], buffer)
                if message is None:
                    break
                if message[0] == 103:
                    got += 1
                    if ok_field(message[1]):
                        registered += 1
                    else:
                        refused += 1
        n = end
        print(f"  {n:>7} registered+refused: block {time.monotonic() - block_start:6.2f} s", flush=True)
    total = time.monotonic() - started
    stop.set()
    probe.join()
    print(f"{registered} registered, {refused} refused in {total:.1f} s; GetRoute during it: {calls['sent']} calls, "
          f"{calls['timeouts']} timed out, slowest answered {calls['worst'] * 1000:.0f} ms", flush=True)
    before = cpu_seconds(names.pid)
    time.sleep(10)
    idle = (cpu_seconds(names.pid) - before) / 10
    print(f"idle with {registered} held: {idle * 100:.1f}% of a core", flush=True)
    rss = [l for l in open(f"/proc/{names.pid}/status") if l.startswith("VmRSS")][0].split()[1]
    print(f"RSS {int(rss) // 1024} MiB", flush=True)
    for sock in connections:
        sock.close()
    names.terminate()
    names.wait(timeout=20)


if __name__ == "__main__":
    main()

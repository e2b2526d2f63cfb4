#!/usr/bin/env python3
"""Soak test: the exporter for MINUTES against the simulator with a fault every 20 s and,
with rotel available, an OTLP collector that goes away for 40 s every 100 s.

    python3 scripts/soak.py                      # 25 minutes, target/release/loxone-exporter
    python3 scripts/soak.py --minutes 60 --bin path/to/loxone-exporter

What runs (all on loopback, free ports, every process ended on exit):
  - `loxone-exporter simulate` at 2000 events/s (tick 10 ms) as the Miniserver;
  - rotel (`LOXEXP_ROTEL`, set by sourcing .test-env/env) as the OTLP/gRPC collector, killed
    and restarted in turns; without it the exporter runs without OTLP export;
  - the exporter, scraped every 0.5 s on /metrics (and /healthz every 2 s), while the
    simulator cycles through reboot, close 4007, token expiry, four kinds of malformed
    frames, a structure change, out-of-service, a hung and a deaf connection.

Every 30 s it prints the exporter's RSS, open file descriptors and threads. It fails (exit 1)
when the exporter dies, a scrape after the first successful one is not a 200, /metrics ends
without value series, the RSS at the end exceeds the RSS at a third of the run by more than
10 %, or the descriptors at the end exceed those at a third of the run by more than 10.
Not part of scripts/test.sh: it takes as long as it is told to.
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

FAULTS = [
    "reboot?secs=2",
    "close?code=4007",
    "expire-tokens",
    "malformed?kind=truncated-value-table",
    "malformed?kind=garbage-header",
    "malformed?kind=oversized-header",
    "change-structure",
    "out-of-service",
    "malformed?kind=payload-without-header",
    "hang",
    "deaf",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, path, post=False):
    """(status, body); status None when the request did not get an answer."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method="POST" if post else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e).encode()


def usage(pid):
    """(RSS in MB, open descriptors, threads) of a live process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    return (
        rss_kb / 1024,
        len(os.listdir(f"/proc/{pid}/fd")),
        len(os.listdir(f"/proc/{pid}/task")),
    )


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=25.0)
    ap.add_argument(
        "--bin", default=os.path.join(root, "target/release/loxone-exporter")
    )
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"soak: no exporter binary at {args.bin} (cargo build --release)")
    rotel_bin = os.environ.get("LOXEXP_ROTEL")
    if rotel_bin and not os.access(rotel_bin, os.X_OK):
        rotel_bin = None
    work = tempfile.mkdtemp(prefix="loxone-soak-")
    sim_port, exp_port, grpc_port, http_port = (free_port() for _ in range(4))
    password = "soak-password"
    procs = {}

    def start_rotel():
        procs["rotel"] = subprocess.Popen(
            [rotel_bin, "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
             "--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "blackhole"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    otlp = ""
    if rotel_bin:
        start_rotel()
        otlp = (
            "opentelemetry:\n  enabled: true\n"
            f'  endpoint: "http://127.0.0.1:{grpc_port}"\n'
            "  protocol: grpc\n  interval_seconds: 10\n  timeout_seconds: 5\n"
        )
    else:
        print("soak: LOXEXP_ROTEL not set: no OTLP export (source .test-env/env)")
    with open(os.path.join(work, "config.yml"), "w") as f:
        f.write(
            "miniservers:\n  - name: soak\n    host: \"127.0.0.1\"\n"
            f"    port: {sim_port}\n    username: \"admin\"\n    password: \"{password}\"\n"
            f"listen_address: \"127.0.0.1\"\nlisten_port: {exp_port}\n" + otlp
        )
    procs["sim"] = subprocess.Popen(
        [args.bin, "simulate", "--listen", f"127.0.0.1:{sim_port}", "--rate", "2000",
         "--tick", "10ms", "--password", password],
        stdout=open(os.path.join(work, "simulator.log"), "w"), stderr=subprocess.STDOUT,
    )
    time.sleep(1)
    exporter = procs["exporter"] = subprocess.Popen(
        [args.bin, "-c", os.path.join(work, "config.yml")],
        stdout=open(os.path.join(work, "exporter.log"), "w"), stderr=subprocess.STDOUT,
    )
    problems = []
    samples = []
    try:
        t0 = time.monotonic()
        next_fault, next_sample, fault_no = t0 + 20, t0 + 30, 0
        rotel_back_at = None
        ready, scrapes, bad = False, 0, 0
        while time.monotonic() - t0 < args.minutes * 60:
            if exporter.poll() is not None:
                problems.append(f"the exporter exited with {exporter.returncode}")
                break
            status, _ = request(exp_port, "/metrics")
            scrapes += 1
            if status == 200:
                ready = True
            elif ready:
                bad += 1
            if scrapes % 4 == 0:
                request(exp_port, "/healthz")
            now = time.monotonic()
            if now >= next_fault:
                fault = FAULTS[fault_no % len(FAULTS)]
                fault_no += 1
                status, _ = request(sim_port, "/sim/" + fault, post=True)
                if status != 200:
                    problems.append(f"the simulator refused the fault {fault}: {status}")
                if rotel_bin and fault_no % 5 == 0 and rotel_back_at is None:
                    procs["rotel"].kill()
                    procs["rotel"].wait()
                    rotel_back_at = now + 40
                next_fault = now + 20
            if rotel_back_at is not None and now >= rotel_back_at:
                start_rotel()
                rotel_back_at = None
            if now >= next_sample:
                rss, fds, threads = usage(exporter.pid)
                samples.append((now - t0, rss, fds))
                print(
                    f"t={now - t0:5.0f} s  RSS {rss:5.1f} MB  fds {fds:3d}  threads {threads:2d}"
                    f"  scrapes {scrapes}  faults {fault_no}",
                    flush=True,
                )
                next_sample = now + 30
            time.sleep(0.5)
        if exporter.poll() is None:
            status, body = request(exp_port, "/metrics")
            series = sum(1 for l in body.split(b"\n") if l.startswith(b"loxone_control_value{"))
            print(f"end: /metrics {status}, {series} value series, {bad} failed scrapes")
            if status != 200 or series == 0:
                problems.append(f"/metrics at the end: status {status}, {series} value series")
        if bad:
            problems.append(f"{bad} scrapes after the first successful one were not a 200")
        if len(samples) >= 3:
            third = next(s for s in samples if s[0] >= samples[-1][0] / 3)
            if samples[-1][1] > third[1] * 1.10:
                problems.append(
                    f"RSS grew from {third[1]:.1f} MB at {third[0]:.0f} s to {samples[-1][1]:.1f} MB"
                )
            if samples[-1][2] > third[2] + 10:
                problems.append(f"descriptors grew from {third[2]} to {samples[-1][2]}")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"logs in {work}")
    if problems:
        for p in problems:
            print("FAIL:", p)
        sys.exit(1)
    print("soak: ok")


if __name__ == "__main__":
    main()

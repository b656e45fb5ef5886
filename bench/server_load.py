#!/usr/bin/env python3
"""Load test of the real aegis-server release binary (issue 6 targets).

Measures, three rounds each, quoting medians:
  1. GET /health requests/s against a bare actix-web hello server, side by side, with
     the default logging (a request line per request at `info`, to a file) and with
     AEGIS_LOG=warn; the issue 12 target is >= 0.7x the bare server with the default;
  2. POST /api/workflows/full_pipeline/run?wait=true at 32 connections against an
     instant mock QA service, and that every run answered 200 is stored;
  3. GET /api/history?limit=10 p99 latency at 1 connection with 1,000,000 stored runs;
  4. idle RSS, and process start to the first 200 from /health/ready.

Needs wrk (installed from Debian by bench/server-load.sh when missing). Traffic goes
to 127.0.0.1 only; every run is bounded in time. ONLY=health runs part 1 alone.
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
RELEASE = os.path.join(TARGET, "release")
DURATION = os.environ.get("DURATION", "10s")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
ONLY = os.environ.get("ONLY", "")


# The aegis-server binary to start; None is this tree's release build
# (bench/pipeline_compare.py points it at another build).
RELEASE_SERVER = None


def start_mock():
    """The instant mock QA service (`aegis-api` example `mock_qa`); its first line is its URL."""
    return subprocess.Popen([os.path.join(RELEASE, "examples", "mock_qa")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, timeout=30.0):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.002)
    raise RuntimeError(f"{url} never answered 200")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wrk(url, connections, threads, script=None, latency=False):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{DURATION}"]
    if latency:
        cmd.append("--latency")
    if script:
        cmd += ["-s", script]
    cmd.append(url)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99_ms = None
    if p99:
        value, unit = float(p99.group(1)), p99.group(2)
        p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {"rps": rps, "total": total, "non2xx": int(non2xx.group(1)) if non2xx else 0, "p99_ms": p99_ms}


class Server:
    """An aegis-server process on a fresh port with its own config and data."""

    def __init__(self, workdir, config_text, name, log="warn"):
        self.port = free_port()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.config = os.path.join(self.dir, ".aegis.yaml")
        self.log_path = os.path.join(self.dir, "server.log")
        with open(self.config, "w") as handle:
            handle.write(config_text)
        env = dict(os.environ)
        env.pop("AEGIS_LOG", None)
        if log is not None:
            env["AEGIS_LOG"] = log
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [RELEASE_SERVER or os.path.join(RELEASE, "aegis-server"), "--config", self.config,
             "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"),
        )
        wait_ready(f"http://127.0.0.1:{self.port}/health/ready")
        self.ready_ms = (time.perf_counter() - started) * 1000
        self.base = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def config_for(mock_url, db_path, data_dir):
    return f"""
history_db_path: "{db_path}"
data_dir: "{data_dir}"
server: {{max_concurrent_runs: 64, max_queued_runs: 10000}}
services:
  qaagent: {{url: "{mock_url}"}}
  bugalizer: {{url: "{mock_url}"}}
workflows:
  full_pipeline:
    steps:
      - {{type: discover, service: qaagent}}
      - {{type: test, service: qaagent}}
      - {{type: submit_bugs, service: bugalizer, condition: has_failures}}
      - {{type: verify, service: qaagent, condition: has_failures}}
      - {{type: report, condition: always}}
"""


def main():
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (bench/server-load.sh installs it)")
    work = tempfile.mkdtemp(prefix="aegis-load-")
    results = {}
    mock = start_mock()
    mock_url = mock.stdout.readline().strip()
    try:
        # 1 and 4: /health against a bare actix server, with the default logging and
        # with AEGIS_LOG=warn, rounds interleaved; idle RSS; start to ready.
        server = Server(work, config_for(mock_url, os.path.join(work, "h.db"), os.path.join(work, "data")),
                        "health", log=None)
        quiet = Server(work, config_for(mock_url, os.path.join(work, "q.db"), os.path.join(work, "qdata")),
                       "health-warn")
        time.sleep(1)
        results["idle_rss_mib"] = rss_kib(server.proc.pid) / 1024
        ready = [server.ready_ms]
        hello_port = free_port()
        hello = subprocess.Popen([os.path.join(RELEASE, "examples", "bare_hello"), str(hello_port)])
        wait_ready(f"http://127.0.0.1:{hello_port}/health")
        aegis_rps, quiet_rps, hello_rps = [], [], []
        for _ in range(ROUNDS):
            hello_rps.append(wrk(f"http://127.0.0.1:{hello_port}/health", 32, 2)["rps"])
            aegis_rps.append(wrk(f"{server.base}/health", 32, 2)["rps"])
            quiet_rps.append(wrk(f"{quiet.base}/health", 32, 2)["rps"])
        hello.terminate()
        hello.wait()
        server.stop()
        quiet.stop()
        with open(server.log_path, errors="replace") as log:
            lines = log.readlines()
        request_lines = sum(1 for line in lines if "aegis::request" in line)
        dropped = sum(int(m.group(1)) for m in (re.search(r"dropped (\d+) log lines", l) for l in lines) if m)
        for i in range(ROUNDS - 1):
            again = Server(work, config_for(mock_url, ":memory:", os.path.join(work, f"d{i}")), f"ready{i}")
            ready.append(again.ready_ms)
            again.stop()
        results["health"] = {
            "bare_actix_rps": hello_rps,
            "aegis_default_logging_rps": aegis_rps,
            "aegis_warn_rps": quiet_rps,
            "median_ratio_default_logging": statistics.median(aegis_rps) / statistics.median(hello_rps),
            "median_ratio_warn": statistics.median(quiet_rps) / statistics.median(hello_rps),
            # Each round's ratio to the bare server measured just before it, which is
            # steadier than the ratio of medians on a machine with other load.
            "median_paired_ratio_default_logging": statistics.median(a / h for a, h in zip(aegis_rps, hello_rps)),
            "request_lines_written": request_lines,
            "request_lines_dropped": dropped,
            "log_bytes": os.path.getsize(server.log_path),
        }
        results["start_to_ready_ms"] = ready
        print(json.dumps(results), flush=True)
        if ONLY == "health":
            return

        # 2: full_pipeline?wait=true at 32 connections; every answered run stored.
        runs = []
        script = os.path.join(work, "post.lua")
        with open(script, "w") as handle:
            handle.write('wrk.method = "POST"\n')
        for i in range(ROUNDS):
            db = os.path.join(work, f"runs{i}.db")
            server = Server(work, config_for(mock_url, db, os.path.join(work, f"rd{i}")), f"runs{i}")
            out = wrk(f"{server.base}/api/workflows/full_pipeline/run?wait=true", 32, 2, script)
            server.stop()
            with sqlite3.connect(db) as conn:
                stored = conn.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()[0]
            answered = out["total"] - out["non2xx"]
            runs.append({"runs_per_s": out["rps"], "answered_200": answered, "stored_succeeded": stored,
                         "non2xx": out["non2xx"]})
        results["full_pipeline_wait"] = {"rounds": runs,
                                         "median_runs_per_s": statistics.median(r["runs_per_s"] for r in runs),
                                         "all_answered_stored": all(r["stored_succeeded"] >= r["answered_200"] for r in runs)}

        # 3: /api/history?limit=10 with 1,000,000 stored runs, 1 connection.
        big = os.path.join(TARGET, "aegis-load-1m.db")
        if not os.path.exists(big):
            subprocess.run([os.path.join(RELEASE, "examples", "seed_runs"), big, "1000000"], check=True)
        server = Server(work, config_for(mock_url, big, os.path.join(work, "bigdata")), "history")
        p99 = [wrk(f"{server.base}/api/history?limit=10", 1, 1, latency=True)["p99_ms"] for _ in range(ROUNDS)]
        server.stop()
        results["history_1m_p99_ms"] = {"rounds": p99, "median": statistics.median(p99)}
    finally:
        mock.stdin.close()
        mock.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

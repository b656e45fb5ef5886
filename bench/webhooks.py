#!/usr/bin/env python3
"""Webhook delivery benchmark of the real aegis-server release binary (issue 13).

Side by side in one sitting, alternating round by round, each round on a fresh SQLite
file: `POST /api/workflows/full_pipeline/run?wait=true` at 32 connections with no
webhook, and with a `"*"` webhook to a fast local receiver (a second instant mock,
`aegis-api` example `mock_qa`, answering 200). Quotes the median runs/s of each and
their ratio (target >= 0.9), then, for the webhook rounds, from the delivery log in
the SQLite file: deliveries/s (delivered rows over the span from the first to the last
attempt, target >= 2,000/s), and event-to-receiver latency p50/p99 (an event's commit
time to the end of its delivering attempt), and how long the outbox took to drain
after the load stopped. A last round submits runs at a steady PACED_RATE per second
(default 50, no wait) for PACED_SECONDS (default 10), far below saturation, for the
latency a team sees in normal use.

    cargo build --release -p aegis-server && cargo build --release -p aegis-api --example mock_qa
    python3 bench/webhooks.py            # ROUNDS (default 3), DURATION (wrk -d, default 10s)

Needs wrk (bench/server-load.sh installs it from Debian). Traffic stays on 127.0.0.1.
"""

import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_load  # noqa: E402  (shares the wrk, server and config helpers)


def pending(base):
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("aegis_webhook_outbox_pending "):
                return int(float(line.split()[1]))
    return 0


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def measure(work, mock_url, hook_url, name):
    db = os.path.join(work, f"{name}.db")
    config = server_load.config_for(mock_url, db, os.path.join(work, name + "-data"))
    if hook_url:
        config += f'webhooks:\n  - {{url: "{hook_url}/api/v1/reports", events: ["*"]}}\n'
    server = server_load.Server(work, config, name)
    script = os.path.join(work, "post.lua")
    with open(script, "w") as handle:
        handle.write('wrk.method = "POST"\n')
    result = {}
    try:
        out = server_load.wrk(f"{server.base}/api/workflows/full_pipeline/run?wait=true", 32, 2, script)
        result["runs_per_s"] = out["rps"]
        result["non2xx"] = out["non2xx"]
        if hook_url:
            stopped = time.perf_counter()
            result["pending_at_end"] = pending(server.base)
            while pending(server.base) > 0 and time.perf_counter() - stopped < 120:
                time.sleep(0.05)
            result["drain_s"] = round(time.perf_counter() - stopped, 3)
    finally:
        server.stop()
    if hook_url:
        result.update(delivery_stats(db))
    return result


def paced(work, mock_url, hook_url, rate, seconds):
    """Runs submitted at a steady `rate` per second (no wait), well below what the
    machine can do: the event-to-receiver latency a team sees in normal use."""
    db = os.path.join(work, "paced.db")
    config = server_load.config_for(mock_url, db, os.path.join(work, "paced-data"))
    config += f'webhooks:\n  - {{url: "{hook_url}/api/v1/reports", events: ["*"]}}\n'
    server = server_load.Server(work, config, "paced")
    url = f"{server.base}/api/workflows/full_pipeline/run"
    submitted = 0
    try:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            due = start + submitted / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            request = urllib.request.Request(url, data=b"", method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            submitted += 1
        stopped = time.perf_counter()
        while pending(server.base) > 0 and time.perf_counter() - stopped < 120:
            time.sleep(0.05)
        # The last runs may still be running: let their events be delivered too.
        time.sleep(1)
        while pending(server.base) > 0 and time.perf_counter() - stopped < 120:
            time.sleep(0.05)
    finally:
        server.stop()
    result = {"rate": rate, "runs": submitted}
    result.update(delivery_stats(db))
    return result


def delivery_stats(db):
    """Deliveries/s and event-to-receiver latency from a round's delivery log."""
    result = {}
    with sqlite3.connect(db) as conn:
        first, last, delivered = conn.execute(
            "SELECT MIN(a.at), MAX(a.at), COUNT(*) FROM deliveries d "
            "JOIN delivery_attempts a ON a.delivery = d.seq WHERE d.status = 'delivered'"
        ).fetchone()
        latencies = [
            row[0] / 1e6
            for row in conn.execute(
                "SELECT a.at + a.duration_ms * 1000000 - e.time FROM deliveries d "
                "JOIN delivery_attempts a ON a.delivery = d.seq "
                "JOIN events e ON e.run_id = d.run_id AND e.id = d.event_id "
                "WHERE d.status = 'delivered'"
            )
        ]
        result["events"] = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        result["deliveries"] = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        result["delivered"] = delivered
        result["attempts"] = conn.execute("SELECT COUNT(*) FROM delivery_attempts").fetchone()[0]
    span = max((last - first) / 1e9, 1e-9) if delivered else None
    result["deliveries_per_s"] = round(delivered / span, 1) if span else None
    result["latency_ms_p50"] = round(percentile(latencies, 50), 2) if latencies else None
    result["latency_ms_p99"] = round(percentile(latencies, 99), 2) if latencies else None
    return result


def main():
    work = tempfile.mkdtemp(prefix="aegis-webhooks-")
    mock = server_load.start_mock()
    mock_url = mock.stdout.readline().strip()
    hooks = server_load.start_mock()
    hook_url = hooks.stdout.readline().strip()
    rounds = {"none": [], "star": []}
    rate = float(os.environ.get("PACED_RATE", "50"))
    try:
        for i in range(server_load.ROUNDS):
            for label, url in (("none", None), ("star", hook_url)):
                result = measure(work, mock_url, url, f"{label}{i}")
                rounds[label].append(result)
                print(label, json.dumps(result), flush=True)
        steady = paced(work, mock_url, hook_url, rate, float(os.environ.get("PACED_SECONDS", "10")))
        print("paced", json.dumps(steady), flush=True)
    finally:
        for process in (mock, hooks):
            process.stdin.close()
            process.wait(timeout=10)
        # Each round leaves a database of some 100 MB: never keep them.
        shutil.rmtree(work, ignore_errors=True)
    none = statistics.median(r["runs_per_s"] for r in rounds["none"])
    star = statistics.median(r["runs_per_s"] for r in rounds["star"])
    summary = {
        "runs_per_s_no_webhook": none,
        "runs_per_s_star_webhook": star,
        "ratio": round(star / none, 3),
        "paired_ratios": [round(s["runs_per_s"] / n["runs_per_s"], 3) for n, s in zip(rounds["none"], rounds["star"])],
        "deliveries_per_s": statistics.median(r["deliveries_per_s"] for r in rounds["star"]),
        "latency_ms_p50": statistics.median(r["latency_ms_p50"] for r in rounds["star"]),
        "latency_ms_p99": statistics.median(r["latency_ms_p99"] for r in rounds["star"]),
        "every_event_delivered": all(r["delivered"] == r["events"] == r["deliveries"] for r in rounds["star"]),
        "paced": steady,
        "rounds": rounds,
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

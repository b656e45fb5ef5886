#!/usr/bin/env python3
"""Side-by-side full_pipeline throughput of two aegis-server release binaries.

`POST /api/workflows/full_pipeline/run?wait=true` at 32 connections against the
instant mock (`aegis-api` example `mock_qa`), alternating the two binaries round by
round in one sitting so both see the same machine, each round on a fresh SQLite
file. Quotes each binary's median runs/s over the rounds and checks that every run
answered 200 is stored `succeeded`.

    BASE_BIN=/path/to/old/aegis-server python3 bench/pipeline_compare.py

NEW_BIN defaults to this tree's target/release/aegis-server; ROUNDS (default 3)
and DURATION (wrk's -d, default 10s) as in bench/server_load.py.
"""

import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_load  # noqa: E402  (shares the wrk, server and config helpers)


def measure(binary, work, mock_url, name):
    db = os.path.join(work, f"{name}.db")
    server_load.RELEASE_SERVER = binary
    server = server_load.Server(work, server_load.config_for(mock_url, db, os.path.join(work, name + "-data")), name)
    script = os.path.join(work, "post.lua")
    with open(script, "w") as handle:
        handle.write('wrk.method = "POST"\n')
    try:
        out = server_load.wrk(f"{server.base}/api/workflows/full_pipeline/run?wait=true", 32, 2, script)
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM runs WHERE status = 'succeeded'").fetchone()[0]
    answered = out["total"] - out["non2xx"]
    return {"runs_per_s": out["rps"], "answered_200": answered, "stored_succeeded": stored}


def main():
    base = os.environ.get("BASE_BIN")
    new = os.environ.get("NEW_BIN", os.path.join(server_load.RELEASE, "aegis-server"))
    if not base:
        sys.exit("BASE_BIN must name the aegis-server binary to compare with")
    work = tempfile.mkdtemp(prefix="aegis-compare-")
    mock = server_load.start_mock()
    mock_url = mock.stdout.readline().strip()
    rounds = {"base": [], "new": []}
    try:
        for i in range(server_load.ROUNDS):
            for label, binary in (("base", base), ("new", new)):
                result = measure(binary, work, mock_url, f"{label}{i}")
                rounds[label].append(result)
                print(label, json.dumps(result), flush=True)
    finally:
        mock.stdin.close()
        mock.wait(timeout=10)
        # Each round leaves a database of some 100 MB: never keep them.
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        label: {
            "median_runs_per_s": statistics.median(r["runs_per_s"] for r in results),
            "all_answered_stored": all(r["stored_succeeded"] >= r["answered_200"] for r in results),
            "rounds": results,
        }
        for label, results in rounds.items()
    }
    summary["new_over_base"] = summary["new"]["median_runs_per_s"] / summary["base"]["median_runs_per_s"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

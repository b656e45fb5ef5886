#!/usr/bin/env python3
"""A tiny test suite for the `demo` workflow of .aegis.yaml.example.

Runs three checks against this machine and writes a JUnit XML report to the path given
as the first argument. One check fails on purpose, so the demo shows a failure flowing
into the review gate. Exits 1 when any check fails, as test runners do.
"""

import os
import platform
import sys
import time
from xml.sax.saxutils import escape, quoteattr


def check_python_version():
    assert sys.version_info >= (3, 8), "Python 3.8 or newer is required"


def check_temp_dir_writable():
    import tempfile

    with tempfile.NamedTemporaryFile() as handle:
        handle.write(b"aegis")


def check_checkout_price():
    # The deliberate failure: a rounding bug the reviewer gets to triage.
    price = round(19.99 * 3, 2)
    assert price == 59.99, f"expected checkout total 59.99, got {price}"
    raise AssertionError("discount not applied: expected 53.99, got 59.97")


CHECKS = [check_python_version, check_temp_dir_writable, check_checkout_price]


def main():
    if len(sys.argv) != 2:
        print("usage: demo_tests.py REPORT.xml", file=sys.stderr)
        return 2
    report = sys.argv[1]
    cases = []
    failures = 0
    for check in CHECKS:
        start = time.perf_counter()
        error = None
        try:
            check()
        except AssertionError as exc:
            error = str(exc) or "assertion failed"
        elapsed = time.perf_counter() - start
        status = "FAIL" if error else "ok"
        print(f"{status:4} {check.__name__} ({elapsed * 1000:.1f} ms)")
        cases.append((check.__name__, elapsed, error))
        failures += error is not None

    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="demo" tests="{len(cases)}" failures="{failures}" hostname={quoteattr(platform.node())}>',
    ]
    for name, elapsed, error in cases:
        lines.append(f'  <testcase classname="demo" name="{name}" time="{elapsed:.4f}">')
        if error:
            lines.append(f"    <failure message={quoteattr(error)}>{escape(error)}</failure>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    os.makedirs(os.path.dirname(os.path.abspath(report)), exist_ok=True)
    with open(report, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"{len(cases)} tests, {failures} failed; report written to {report}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

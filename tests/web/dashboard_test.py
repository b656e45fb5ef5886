#!/usr/bin/env python3
"""The dashboard in a real headless Chromium, against the real aegis-server.

Started by the black-box test `dashboard::browser_suite_*` (tests/tests/blackbox), which
passes the server binary as AEGIS_SERVER_BIN; `scripts/browser-setup.sh` installs Debian's
chromium and nginx and the `playwright` package this script drives. Playwright launches the
system Chromium (`/usr/bin/chromium`) and never downloads a browser.

Every test records every request the browser makes and fails on a request to another
origin, a failed request, an unexpected error status, a console error or a page error.
Waits have generous deadlines (the machine is shared); nothing asserts on timing.

Run one test: `python tests/web/dashboard_test.py DashboardTest.test_phone_viewport`.
Set AEGIS_SCREENSHOTS=DIR to write the README's screenshots there.
"""

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("AEGIS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: a deadline for things that must happen, not a measure of speed.
WAIT_MS = 45_000
READY_S = 60
BUDGET_BYTES = 150 * 1024


def wait_in_page(page, script, timeout_ms=30_000):
    """Polls `script` (an expression or a function) through `page.evaluate` until it
    is true. `page.wait_for_function` would compile the predicate inside the page with
    `eval` whenever its first check is false, which the dashboard's own
    Content-Security-Policy (`script-src 'self'`) refuses."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not page.evaluate(script):
        if time.monotonic() > deadline:
            raise AssertionError(f"never true in the page after {timeout_ms} ms: {script}")
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(method, url, body=None, key=None):
    """A request to the server outside the browser; returns (status, parsed body)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        return err.code, json.loads(text) if text else None


def wait_until(check, what, timeout=READY_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Mock:
    """A local QA service: GET /health answers 200."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b'{"status":"ok"}'
                self.send_response(200 if self.path.startswith("/health") else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Server:
    """The real aegis-server in `workdir` on `port`, killed on stop."""

    def __init__(self, workdir, port, env=None, base_path=""):
        self.workdir = Path(workdir)
        self.port = port
        self.base_path = base_path
        self.env = {"PATH": os.environ.get("PATH", ""), "AEGIS_PORT": str(port), **(env or {})}
        self.proc = None
        self.runs = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def start(self):
        binary = os.environ["AEGIS_SERVER_BIN"]
        self.runs += 1
        log = open(self.workdir / f"server-{self.runs}.log", "w")
        self.proc = subprocess.Popen(
            [binary, "--config", ".aegis.yaml", "--port", str(self.port)],
            cwd=self.workdir, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
        log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"aegis-server exited: {self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=5) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, "aegis-server to be ready")
        return self

    def stop(self, sig=signal.SIGKILL):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None

    def log(self):
        return "\n".join(p.read_text() for p in sorted(self.workdir.glob("server-*.log")))


def config(mock_port, base_path="", auth=""):
    return f"""data_dir: ./data
history_db_path: ./history.db
server:
  base_path: "{base_path}"
  shutdown_grace: 1
{auth}
services:
  qa: {{name: "QA mock", url: "http://127.0.0.1:{mock_port}"}}
  gone: {{name: "Gone service", url: "http://127.0.0.1:9"}}
workflows:
  quick:
    name: Quick check
    description: One HTTP call and a report
    steps:
      - {{id: ping, type: http, service: qa, path: /health}}
      - {{id: report, type: report}}
  gated:
    name: Gated
    description: Waits for a person between two batches
    steps:
      - {{id: left, type: http, service: qa, path: /health, parallel: true}}
      - {{id: right, type: http, service: qa, path: /health, parallel: true}}
      - {{id: review, type: gate, artifact: left, message: "Check the smoke results"}}
      - {{id: after, type: http, service: qa, path: /health}}
      - {{id: report, type: report, condition: always}}
  flaky:
    name: Flaky
    steps:
      - {{id: down, type: http, service: gone, path: /health, retries: 1, retry_delay: 0.1}}
      - {{id: cleanup, type: report, condition: on_failure}}
      - {{id: never, type: report}}
"""


class DashboardTest(unittest.TestCase):
    """Each test: its own folder, server, mock service and browser profile."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp(prefix="aegis-web-"))
        self.mock = Mock()
        self.servers = []
        self.nginx = None
        self.requests = []
        self.problems = []
        # Error statuses or failures a test expects (a 401 before the key, say).
        self.allowed_statuses = set()
        self.allow_failed_requests = False
        self.origin = None
        self.pw = sync_playwright().start()
        self.browser = None

    def tearDown(self):
        try:
            if self.browser:
                self.browser.close()
        finally:
            self.pw.stop()
            for server in self.servers:
                server.stop()
            if self.nginx:
                self.nginx.terminate()
                self.nginx.wait(timeout=30)
            self.mock.stop()
            if not os.environ.get("AEGIS_KEEP_TMP"):
                shutil.rmtree(self.tmp, ignore_errors=True)

    # --- Helpers -----------------------------------------------------------------

    def server(self, yaml=None, env=None, base_path="", port=None):
        workdir = self.tmp
        (workdir / ".aegis.yaml").write_text(yaml or config(self.mock.port, base_path))
        server = Server(workdir, port or free_port(), env, base_path)
        self.servers.append(server)
        return server.start()

    def open_browser(self, origin, width=1200, height=900):
        """A fresh Chromium profile that records every request, failure and error."""
        self.origin = origin
        profile = self.tmp / f"profile-{width}"
        self.browser = self.pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height}, service_workers="block")
        self.browser.set_default_timeout(WAIT_MS)
        self.browser.on("request", self._on_request)
        self.browser.on("requestfailed", self._on_failed)
        self.browser.on("response", self._on_response)
        page = self.browser.pages[0] if self.browser.pages else self.browser.new_page()
        page.on("console", self._on_console)
        page.on("pageerror", lambda err: self.problems.append(f"page error: {err}"))
        return page

    def _on_request(self, request):
        self.requests.append(request)

    def _on_failed(self, request):
        failure = request.failure or ""
        # Leaving a page aborts what it still had open (its event stream, a refresh in
        # flight); the browser cancelled those, the server did not fail them.
        if "ERR_ABORTED" in failure:
            return
        if not self.allow_failed_requests:
            self.problems.append(f"request failed: {request.method} {request.url}: {failure}")

    def _on_response(self, response):
        if response.status >= 400 and response.status not in self.allowed_statuses:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _on_console(self, message):
        if message.type != "error":
            return
        text = message.text
        if any(f"status of {s}" in text for s in self.allowed_statuses):
            return
        if self.allow_failed_requests and any(
                e in text for e in ("ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED_ENCODING",
                                    "ERR_EMPTY_RESPONSE", "ERR_CONNECTION_RESET")):
            return
        self.problems.append(f"console error: {text}")

    def assert_clean(self):
        """No request left the origin; no failure, error status or console error."""
        self.assertTrue(self.requests, "the browser made no request")
        expected = urllib.parse.urlsplit(self.origin)
        foreign = [r.url for r in self.requests
                   if not r.url.startswith(("data:", "blob:"))
                   and urllib.parse.urlsplit(r.url)[:2] != expected[:2]]
        self.assertEqual(foreign, [], "requests to another origin")
        if expected.path not in ("", "/"):
            outside = [r.url for r in self.requests if r.url.startswith("http")
                       and not urllib.parse.urlsplit(r.url).path.startswith(expected.path)]
            self.assertEqual(outside, [], f"requests outside {expected.path}")
        self.assertEqual(self.problems, [])

    def start_run(self, server, workflow, key=None):
        status, body = http_json("POST", f"{server.url}/api/workflows/{workflow}/run", key=key)
        self.assertEqual(status, 202, body)
        return body["run_id"]

    def wait_status(self, server, run_id, wanted, key=None):
        def check():
            status, body = http_json("GET", f"{server.url}/api/runs/{run_id}", key=key)
            return status == 200 and body["status"] in wanted and body
        return wait_until(check, f"run {run_id} to reach {wanted}")

    def event_seqs(self, page):
        return [int(s) for s in page.eval_on_selector_all("#run-events li", "els => els.map(e => e.dataset.seq)")]

    def no_reload_marker(self, page):
        page.evaluate("window.__sameDocument = true")

    def assert_same_document(self, page):
        self.assertTrue(page.evaluate("window.__sameDocument === true"), "the page reloaded")

    def screenshot(self, page, name):
        target = os.environ.get("AEGIS_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(Path(target) / name), full_page=False)

    # --- Tests -------------------------------------------------------------------

    def test_landing_lists_services_workflows_runs_and_a_started_run_appears_live(self):
        server = self.server()
        page = self.open_browser(server.url + "/")
        page.goto(server.url + "/")
        page.get_by_text("No execution history available").wait_for()
        # Services with health and latency.
        qa = page.locator('[data-service="qa"]')
        qa.locator(".badge-healthy").wait_for()
        self.assertIn("ms", qa.inner_text())
        page.locator('[data-service="gone"] .badge-unreachable').wait_for()
        # Workflows, each with a Run button.
        for key in ("quick", "gated", "flaky"):
            page.locator(f'[data-workflow="{key}"]').get_by_role("button", name="Run").wait_for()

        self.no_reload_marker(page)
        page.locator('[data-workflow="quick"]').get_by_role("button", name="Run").click()
        row = page.locator("#recent-runs tbody tr").first
        row.locator(".badge-succeeded").wait_for()
        self.assertIn("quick", row.inner_text())
        wait_in_page(page,
            "document.querySelector('#recent-runs tbody tr .steps').textContent.trim() === '2/2'")
        # A second run started elsewhere shows up too, at the top, still without a reload.
        run_id = self.start_run(server, "gated")
        page.locator(f'#recent-runs tr[data-run="{run_id}"] .badge-waiting').wait_for()
        self.assertEqual(page.locator("#recent-runs tbody tr").first.get_attribute("data-run"), run_id)
        gate = page.locator(f'#gates [data-run="{run_id}"]')
        gate.wait_for()
        self.assertIn("Check the smoke results", gate.inner_text())
        self.assertIn("waiting since", gate.inner_text())
        page.locator('#events-list li[data-type="gate.waiting"]').first.wait_for()
        self.assert_same_document(page)
        self.screenshot(page, "landing.png")
        self.assert_clean()

    def test_demo_run_page_reaches_the_gate_refuses_a_bad_patch_and_approves_a_dropped_failure(self):
        shutil.copy(ROOT / ".aegis.yaml.example", self.tmp / ".aegis.yaml")
        (self.tmp / "scripts").mkdir()
        shutil.copy(ROOT / "scripts" / "demo_tests.py", self.tmp / "scripts" / "demo_tests.py")
        port = free_port()
        server = Server(self.tmp, port, {"AEGIS_PORT": str(port)})
        self.servers.append(server)
        server.start()
        self.allowed_statuses = {422}
        page = self.open_browser(server.url + "/")
        page.goto(server.url + "/")
        demo = page.locator('[data-workflow="demo"]')
        demo.get_by_role("button", name="Run").click()
        demo.get_by_role("link", name="open the run").click()
        page.wait_for_url("**/runs/*")
        self.no_reload_marker(page)
        # The steps arrive and the run stops at its gate.
        page.locator('#timeline [data-step="test"][data-status="succeeded"]').wait_for()
        page.locator('#timeline [data-step="health"][data-status="succeeded"]').wait_for()
        page.locator('#timeline [data-step="review"][data-status="waiting"]').wait_for()
        page.locator("#run-status .badge-waiting").wait_for()
        form = page.locator("#gate")
        form.wait_for()
        self.assertIn("Drop flaky failures before the report", form.inner_text())
        self.assertIn("check_checkout_price", page.locator("#artifact").inner_text())
        # The per-test table lists the failure first.
        first = page.locator('#test-results table[data-step="test"] tbody tr').first
        self.assertEqual(first.get_attribute("data-test"), "check_checkout_price")
        self.assertIn("expected checkout total 59.99", first.inner_text())
        self.screenshot(page, "run-gate.png")

        patch = page.get_by_label("JSON Patch")
        # A patch that does not apply: the server's 422 message shows by the editor.
        patch.fill('[{"op": "remove", "path": "/failures/7"}]')
        self.assertIn("does not apply", page.locator("#preview-error").inner_text())
        page.get_by_role("button", name="Approve").click()
        error = page.locator("#gate-error")
        wait_in_page(page, "document.querySelector('#gate-error').textContent.length > 0")
        self.assertIn("/failures/7", error.inner_text())
        self.assertEqual(http_json("GET", f"{server.url}/api/runs/{page.url.rsplit('/', 1)[1]}")[1]["status"], "waiting")

        # The helper writes the patch for the reviewer; the preview shows its effect.
        patch.fill("")
        page.get_by_role("button", name="Drop this failure").click()
        written = json.loads(patch.input_value())
        self.assertIn({"op": "remove", "path": "/failures/0"}, written)
        preview = json.loads(page.locator("#preview").inner_text())
        self.assertEqual(preview["failures"], [])
        self.assertEqual(preview["failed"], 0)
        page.get_by_label("Comment").fill("flaky rounding, tracked elsewhere")
        page.get_by_role("button", name="Approve").click()

        page.locator("#run-status .badge-succeeded").wait_for()
        page.locator('#timeline [data-step="report"][data-status="succeeded"]').wait_for()
        decision = page.locator('#decisions [data-decision="approve"]')
        decision.wait_for()
        text = decision.inner_text()
        self.assertIn("flaky rounding, tracked elsewhere", text)
        self.assertIn("/failures/0", text)
        self.assertIn("by", text)
        self.assertEqual(page.locator("#gate").count(), 0)
        # Artifacts: JSON shown pretty, text shown as it is.
        page.get_by_role("button", name="Show test.json").click()
        shown = page.locator('[data-artifact="test.json"] pre').inner_text()
        self.assertIn('\n  "failures": []', shown)
        page.get_by_role("button", name="Show test.stdout.txt").click()
        self.assertIn("check_checkout_price", page.locator('[data-artifact="test.stdout.txt"] pre').inner_text())
        seqs = self.event_seqs(page)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assert_same_document(page)
        self.assert_clean()

    def test_run_page_follows_a_run_live_with_attempts_skips_and_parallel_batches(self):
        server = self.server()
        run_id = self.start_run(server, "gated")
        self.wait_status(server, run_id, {"waiting"})
        page = self.open_browser(server.url + "/")
        page.goto(f"{server.url}/runs/{run_id}")
        page.locator('#timeline [data-step="review"][data-status="waiting"]').wait_for()
        # Parallel steps sit side by side in one batch (once the workflow's
        # definition, which says which steps are parallel, has loaded).
        batch = page.locator("#timeline .batch")
        batch.wait_for()
        self.assertEqual(batch.count(), 1)
        self.assertEqual(batch.locator("[data-step]").evaluate_all("els => els.map(e => e.dataset.step)"), ["left", "right"])
        # Side by side: the same top, left before right. Read in the page in one
        # go, and waited for: the page re-renders its timeline as the replayed
        # events arrive, and a box read between two renders is of a card
        # already replaced.
        wait_in_page(page,
            """() => {
                const batch = document.querySelector("#timeline .batch");
                const box = (id) => batch && batch.querySelector(`[data-step="${id}"]`)?.getBoundingClientRect();
                const left = box("left"), right = box("right");
                return Boolean(left && right && left.width > 0 && right.width > 0
                    && left.y === right.y && left.x < right.x);
            }""",
            timeout_ms=10_000,
        )
        self.assertEqual(page.locator('#timeline [data-step="after"]').get_attribute("data-status"), "pending")
        self.no_reload_marker(page)
        # Decided elsewhere: the page follows without a reload.
        status, body = http_json("POST", f"{server.url}/api/runs/{run_id}/gates/review/approve", {"comment": "ok"})
        self.assertEqual(status, 200, body)
        page.locator('#timeline [data-step="after"][data-status="succeeded"]').wait_for()
        page.locator("#run-status .badge-succeeded").wait_for()
        self.assertEqual(page.get_by_role("button", name="Cancel").count(), 0)
        seqs = self.event_seqs(page)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assert_same_document(page)

        # Attempts with their errors, and skipped steps.
        failed = self.start_run(server, "flaky")
        self.wait_status(server, failed, {"failed"})
        page.goto(f"{server.url}/runs/{failed}")
        down = page.locator('#timeline [data-step="down"][data-status="failed"]')
        down.wait_for()
        wait_in_page(page, "document.querySelectorAll('#timeline [data-step=\"down\"] .attempts li').length === 2")
        self.assertIn("attempt 2: failed", down.inner_text())
        page.locator('#timeline [data-step="never"][data-status="skipped"]').wait_for()
        page.locator('#timeline [data-step="cleanup"][data-status="succeeded"]').wait_for()
        self.assertIn("Skipped", page.locator('#timeline [data-step="never"]').inner_text())

        # Cancel while it waits.
        waiting = self.start_run(server, "gated")
        self.wait_status(server, waiting, {"waiting"})
        page.goto(f"{server.url}/runs/{waiting}")
        page.get_by_role("button", name="Cancel").click()
        page.locator("#run-status .badge-cancelled").wait_for()
        self.assertEqual(self.wait_status(server, waiting, {"cancelled"})["status"], "cancelled")
        self.assert_clean()

    def test_a_dropped_stream_resumes_without_losing_or_repeating_events(self):
        port = free_port()
        server = self.server(port=port)
        run_id = self.start_run(server, "gated")
        self.wait_status(server, run_id, {"waiting"})
        page = self.open_browser(server.url + "/")
        page.goto(f"{server.url}/runs/{run_id}")
        page.locator('#timeline [data-step="review"][data-status="waiting"]').wait_for()
        before = self.event_seqs(page)
        self.assertEqual(before, list(range(1, len(before) + 1)))
        self.no_reload_marker(page)

        # The server goes away mid-run: the page says so and keeps retrying.
        self.allow_failed_requests = True
        server.stop(signal.SIGTERM)
        page.get_by_text("Server unreachable — retrying").wait_for()
        server.start()
        page.get_by_text("Server unreachable — retrying").wait_for(state="hidden")
        # Decided after the restart: the resumed stream brings the rest.
        status, body = http_json("POST", f"{server.url}/api/runs/{run_id}/gates/review/approve", {})
        self.assertEqual(status, 200, body)
        page.locator("#run-status .badge-succeeded").wait_for()
        page.locator('#timeline [data-step="report"][data-status="succeeded"]').wait_for()
        seqs = self.event_seqs(page)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "an event was lost or repeated")
        self.assertGreater(len(seqs), len(before))
        steps = page.eval_on_selector_all("#timeline [data-step]", "els => els.map(e => e.dataset.step)")
        self.assertEqual(steps, ["left", "right", "review", "after", "report"])
        # The reconnect asked to resume after the last event it had.
        resumed = [r.headers.get("last-event-id") for r in self.requests
                   if r.url.endswith(f"/api/runs/{run_id}/events/stream")]
        self.assertIn(str(before[-1]), resumed)
        self.assert_same_document(page)
        # Everything seen live is in the server's own log with the same ids.
        _, log = http_json("GET", f"{server.url}/api/runs/{run_id}/events")
        self.assertEqual([e["seq"] for e in log["events"]], seqs)
        self.assert_clean()

    def test_landing_says_the_server_is_unreachable_and_recovers_by_itself(self):
        port = free_port()
        server = self.server(port=port)
        page = self.open_browser(server.url + "/")
        page.goto(server.url + "/")
        page.get_by_text("No execution history available").wait_for()
        banner = page.get_by_text("Server unreachable — retrying")
        self.assertFalse(banner.is_visible())
        self.no_reload_marker(page)
        self.allow_failed_requests = True
        server.stop(signal.SIGTERM)
        banner.wait_for()
        server.start()
        banner.wait_for(state="hidden")
        # The live stream is back too: a run started now appears without a reload.
        run_id = self.start_run(server, "quick")
        page.locator(f'#recent-runs tr[data-run="{run_id}"] .badge-succeeded').wait_for()
        self.assert_same_document(page)
        self.assert_clean()

    def test_auth_asks_for_a_key_sends_it_everywhere_and_names_the_role_a_viewer_lacks(self):
        auth = """auth:
  keys:
    - {id: lead, key: "operator-key-0123456789abcdef", role: operator}
    - {id: watcher, key: "viewer-key-0123456789abcdef", role: viewer}
  protect_reads: true"""
        server = self.server(yaml=config(self.mock.port, auth=auth))
        operator, viewer = "operator-key-0123456789abcdef", "viewer-key-0123456789abcdef"
        run_id = self.start_run(server, "gated", key=operator)
        self.wait_status(server, run_id, {"waiting"}, key=operator)
        self.allowed_statuses = {401, 403}
        page = self.open_browser(server.url + "/")
        page.goto(server.url + "/")
        key_field = page.get_by_label("API key", exact=True)
        key_field.wait_for()
        key_field.fill(viewer)
        page.get_by_role("button", name="Use key").click()
        page.locator('[data-service="qa"] .badge-healthy').wait_for()
        page.locator(f'#recent-runs tr[data-run="{run_id}"]').wait_for()
        self.assertEqual(page.evaluate("sessionStorage.getItem('aegis.apiKey')"), viewer)

        # A viewer may look but not decide: the 403 names the role needed.
        page.goto(f"{server.url}/runs/{run_id}")
        page.locator("#gate").wait_for()
        page.get_by_role("button", name="Approve").click()
        wait_in_page(page, "document.querySelector('#gate-error').textContent.includes('operator')")
        self.assertIn("viewer", page.locator("#gate-error").inner_text())

        # With the operator's key (kept for the tab) the same click works.
        page.get_by_role("button", name="API key").click()
        page.get_by_label("API key", exact=True).fill(operator)
        page.get_by_role("button", name="Use key").click()
        page.locator("#gate").wait_for()
        page.get_by_role("button", name="Approve").click()
        page.locator("#run-status .badge-succeeded").wait_for()
        page.locator('#decisions [data-decision="approve"]').get_by_text("lead").wait_for()

        # Every API request and stream after the key was entered carried it.
        api = [r for r in self.requests if "/api/" in r.url]
        keyed = [r for r in api if r.headers.get("x-api-key")]
        streams = [r for r in keyed if r.url.endswith("/events/stream")]
        self.assertTrue(streams, "no stream carried the key")
        first_keyed = api.index(keyed[0])
        self.assertEqual([r.url for r in api[first_keyed:] if not r.headers.get("x-api-key")], [])
        self.assert_clean()

    def test_behind_nginx_under_a_base_path(self):
        server = self.server(base_path="/aegis")
        nginx_port = free_port()
        conf = self.tmp / "nginx.conf"
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {self.tmp}/nginx.pid;
error_log {self.tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {self.tmp}/nginx-body;
  proxy_temp_path {self.tmp}/nginx-proxy;
  fastcgi_temp_path {self.tmp}/nginx-fastcgi;
  uwsgi_temp_path {self.tmp}/nginx-uwsgi;
  scgi_temp_path {self.tmp}/nginx-scgi;
  server {{
    listen 127.0.0.1:{nginx_port};
    location /aegis/ {{
      proxy_pass http://127.0.0.1:{server.port};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
  }}
}}
""")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = subprocess.Popen([nginx, "-p", str(self.tmp), "-c", str(conf)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proxied = f"http://127.0.0.1:{nginx_port}/aegis"

        def up():
            if self.nginx.poll() is not None:
                raise AssertionError(f"nginx exited: {(self.tmp / 'nginx-error.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{proxied}/health/ready", timeout=5) as r:
                    return r.status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(up, "nginx to proxy the server")
        page = self.open_browser(proxied + "/")
        page.goto(proxied + "/")
        page.get_by_text("No execution history available").wait_for()
        self.no_reload_marker(page)
        page.locator('[data-workflow="gated"]').get_by_role("button", name="Run").click()
        # Live through the proxy: the run appears and reaches its gate without a reload.
        page.locator("#recent-runs .badge-waiting").wait_for()
        page.locator("#gates .gate").wait_for()
        self.assert_same_document(page)
        page.locator("#gates").get_by_role("link", name="Review").click()
        page.wait_for_url(f"{proxied}/runs/*")
        page.locator("#gate").wait_for()
        self.no_reload_marker(page)
        page.get_by_role("button", name="Approve").click()
        page.locator("#run-status .badge-succeeded").wait_for()
        page.locator('#timeline [data-step="report"][data-status="succeeded"]').wait_for()
        seqs = self.event_seqs(page)
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assert_same_document(page)
        page.get_by_role("link", name="← All runs").click()
        page.locator("#recent-runs .badge-succeeded").wait_for()
        self.assert_clean()

    def test_phone_viewport_has_one_column_touch_sized_controls_and_no_horizontal_scroll(self):
        server = self.server()
        run_id = self.start_run(server, "gated")
        self.wait_status(server, run_id, {"waiting"})
        self.start_run(server, "quick")
        page = self.open_browser(server.url + "/", width=390, height=844)
        page.goto(server.url + "/")
        page.locator("#recent-runs tbody tr").nth(1).wait_for()
        page.locator("#gates .gate").wait_for()
        page.locator('[data-service="qa"] .badge-healthy').wait_for()
        scroll = "document.documentElement.scrollWidth <= window.innerWidth"
        self.assertTrue(page.evaluate(scroll), "the landing page scrolls sideways")
        lefts = {round(page.locator(f"#{s}").bounding_box()["x"])
                 for s in ("runs-title", "workflows-title", "services-title", "events-title")}
        self.assertEqual(len(lefts), 1, f"more than one column: {lefts}")
        run_button = page.locator('[data-workflow="quick"]').get_by_role("button", name="Run").bounding_box()
        self.assertGreaterEqual(run_button["height"], 44)
        self.assertGreaterEqual(run_button["width"], 44)
        page.goto(f"{server.url}/runs/{run_id}")
        page.locator("#gate").wait_for()
        self.assertTrue(page.evaluate(scroll), "the run page scrolls sideways")
        for name in ("Approve", "Reject", "Cancel"):
            self.assertGreaterEqual(page.get_by_role("button", name=name).bounding_box()["height"], 44)
        # Rejecting (no `retry_from` here) ends the run `rejected`, shown live.
        page.get_by_label("Comment").fill("not today")
        page.get_by_role("button", name="Reject").click()
        page.locator("#run-status .badge-rejected").wait_for()
        page.locator('#decisions [data-decision="reject"]').get_by_text("not today").wait_for()
        self.assertTrue(page.evaluate(scroll), "the run page scrolls sideways")
        self.assert_clean()

    def test_landing_page_and_everything_it_loads_fits_the_size_budget(self):
        server = self.server()
        run_id = self.start_run(server, "quick")
        self.wait_status(server, run_id, {"succeeded"})
        page = self.open_browser(server.url + "/")
        page.goto(server.url + "/")
        page.locator(f'#recent-runs tr[data-run="{run_id}"] .badge-succeeded').wait_for()
        page.locator('[data-service="qa"] .badge-healthy').wait_for()
        page.locator('[data-workflow="quick"]').wait_for()
        page.locator("#events-list li[data-type]").first.wait_for()
        sizes = {}
        for request in self.requests:
            response = request.response()
            # The event stream never ends; its bytes are live data, not the page.
            if response is None or request.url.endswith("/events/stream"):
                continue
            sizes[request.url] = sizes.get(request.url, 0) + len(response.body())
        total = sum(sizes.values())
        print(f"landing page: {len(sizes)} responses, {total} bytes (budget {BUDGET_BYTES})")
        kinds = {urllib.parse.urlsplit(u).path.rsplit("/", 1)[-1] for u in sizes}
        self.assertTrue({"app.js", "style.css", "landing.js"} <= kinds, kinds)
        self.assertLess(total, BUDGET_BYTES)
        self.assertFalse(any(u.endswith("/favicon.ico") for u in sizes))
        self.assert_clean()


if __name__ == "__main__":
    unittest.main(verbosity=2)

// A run's page: the step timeline follows the run's SSE stream (replayed from its first
// event, resumed with Last-Event-ID after a dropped connection), the run's record fills
// in attempts, data and decisions, and a waiting gate gets its review form.

import { api, apiKey, download, follow, onReconnect, ApiError } from './api.js';
import { h, fill, badge, timeEl, duration, size, pretty, notify } from './dom.js';
import { applyPatch } from './patch.js';

const ACTIVE = new Set(['queued', 'running', 'waiting']);
const TEXT_TYPES = /\.(txt|log|jsonl|xml|csv|md|html)$/;
const PREVIEW_LIMIT = 256 * 1024;

export function mount(main, runId) {
  const stops = [];
  const enc = encodeURIComponent(runId);
  let detail = null;
  let definition = null;
  let artifacts = [];
  let lastSeq = 0;
  let finished = false;
  const events = [];
  // What the stream says about each step, keyed by step id.
  const live = new Map();
  let liveStatus = null;
  let gateKey = null;

  const head = h('section', { class: 'run-head', 'aria-labelledby': 'run-title' });
  const gateSlot = h('div', { id: 'gate-slot' });
  const timeline = h('ol', { class: 'timeline', id: 'timeline', 'aria-live': 'polite' });
  const results = h('div', { id: 'test-results' });
  const artifactList = h('div', { id: 'artifacts' });
  const decisions = h('div', { id: 'decisions' });
  const eventList = h('ol', { class: 'events', id: 'run-events' });

  fill(main,
    h('p', {}, h('a', { href: './' }, '← All runs')),
    head, gateSlot,
    h('section', { 'aria-labelledby': 'timeline-title' }, h('h2', { id: 'timeline-title' }, 'Steps'), timeline),
    h('section', { 'aria-labelledby': 'results-title' }, h('h2', { id: 'results-title' }, 'Test results'), results),
    h('section', { 'aria-labelledby': 'artifacts-title' }, h('h2', { id: 'artifacts-title' }, 'Artifacts'), artifactList),
    h('section', { 'aria-labelledby': 'decisions-title' }, h('h2', { id: 'decisions-title' }, 'Decisions'), decisions),
    h('section', { 'aria-labelledby': 'events-title' }, h('h2', { id: 'events-title' }, 'Events'), eventList));

  // --- Loading ----------------------------------------------------------------------

  async function load() {
    try {
      detail = await api(`api/runs/${enc}`);
      if (!definition) {
        definition = await api(`api/workflows/${encodeURIComponent(detail.workflow)}`).catch(() => null);
      }
      artifacts = (await api(`api/runs/${enc}/artifacts`)).artifacts || [];
      render();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        fill(main, h('p', { class: 'empty' }, `Run ${runId} not found.`), h('p', {}, h('a', { href: './' }, '← All runs')));
        stopAll();
        return;
      }
      if (err instanceof ApiError && (err.status === 0 || err.status === 401)) return;
      notify(err.message, 'error');
    }
  }

  let timer = null;
  function scheduleLoad() {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      load();
    }, 200);
  }

  // --- The stream -------------------------------------------------------------------

  function apply(event) {
    const d = event.data || {};
    const step = (id) => {
      if (!live.has(id)) live.set(id, { attempts: [] });
      return live.get(id);
    };
    switch (event.type) {
      case 'workflow.started':
        liveStatus = 'running';
        if (Array.isArray(d.steps)) for (const id of d.steps) step(id);
        break;
      case 'step.started': {
        const s = step(d.step_id);
        if (s.status && s.status !== 'running') s.attempts = [];
        Object.assign(s, { status: 'running', error: null, duration_ms: null });
        liveStatus = 'running';
        break;
      }
      case 'step.retrying':
        step(d.step_id).attempts.push({ attempt: d.attempt, error: d.error });
        break;
      case 'step.completed':
        Object.assign(step(d.step_id), { status: d.success ? 'succeeded' : 'failed', error: d.error, duration_ms: d.duration_ms });
        break;
      case 'step.skipped':
        Object.assign(step(d.step_id), { status: 'skipped', condition: d.condition });
        break;
      case 'gate.waiting':
        Object.assign(step(d.gate_id), { status: 'waiting' });
        liveStatus = 'waiting';
        break;
      case 'gate.approved':
      case 'gate.rejected':
      case 'gate.expired':
        Object.assign(step(d.gate_id), { status: event.type === 'gate.rejected' ? 'rejected' : 'succeeded' });
        break;
      case 'run.cancelled':
        liveStatus = 'cancelled';
        break;
      case 'run.interrupted':
        liveStatus = 'interrupted';
        break;
      case 'workflow.completed':
        liveStatus = d.status;
        finished = true;
        break;
      default:
        break;
    }
  }

  function onEvent(event) {
    // Ids are seqs: anything at or below the last one seen is a repeat and is dropped.
    if (!event || typeof event.seq !== 'number' || event.seq <= lastSeq) return;
    lastSeq = event.seq;
    events.push(event);
    apply(event);
    eventList.append(h('li', { dataset: { seq: event.seq, type: event.type } },
      h('span', { class: 'seq' }, `#${event.seq}`), ' ', h('code', {}, event.type), ' ', timeEl(event.time),
      event.data && (event.data.step_id || event.data.gate_id) ? ` · ${event.data.step_id || event.data.gate_id}` : ''));
    renderTimeline();
    renderHead();
    scheduleLoad();
  }

  // --- Rendering --------------------------------------------------------------------

  function status() {
    // The record can trail the stream by a moment, and the stream can lag a reload.
    if (liveStatus && (!detail || ACTIVE.has(detail.status))) return liveStatus;
    return detail ? detail.status : liveStatus || 'queued';
  }

  function renderHead() {
    const current = status();
    const cancel = ACTIVE.has(current)
      ? h('button', { type: 'button', class: 'danger', onclick: cancelRun }, 'Cancel') : null;
    fill(head,
      h('div', { class: 'card-head' },
        h('h1', { id: 'run-title' }, detail ? detail.workflow : 'Run'),
        h('span', { id: 'run-status' }, badge(current))),
      h('p', { class: 'muted' }, h('code', {}, runId),
        detail ? [' · ', detail.trigger, ' · started ', timeEl(detail.started_at || detail.created_at),
          ' · ', duration(detail.duration_ms)] : ''),
      detail && detail.error ? h('p', { class: 'error' }, detail.error) : null,
      cancel ? h('div', { class: 'actions' }, cancel, h('span', { id: 'cancel-message', role: 'status' })) : null);
  }

  async function cancelRun(click) {
    const button = click.currentTarget;
    button.disabled = true;
    try {
      await api(`api/runs/${enc}/cancel`, { method: 'POST' });
      notify('Cancel requested.', 'info');
    } catch (err) {
      notify(err.message, 'error');
    } finally {
      button.disabled = false;
    }
  }

  /** The latest record (pass) of each step id. */
  function records() {
    const byId = new Map();
    for (const s of (detail && detail.steps) || []) {
      const seen = byId.get(s.id);
      if (!seen || s.execution >= seen.execution) byId.set(s.id, s);
    }
    return byId;
  }

  function stepIds() {
    if (definition && Array.isArray(definition.steps)) return definition.steps.map((s) => s.id);
    const started = events.find((e) => e.type === 'workflow.started');
    if (started && Array.isArray(started.data.steps)) return started.data.steps;
    return [...records().keys()];
  }

  /** Steps in order, consecutive `parallel: true` steps grouped into one batch. */
  function batches() {
    const flags = new Map(((definition && definition.steps) || []).map((s) => [s.id, s]));
    const out = [];
    for (const id of stepIds()) {
      const parallel = flags.get(id) && flags.get(id).parallel;
      const last = out[out.length - 1];
      if (parallel && last && last.parallel) last.ids.push(id);
      else out.push({ parallel: Boolean(parallel), ids: [id] });
    }
    return out;
  }

  function stepCard(id, byId) {
    const record = byId.get(id);
    const seen = live.get(id);
    const def = definition && definition.steps ? definition.steps.find((s) => s.id === id) : null;
    // The stream is newer than the record while a step runs; afterwards the record has more.
    let state = (record && record.status) || 'pending';
    if (seen && seen.status && (!record || record.status === 'running' || state === 'pending')) state = seen.status;
    if (state === 'running' && def && def.type === 'gate' && status() === 'waiting') state = 'waiting';
    const attempts = record && record.attempts && record.attempts.length
      ? record.attempts.map((a) => h('li', { class: a.success ? '' : 'error' },
        `attempt ${a.attempt}: ${a.success ? 'ok' : 'failed'} · ${duration(a.duration_ms)}`, a.error ? ` — ${a.error}` : ''))
      : (seen ? seen.attempts : []).map((a) => h('li', { class: 'error' }, `attempt ${a.attempt}: failed — ${a.error}`));
    const error = (record && record.error) || (seen && seen.error);
    return h('li', { class: `step step-${state}`, dataset: { step: id, status: state } },
      h('div', { class: 'card-head' },
        h('strong', {}, id), badge(state)),
      h('p', { class: 'muted' }, (record && record.type) || (def && def.type) || '',
        record && record.duration_ms !== null && record.duration_ms !== undefined ? ` · ${duration(record.duration_ms)}`
          : seen && seen.duration_ms ? ` · ${duration(seen.duration_ms)}` : '',
        record && record.execution > 0 ? ` · pass ${record.execution + 1}` : ''),
      state === 'skipped' ? h('p', { class: 'muted' }, `Skipped: its condition (${(seen && seen.condition) || (def && def.condition) || 'condition'}) was not met.`) : null,
      error && state === 'failed' ? h('p', { class: 'error' }, error) : null,
      attempts.length ? h('ul', { class: 'attempts' }, attempts) : null);
  }

  function renderTimeline() {
    const byId = records();
    fill(timeline, batches().map((batch) => batch.parallel
      ? h('li', { class: 'batch' }, h('p', { class: 'muted' }, 'parallel'),
        h('ol', { class: 'batch-steps' }, batch.ids.map((id) => stepCard(id, byId))))
      : stepCard(batch.ids[0], byId)));
  }

  function renderResults() {
    const tables = [];
    for (const step of records().values()) {
      const data = step.data;
      if (!data || typeof data !== 'object' || !Array.isArray(data.failures) || typeof data.total !== 'number') continue;
      const rows = data.failures.map((f) => h('tr', { class: 'failed', dataset: { test: f.name || '' } },
        h('td', { 'data-label': 'Test' }, f.name || '—'),
        h('td', { 'data-label': 'Result' }, badge('failed')),
        h('td', { 'data-label': 'Message' }, f.message || f.error || ''),
        h('td', { 'data-label': 'File' }, f.file || f.classname || '')));
      const passed = typeof data.passed === 'number' ? data.passed : data.total - data.failures.length;
      if (passed > 0) {
        rows.push(h('tr', { class: 'passed' }, h('td', { 'data-label': 'Test' }, `${passed} other test${passed === 1 ? '' : 's'}`),
          h('td', { 'data-label': 'Result' }, badge('succeeded')), h('td', {}, ''), h('td', {}, '')));
      }
      if (data.skipped > 0) {
        rows.push(h('tr', { class: 'skipped' }, h('td', { 'data-label': 'Test' }, `${data.skipped} skipped`),
          h('td', { 'data-label': 'Result' }, badge('skipped')), h('td', {}, ''), h('td', {}, '')));
      }
      tables.push(h('h3', {}, `${step.id}: ${data.total} tests, ${data.failures.length} failed`),
        h('table', { class: 'tests', dataset: { step: step.id } },
          h('thead', {}, h('tr', {}, ['Test', 'Result', 'Message', 'File'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, rows)));
    }
    fill(results, tables.length ? tables : h('p', { class: 'empty' }, 'No test results in this run.'));
  }

  let shownArtifacts = null;
  function renderArtifacts() {
    // Re-rendering would close an artifact someone is reading; only redo a changed list.
    const signature = JSON.stringify(artifacts.map((a) => [a.name, a.size]));
    if (signature === shownArtifacts) return;
    shownArtifacts = signature;
    if (artifacts.length === 0) {
      fill(artifactList, h('p', { class: 'empty' }, 'No artifacts yet.'));
      return;
    }
    fill(artifactList, h('ul', { class: 'artifacts' }, artifacts.map((a) => {
      const href = `api/runs/${enc}/artifacts/${encodeURIComponent(a.name)}`;
      const shown = h('div', { class: 'artifact-body' });
      const viewable = a.name.endsWith('.json') || TEXT_TYPES.test(a.name);
      const show = viewable ? h('button', { type: 'button', class: 'secondary small', 'aria-label': `Show ${a.name}` }, 'Show') : null;
      if (show) {
        show.addEventListener('click', async () => {
          if (shown.childElementCount) { shown.replaceChildren(); show.textContent = 'Show'; return; }
          try {
            const response = await download(href);
            let text = await response.text();
            if (a.name.endsWith('.json')) {
              try { text = pretty(JSON.parse(text)); } catch { /* shown as it is */ }
            }
            if (text.length > PREVIEW_LIMIT) text = `${text.slice(0, PREVIEW_LIMIT)}\n… (truncated; download for the rest)`;
            fill(shown, h('pre', { class: 'code' }, text || '(empty)'));
            show.textContent = 'Hide';
          } catch (err) {
            fill(shown, h('p', { class: 'error' }, err.message));
          }
        });
      }
      const link = h('a', { href, download: a.name }, a.name);
      link.addEventListener('click', async (click) => {
        // A plain link cannot carry the key; fetch with it and hand the browser a blob.
        if (!apiKey()) return;
        click.preventDefault();
        try {
          const blob = await (await download(href)).blob();
          const url = URL.createObjectURL(blob);
          const a2 = h('a', { href: url, download: a.name });
          a2.click();
          setTimeout(() => URL.revokeObjectURL(url), 10000);
        } catch (err) {
          notify(err.message, 'error');
        }
      });
      return h('li', { dataset: { artifact: a.name } }, link, ` ${size(a.size)} `, show, shown);
    })));
  }

  function renderDecisions() {
    const list = (detail && detail.gate_decisions) || [];
    if (list.length === 0) {
      fill(decisions, h('p', { class: 'empty' }, 'No gate decisions yet.'));
      return;
    }
    fill(decisions, h('ol', { class: 'decisions' }, list.map((d) => h('li', { class: 'card', dataset: { decision: d.decision } },
      h('div', { class: 'card-head' }, h('strong', {}, `${d.gate}: `, badge(d.decision)), h('span', {}, 'by ', h('b', {}, d.by))),
      h('p', { class: 'muted' }, timeEl(d.at)),
      d.comment ? h('p', { class: 'comment' }, d.comment) : null,
      d.patch ? [h('p', { class: 'muted' }, 'Patch'), h('pre', { class: 'code' }, pretty(d.patch))] : null))));
  }

  function render() {
    renderHead();
    renderTimeline();
    renderResults();
    renderArtifacts();
    renderDecisions();
    renderGate();
  }

  // --- The gate form ----------------------------------------------------------------

  function renderGate() {
    const pending = (detail && detail.pending_gates && detail.pending_gates[0]) || null;
    const key = pending ? `${pending.gate}@${pending.since}` : null;
    if (key === gateKey) return;
    gateKey = key;
    if (!pending) {
      gateSlot.replaceChildren();
      return;
    }
    fill(gateSlot, gateForm(pending));
  }

  function gateForm(gate) {
    const artifactStep = gate.artifact ? records().get(gate.artifact) : null;
    const artifact = artifactStep ? artifactStep.data : null;
    const failures = artifact && Array.isArray(artifact.failures) ? artifact.failures : [];
    const dropped = new Set();
    const patchInput = h('textarea', { id: 'patch', rows: 6, spellcheck: 'false', 'aria-describedby': 'patch-help gate-error' });
    const preview = h('pre', { class: 'code', id: 'preview' }, artifact === null ? '(no artifact)' : pretty(artifact));
    const previewError = h('p', { class: 'error', id: 'preview-error', role: 'status' });
    const gateError = h('p', { class: 'error', id: 'gate-error', role: 'alert' });
    const comment = h('input', { id: 'comment', type: 'text' });

    function writeHelperPatch() {
      const ops = [];
      for (const i of [...dropped].sort((a, b) => b - a)) {
        if (failures[i] && failures[i].name !== undefined) {
          ops.push({ op: 'test', path: `/failures/${i}/name`, value: failures[i].name });
        }
        ops.push({ op: 'remove', path: `/failures/${i}` });
      }
      if (ops.length && artifact && typeof artifact.failed === 'number') {
        ops.push({ op: 'replace', path: '/failed', value: Math.max(0, artifact.failed - dropped.size) });
      }
      patchInput.value = ops.length ? pretty(ops) : '';
      updatePreview();
    }

    function parsedPatch() {
      const text = patchInput.value.trim();
      if (!text) return { patch: undefined };
      try {
        return { patch: JSON.parse(text) };
      } catch (err) {
        return { error: `JSON Patch is not valid JSON: ${err.message}` };
      }
    }

    function updatePreview() {
      gateError.textContent = '';
      const { patch, error } = parsedPatch();
      previewError.textContent = '';
      if (error) { previewError.textContent = error; return; }
      if (artifact === null) return;
      try {
        preview.textContent = pretty(patch === undefined ? artifact : applyPatch(artifact, patch));
      } catch (err) {
        previewError.textContent = `The patch does not apply: ${err.message}`;
      }
    }
    patchInput.addEventListener('input', updatePreview);

    async function decide(kind, button) {
      const { patch, error } = parsedPatch();
      if (error) { gateError.textContent = error; return; }
      const body = {};
      if (comment.value.trim()) body.comment = comment.value.trim();
      if (patch !== undefined) body.patch = patch;
      for (const b of form.querySelectorAll('.decide')) b.disabled = true;
      gateError.textContent = '';
      try {
        const outcome = await api(`api/runs/${enc}/gates/${encodeURIComponent(gate.gate)}/${kind}`, { method: 'POST', body });
        notify(`${kind === 'approve' ? 'Approved' : 'Rejected'} by ${outcome.by}; the run is ${outcome.status}.`, 'info');
        scheduleLoad();
      } catch (err) {
        gateError.textContent = err.message;
        button.focus();
      } finally {
        for (const b of form.querySelectorAll('.decide')) b.disabled = false;
      }
    }

    const approve = h('button', { type: 'button', class: 'decide' }, 'Approve');
    const reject = h('button', { type: 'button', class: 'decide danger' }, 'Reject');
    approve.addEventListener('click', () => decide('approve', approve));
    reject.addEventListener('click', () => decide('reject', reject));

    const helpers = failures.map((f, i) => {
      const label = f.name || `failure ${i + 1}`;
      const button = h('button', { type: 'button', class: 'secondary small', 'aria-pressed': 'false', dataset: { failure: label } }, 'Drop this failure');
      button.addEventListener('click', () => {
        if (dropped.has(i)) dropped.delete(i); else dropped.add(i);
        button.setAttribute('aria-pressed', String(dropped.has(i)));
        button.textContent = dropped.has(i) ? 'Keep this failure' : 'Drop this failure';
        writeHelperPatch();
      });
      return h('li', {}, h('span', {}, h('strong', {}, label), f.message ? ` — ${f.message}` : ''), button);
    });

    const form = h('section', { class: 'card gate-form', id: 'gate', 'aria-labelledby': 'gate-title' },
      h('div', { class: 'card-head' }, h('h2', { id: 'gate-title' }, `Waiting for you: ${gate.gate}`), badge('waiting')),
      gate.message ? h('p', { class: 'gate-message' }, gate.message) : null,
      h('p', { class: 'muted' }, 'Waiting since ', timeEl(gate.since),
        gate.deadline ? [' · decided automatically ', timeEl(gate.deadline)] : ' · no deadline'),
      gate.artifact ? [
        h('h3', {}, 'Guarded artifact: ', h('code', {}, gate.artifact)),
        h('pre', { class: 'code', id: 'artifact' }, artifact === null ? '(no data)' : pretty(artifact)),
      ] : null,
      helpers.length ? [h('h3', {}, 'Failures'), h('ul', { class: 'helpers' }, helpers)] : null,
      h('label', { for: 'patch' }, 'JSON Patch'),
      h('p', { class: 'muted', id: 'patch-help' }, 'RFC 6902 operations applied to the artifact before later steps see it; leave empty to keep it as it is.'),
      patchInput,
      gateError,
      h('h3', {}, 'Preview after the patch'),
      previewError,
      preview,
      h('label', { for: 'comment' }, 'Comment'),
      comment,
      h('div', { class: 'actions' }, approve, reject));
    return form;
  }

  // --- Wiring -----------------------------------------------------------------------

  function stopAll() {
    for (const stop of stops) stop();
    stops.length = 0;
  }

  load();
  stops.push(follow(`api/runs/${enc}/events/stream`, {
    onEvent,
    onOpen(reconnected) {
      if (reconnected) scheduleLoad();
    },
    done: () => finished,
  }));
  stops.push(onReconnect(() => scheduleLoad()));

  return () => {
    stopAll();
    if (timer) clearTimeout(timer);
  };
}

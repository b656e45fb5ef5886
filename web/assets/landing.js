// The landing page: services with health, workflows with a Run button, Recent Runs and
// pending gates kept current from GET /api/events/stream, and the latest events.

import { api, follow, onReconnect, ApiError } from './api.js';
import { h, fill, badge, timeEl, duration, notify } from './dom.js';

const RECENT = 10;
const EVENTS_SHOWN = 15;
const TERMINAL = new Set(['succeeded', 'failed', 'rejected', 'cancelled', 'interrupted']);
const SERVICE_REFRESH_MS = 15000;

export function mount(main) {
  const stops = [];
  const totals = new Map(); // workflow key -> number of steps
  const progress = new Map(); // run id -> {done, total} of finished runs (they never change)
  let events = [];

  const services = h('ul', { class: 'cards', id: 'services-list', 'aria-live': 'polite' });
  const workflows = h('ul', { class: 'cards', id: 'workflows-list' });
  const runsBody = h('div', { id: 'recent-runs' });
  const gatesBody = h('div', { id: 'gates' });
  const eventsBody = h('ol', { class: 'events', id: 'events-list' });

  fill(main,
    h('section', { class: 'waiting-section', 'aria-labelledby': 'gates-title' },
      h('h2', { id: 'gates-title' }, 'Waiting for you'), gatesBody),
    h('div', { class: 'grid' },
      h('section', { 'aria-labelledby': 'runs-title', class: 'wide' },
        h('h2', { id: 'runs-title' }, 'Recent Runs'), runsBody),
      h('section', { 'aria-labelledby': 'workflows-title' },
        h('h2', { id: 'workflows-title' }, 'Workflows'), workflows),
      h('section', { 'aria-labelledby': 'services-title' },
        h('h2', { id: 'services-title' }, 'Services'), services),
      h('section', { 'aria-labelledby': 'events-title' },
        h('h2', { id: 'events-title' }, 'Recent events'), eventsBody)));

  async function loadPortfolio() {
    const portfolio = await api('api/portfolio');
    document.getElementById('product').textContent = portfolio.name || 'Aegis';
    document.getElementById('version').textContent = portfolio.version ? `v${portfolio.version}` : '';
    document.title = portfolio.name || 'Aegis';
    for (const w of portfolio.workflows || []) totals.set(w.key, w.steps);
    if (!portfolio.workflows || portfolio.workflows.length === 0) {
      fill(workflows, h('li', { class: 'empty' }, 'No workflows configured'));
      return;
    }
    fill(workflows, portfolio.workflows.map((w) => {
      const status = h('p', { class: 'run-status', 'aria-live': 'polite' });
      const button = h('button', { type: 'button', 'aria-describedby': `wf-${w.key}` }, 'Run');
      button.addEventListener('click', () => start(w.key, button, status));
      return h('li', { class: 'card workflow', dataset: { workflow: w.key } },
        h('div', { class: 'card-head' },
          h('strong', { id: `wf-${w.key}` }, w.name || w.key), button),
        w.description ? h('p', { class: 'muted' }, w.description) : null,
        h('p', { class: 'muted' }, `${w.steps} steps · `, h('code', {}, w.key)),
        status);
    }));
  }

  async function start(key, button, status) {
    button.disabled = true;
    status.className = 'run-status';
    status.textContent = 'Starting…';
    try {
      const accepted = await api(`api/workflows/${encodeURIComponent(key)}/run`, { method: 'POST' });
      fill(status, 'Started: ', h('a', { href: `runs/${accepted.run_id}` }, 'open the run'));
      scheduleRefresh();
    } catch (err) {
      status.className = 'run-status error';
      status.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  }

  async function loadServices() {
    const body = await api('api/services');
    const list = body.services || [];
    if (list.length === 0) {
      fill(services, h('li', { class: 'empty' }, 'No services configured'));
      return;
    }
    fill(services, list.map((s) => {
      const check = h('button', { type: 'button', class: 'secondary small', 'aria-label': `Check ${s.name}` }, 'Check');
      const item = h('li', { class: 'card service', dataset: { service: s.key } },
        h('div', { class: 'card-head' }, h('strong', {}, s.name || s.key), badge(s.status)),
        h('p', { class: 'muted' }, `${s.latency_ms} ms`, s.http_status ? ` · HTTP ${s.http_status}` : '',
          s.error ? ` · ${s.error}` : ''),
        check);
      check.addEventListener('click', async () => {
        check.disabled = true;
        try {
          const one = await api(`api/services/${encodeURIComponent(s.key)}/health`);
          item.querySelector('.badge').replaceWith(badge(one.status));
          item.querySelector('p').textContent = `${one.latency_ms} ms${one.error ? ` · ${one.error}` : ''}`;
        } catch (err) {
          notify(err.message, 'error');
        } finally {
          check.disabled = false;
        }
      });
      return item;
    }));
  }

  async function stepsOf(run) {
    const total = totals.get(run.workflow);
    if (progress.has(run.id)) return progress.get(run.id);
    const detail = await api(`api/runs/${encodeURIComponent(run.id)}`);
    // A step re-run after a rejection appears once per pass; count each step once.
    const finished = new Set(detail.steps.filter((s) => s.status !== 'running').map((s) => s.id));
    const counts = { done: finished.size, total: total ?? detail.steps.length };
    if (TERMINAL.has(detail.status)) progress.set(run.id, counts);
    return counts;
  }

  async function loadRuns() {
    const page = await api(`api/history?limit=${RECENT}`);
    const runs = page.runs || [];
    if (runs.length === 0) {
      fill(runsBody, h('p', { class: 'empty' }, 'No execution history available'));
      return;
    }
    const counts = await Promise.all(runs.map((r) => stepsOf(r).catch(() => null)));
    fill(runsBody, h('table', { class: 'runs' },
      h('thead', {}, h('tr', {}, ['Workflow', 'Started', 'Status', 'Steps', 'Duration']
        .map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, runs.map((r, i) => h('tr', { dataset: { run: r.id, status: r.status } },
        h('td', { 'data-label': 'Workflow' }, h('a', { href: `runs/${r.id}` }, r.workflow)),
        h('td', { 'data-label': 'Started' }, timeEl(r.started_at || r.created_at)),
        h('td', { 'data-label': 'Status' }, badge(r.status)),
        h('td', { 'data-label': 'Steps', class: 'steps' },
          counts[i] ? `${counts[i].done}/${counts[i].total}` : '—'),
        h('td', { 'data-label': 'Duration' }, duration(r.duration_ms)))))));
  }

  async function loadGates() {
    const body = await api('api/gates?status=pending');
    const gates = body.gates || [];
    if (gates.length === 0) {
      fill(gatesBody, h('p', { class: 'empty' }, 'Nothing is waiting for a decision.'));
      return;
    }
    fill(gatesBody, h('ul', { class: 'cards' }, gates.map((g) =>
      h('li', { class: 'card gate', dataset: { run: g.run_id, gate: g.gate } },
        h('div', { class: 'card-head' }, h('strong', {}, g.message || `Gate ${g.gate}`), badge('waiting')),
        h('p', { class: 'muted' }, 'Gate ', h('code', {}, g.gate), ' · waiting since ', timeEl(g.since),
          g.deadline ? [' · decided automatically ', timeEl(g.deadline)] : ' · no deadline'),
        h('a', { class: 'button', href: `runs/${g.run_id}#gate` }, 'Review')))));
  }

  function renderEvents() {
    if (events.length === 0) {
      fill(eventsBody, h('li', { class: 'empty' }, 'No events yet'));
      return;
    }
    fill(eventsBody, events.map((e) => h('li', { dataset: { type: e.type } },
      timeEl(e.time), ' ', h('code', {}, e.type), ' ',
      h('a', { href: `runs/${e.run_id}` }, e.workflow),
      e.data && e.data.step_id ? ` · ${e.data.step_id}` : '')));
  }

  async function loadEvents() {
    const body = await api(`api/events?limit=${EVENTS_SHOWN}`);
    events = body.events || [];
    renderEvents();
  }

  // Events come in bursts (a run emits several at once): one refresh per burst.
  let timer = null;
  let wantGates = false;
  function scheduleRefresh(gates = true) {
    wantGates ||= gates;
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      const withGates = wantGates;
      wantGates = false;
      try {
        await Promise.all([loadRuns(), withGates ? loadGates() : null]);
      } catch (err) {
        report(err);
      }
    }, 250);
  }

  function report(err) {
    if (err instanceof ApiError && (err.status === 0 || err.status === 401)) return;
    notify(err.message, 'error');
  }

  async function loadAll() {
    const results = await Promise.allSettled([loadPortfolio(), loadServices(), loadEvents()]);
    // Step totals come from the portfolio, so runs load after it.
    results.push(...await Promise.allSettled([loadRuns(), loadGates()]));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) report(failed.reason);
  }

  loadAll();
  stops.push(follow('api/events/stream', {
    onEvent(event) {
      if (!event || !event.type) return;
      events = [event, ...events.filter((e) => e.id !== event.id)].slice(0, EVENTS_SHOWN);
      renderEvents();
      const gates = event.type.startsWith('gate.') || event.type === 'workflow.completed' || event.type === 'run.cancelled';
      scheduleRefresh(gates);
    },
    onOpen(reconnected) {
      // The global stream does not replay: after a gap, read the lists again.
      if (reconnected) loadAll();
    },
  }));
  stops.push(onReconnect(() => loadAll()));
  const serviceTimer = setInterval(() => loadServices().catch(report), SERVICE_REFRESH_MS);
  stops.push(() => clearInterval(serviceTimer));

  return () => {
    for (const stop of stops) stop();
    if (timer) clearTimeout(timer);
  };
}

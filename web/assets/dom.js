// Small DOM and formatting helpers shared by the pages. Text always goes in through
// text nodes, never innerHTML, so nothing a run or a service reports can inject markup.

/** Builds an element: h('a', {href: 'x', class: 'y'}, 'text', child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const KNOWN = new Set(['queued', 'running', 'waiting', 'succeeded', 'failed', 'rejected',
  'cancelled', 'interrupted', 'healthy', 'unhealthy', 'unreachable', 'skipped', 'pending',
  'approve', 'reject', 'timeout_approve', 'timeout_reject']);

/** A status as a text badge; `waiting` stands out (see style.css). */
export function badge(status) {
  const name = String(status || 'unknown');
  const cls = KNOWN.has(name) ? name : 'unknown';
  return h('span', { class: `badge badge-${cls}` }, name === 'waiting' ? 'waiting for review' : name);
}

/** Parses the server's RFC 3339 times (which may carry nanoseconds) into a Date. */
export function parseTime(text) {
  if (!text) return null;
  const trimmed = String(text).replace(/(\.\d{3})\d+/, '$1');
  const ms = Date.parse(trimmed);
  return Number.isNaN(ms) ? null : new Date(ms);
}

/** "3 min ago", "in 2 h": coarse, for lists. */
export function relative(text, now = Date.now()) {
  const at = parseTime(text);
  if (!at) return '—';
  const diff = Math.round((at.getTime() - now) / 1000);
  const abs = Math.abs(diff);
  let amount;
  if (abs < 5) return 'just now';
  if (abs < 60) amount = `${abs} s`;
  else if (abs < 3600) amount = `${Math.floor(abs / 60)} min`;
  else if (abs < 86400) amount = `${Math.floor(abs / 3600)} h`;
  else amount = `${Math.floor(abs / 86400)} d`;
  return diff < 0 ? `${amount} ago` : `in ${amount}`;
}

/** A <time> showing relative text, refreshed by `tickTimes`. */
export function timeEl(text) {
  const at = parseTime(text);
  return h('time', { datetime: text || '', title: at ? at.toLocaleString() : '', class: 'rel' },
    relative(text));
}

/** Re-renders every relative time on the page (no network). */
export function tickTimes() {
  for (const el of document.querySelectorAll('time.rel')) {
    el.textContent = relative(el.getAttribute('datetime'));
  }
}

/** "840 ms", "3.2 s", "2 min 5 s". */
export function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60000) return `${(ms / 1000).toFixed(1)} s`;
  const min = Math.floor(ms / 60000);
  return `${min} min ${Math.round((ms % 60000) / 1000)} s`;
}

/** "1.2 KB". */
export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** Pretty JSON for display. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** Shows a page-level message; `kind` is 'error' or 'info'. */
export function notify(message, kind = 'info') {
  const el = document.getElementById('notice');
  if (!el) return;
  el.className = `banner ${kind}`;
  el.hidden = !message;
  if (message instanceof Node) fill(el, message);
  else el.textContent = message || '';
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

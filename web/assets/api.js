// Talking to the server: every request and stream is relative to the page's <base>
// (so the dashboard works under a proxy's prefix) and carries the API key, when one was
// entered, as `X-API-Key`. The key lives in sessionStorage: it survives a reload of the
// tab but not the browser session.

import { sleep } from './dom.js';

const KEY = 'aegis.apiKey';

export function apiKey() {
  try {
    return sessionStorage.getItem(KEY) || '';
  } catch {
    return '';
  }
}

export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY, key);
    else sessionStorage.removeItem(KEY);
  } catch {
    // Storage may be disabled; the key then lasts until the page is left.
  }
  for (const listener of keyListeners) listener();
}

const keyListeners = new Set();
/** Called after the key changes, so pages can load again with it. */
export function onKeyChange(listener) {
  keyListeners.add(listener);
  return () => keyListeners.delete(listener);
}

function headers(extra) {
  const all = { Accept: 'application/json', ...extra };
  const key = apiKey();
  if (key) all['X-API-Key'] = key;
  return all;
}

/** A refused or failed request, with the server's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// --- Connection state: the "Server unreachable — retrying" banner -------------------

let offline = false;
const onlineListeners = new Set();

/** Called when the server answers again after being unreachable. */
export function onReconnect(listener) {
  onlineListeners.add(listener);
  return () => onlineListeners.delete(listener);
}

export function isOffline() {
  return offline;
}

function markOffline() {
  if (offline) return;
  offline = true;
  const banner = document.getElementById('offline');
  if (banner) banner.hidden = false;
  probe();
}

function markOnline() {
  if (!offline) return;
  offline = false;
  const banner = document.getElementById('offline');
  if (banner) banner.hidden = true;
  for (const listener of onlineListeners) listener();
}

async function probe() {
  let delay = 1000;
  while (offline) {
    await sleep(delay);
    delay = Math.min(delay * 2, 5000);
    try {
      const response = await fetch('health/live', { cache: 'no-store' });
      if (response.ok) markOnline();
    } catch {
      // Still unreachable; try again after the delay.
    }
  }
}

// --- Auth prompt ----------------------------------------------------------------------

function askForKey(message) {
  const section = document.getElementById('auth');
  if (!section) return;
  const text = document.getElementById('auth-message');
  if (text) text.textContent = message;
  section.hidden = false;
  const input = document.getElementById('api-key');
  if (input && document.activeElement?.tagName !== 'TEXTAREA') input.focus();
}

async function errorFrom(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // Not a JSON error body (a proxy's page, say); the status line has to do.
  }
  if (response.status === 401) {
    askForKey(apiKey()
      ? `The server did not accept this API key: ${message}`
      : 'This server needs an API key for that.');
  }
  if (response.status === 403) {
    message = `Not allowed: ${message}`;
  }
  return new ApiError(response.status, code, message);
}

/**
 * Sends a request and returns the parsed JSON body. Throws ApiError on a refusal (401
 * also shows the key prompt) and marks the server unreachable on a network failure.
 */
export async function api(path, { method = 'GET', body } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }), cache: 'no-store' };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    markOffline();
    throw new ApiError(0, 'unreachable', 'Server unreachable');
  }
  markOnline();
  if (!response.ok) throw await errorFrom(response);
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? response.json() : response.text();
}

/** Fetches a file (an artifact) with the key, as a Response. */
export async function download(path) {
  let response;
  try {
    response = await fetch(path, { headers: headers({ Accept: '*/*' }), cache: 'no-store' });
  } catch {
    markOffline();
    throw new ApiError(0, 'unreachable', 'Server unreachable');
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

// --- Server-sent events over fetch ----------------------------------------------------

/**
 * Follows an SSE stream with fetch (an EventSource cannot send the key header). After a
 * dropped connection it reconnects with `Last-Event-ID` set to the last id received, so
 * a stream that replays from that id (a run's) loses and repeats nothing. Returns a
 * function that stops it.
 *
 * options: onEvent(data, type, id), onOpen(reconnected), done() -> true once the stream
 * has delivered its last event (then it is not reopened).
 */
export function follow(path, { onEvent, onOpen, done }) {
  const controller = new AbortController();
  let stopped = false;
  let lastId = null;
  let opened = 0;
  let delay = 500;

  async function once() {
    const extra = { Accept: 'text/event-stream' };
    if (lastId !== null) extra['Last-Event-ID'] = lastId;
    let response;
    try {
      response = await fetch(path, { headers: headers(extra), signal: controller.signal, cache: 'no-store' });
    } catch (err) {
      if (!stopped) markOffline();
      return 'retry';
    }
    if (!response.ok) {
      const error = await errorFrom(response);
      // A missing key or role is not fixed by retrying; the key prompt restarts pages.
      if (response.status === 401 || response.status === 403 || response.status === 404) {
        return error;
      }
      return 'retry';
    }
    markOnline();
    delay = 500;
    if (onOpen) onOpen(opened > 0);
    opened += 1;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done: finished } = await reader.read();
        if (finished) break;
        buffer += value.replace(/\r\n?/g, '\n');
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatch(block);
        }
      }
    } catch {
      // The connection dropped mid-stream; reconnect below.
    }
    return 'retry';
  }

  function dispatch(block) {
    let id = null;
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length === 0) return;
    // `lagged`: this client fell too far behind and the server closes the stream; the
    // reconnect below resumes with Last-Event-ID, so nothing is lost and nothing to show.
    if (type === 'lagged') return;
    let parsed;
    try {
      parsed = JSON.parse(data.join('\n'));
    } catch {
      return;
    }
    // Remember the id only once the event was handled, so a reconnect resumes after it.
    onEvent(parsed, type, id);
    if (id !== null) lastId = id;
  }

  (async () => {
    while (!stopped) {
      const outcome = await once();
      if (stopped || (done && done())) return;
      if (outcome instanceof ApiError) return;
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
  };
}

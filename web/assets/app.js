// Entry point: picks the page from the URL (relative to the <base> the server wrote),
// wires the API key form, and mounts the page again when the key changes.

import { setApiKey, apiKey, onKeyChange } from './api.js';
import { tickTimes, notify } from './dom.js';
import * as landing from './landing.js';
import * as run from './run.js';

function route() {
  const base = new URL(document.baseURI);
  const here = new URL(location.href);
  const rel = here.pathname.startsWith(base.pathname) ? here.pathname.slice(base.pathname.length) : '';
  const match = rel.match(/^runs\/([^/]+)\/?$/);
  return match ? { page: run, arg: decodeURIComponent(match[1]) } : { page: landing, arg: null };
}

let unmount = null;

function mount() {
  if (unmount) unmount();
  notify('');
  const main = document.getElementById('main');
  const { page, arg } = route();
  unmount = page.mount(main, arg);
}

function wireAuth() {
  const section = document.getElementById('auth');
  const form = document.getElementById('auth-form');
  const input = document.getElementById('api-key');
  const forget = document.getElementById('forget-key');
  const toggle = document.getElementById('key-button');
  const showToggle = () => { toggle.hidden = !apiKey(); };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    input.value = '';
    section.hidden = true;
    setApiKey(key);
  });
  forget.addEventListener('click', () => {
    input.value = '';
    setApiKey('');
  });
  toggle.addEventListener('click', () => {
    section.hidden = !section.hidden;
    if (!section.hidden) input.focus();
  });
  onKeyChange(() => {
    showToggle();
    mount();
  });
  showToggle();
}

wireAuth();
mount();
setInterval(tickTimes, 15000);

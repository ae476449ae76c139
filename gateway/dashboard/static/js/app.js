// The dashboard's controller: loads the servers once, follows the event stream, and turns
// user actions into admin API calls. No polling: after the first GET, data is re-read only in
// reaction to events (debounced), or after the user's own changes.

import { Api, ApiError } from './api.js';
import { ServerCard } from './cards.js';
import { ConfirmDialog, TokenPrompt, openDialog, wireCloseButtons } from './dialogs.js';
import { byId, fill, h, show } from './dom.js';
import { describeTest, fileStamp } from './format.js';
import { ServerForm } from './form.js';
import { EventLog, describeEvent } from './log.js';
import { History } from './sparkline.js';
import { EventStream } from './sse.js';

const REFRESH_DELAY_MS = 250;
const TOAST_MS = 7000;
/** Events newer than this (seconds) are announced to screen readers; older ones are replays. */
const ANNOUNCE_WINDOW_S = 30;

const api = new Api('api/');

/** Everything the page shows, as last read from the API and patched by events. */
const state = {
  /** @type {Map<string, object>} server documents by id, in config order */
  servers: new Map(),
  preferred: null,
  serving: null,
  settings: null,
  loaded: false,
};

/** True while the first load runs (a token entered meanwhile must not start a second one). */
let starting = false;

/** @type {Map<string, ServerCard>} */
const cards = new Map();
const history = new History();
const log = new EventLog(byId('event-log'), byId('event-log-empty'));
const confirmDialog = new ConfirmDialog();

// -- messages ------------------------------------------------------------------------------

let toastTimer = null;

/**
 * Tell screen readers (the polite aria-live region). Each message is appended as its own
 * element, so two messages in a row (a switch and its confirmation) are both read; only the
 * last few are kept.
 */
function announce(text) {
  const region = byId('announcer');
  region.append(h('p', null, text));
  while (region.childElementCount > 5) region.firstElementChild.remove();
}

/** Show a short message (and announce it). */
function toast(text, tone = 'info') {
  const el = byId('toast');
  byId('toast-text').textContent = text;
  el.dataset.tone = tone;
  show(el, true);
  announce(text);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(el, false), tone === 'error' ? TOAST_MS * 2 : TOAST_MS);
}

/** A readable sentence for any error of an API call. */
function describeError(error) {
  if (error instanceof ApiError) {
    if (error.status === 0) return 'The gateway cannot be reached. Check that it is running.';
    if (error.status === 401) return 'This needs the admin token. Use “Admin token” at the top to enter it.';
    if (error.status === 403) return `Refused: ${error.message}`;
    return error.message;
  }
  return error?.message || String(error);
}

function nameOf(id) {
  if (!id) return 'no server';
  return state.servers.get(id)?.name || id;
}

// -- the admin token -------------------------------------------------------------------------

const tokenPrompt = new TokenPrompt(api, {
  onChange: (hasToken) => {
    updateTokenButton();
    if (hasToken) {
      toast('Admin token saved for this tab.');
      if (!state.loaded && !starting) start();
      else stream.restart();
    } else {
      toast('Admin token forgotten.');
    }
  },
});
api.onUnauthorized = (message, info) => tokenPrompt.ask(message, info);

function updateTokenButton() {
  const button = byId('token-button');
  button.textContent = api.token ? 'Token set' : 'Admin token';
  button.setAttribute('aria-label', api.token ? 'Token set: change or forget the admin token' : 'Admin token: enter it');
}

// -- loading and refreshing ----------------------------------------------------------------

/** Apply a `GET /servers` document. */
function applyList(doc) {
  const next = new Map();
  for (const server of doc.servers || []) next.set(server.id, server);
  state.servers = next;
  state.preferred = doc.preferred ?? null;
  state.serving = doc.serving ?? null;
  if (typeof doc.auto_switch === 'boolean') setAutoSwitch(doc.auto_switch);
  history.keepOnly(new Set(next.keys()));
  state.loaded = true;
  scheduleRender();
}

/** Apply one server document (`GET /servers/{id}`, or an add/edit/activate answer). */
function applyServer(server) {
  if (!state.servers.has(server.id)) {
    state.servers.set(server.id, server);
    scheduleRefresh(); // a new server: read the list for its place and the flags
  } else {
    state.servers.set(server.id, server);
  }
  if (server.preferred) state.preferred = server.id;
  if (server.serving) state.serving = server.id;
  scheduleRender();
}

async function loadServers() {
  const doc = await api.get('servers');
  applyList(doc);
  show(byId('load-error'), false);
}

async function loadSettings() {
  state.settings = await api.get('settings');
  const failover = state.settings.failover || {};
  setAutoSwitch(Boolean(failover.auto_switch));
  byId('failback').value = failover.failback || 'auto';
  const hold = byId('failback-hold');
  if (document.activeElement !== hold) hold.value = failover.failback_hold ?? '';
  for (const id of ['auto-switch', 'failback', 'failback-hold']) byId(id).disabled = false;
}

function setAutoSwitch(on) {
  byId('auto-switch').checked = on;
}

// Debounced refetching, in reaction to events: several events in a burst cost one request.
const pending = { all: false, ids: new Set(), settings: false, timer: null, chain: Promise.resolve() };

/** Re-read one server (id), or the whole list (no id), soon. */
function scheduleRefresh(id = null, { settings = false } = {}) {
  if (id) pending.ids.add(id);
  else pending.all = true;
  if (settings) pending.settings = true;
  clearTimeout(pending.timer);
  pending.timer = setTimeout(() => {
    const work = { all: pending.all, ids: [...pending.ids], settings: pending.settings };
    pending.all = false;
    pending.ids.clear();
    pending.settings = false;
    pending.chain = pending.chain.then(() => refresh(work)).catch(() => {});
  }, REFRESH_DELAY_MS);
}

async function refresh({ all, ids, settings }) {
  try {
    if (all) {
      await loadServers();
    } else {
      for (const id of ids) {
        try {
          applyServer(await api.get(`servers/${encodeURIComponent(id)}`));
        } catch (error) {
          if (error instanceof ApiError && error.status === 404) {
            await loadServers();
            break;
          }
          throw error;
        }
      }
    }
    if (settings) await loadSettings();
  } catch (error) {
    console.warn('dashboard: refresh failed', error);
  }
}

// -- rendering -------------------------------------------------------------------------------

let renderQueued = false;

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

const cardActions = {
  onActivate: activate,
  onTest: testOne,
  onEdit: (id, opener) => {
    const server = state.servers.get(id);
    if (server) form.open('edit', server, opener);
  },
  onDelete: confirmDelete,
  onServeNow: (id) => activate(id, null),
};

function render() {
  const list = byId('server-list');
  const ids = [...state.servers.keys()];
  // Drop cards of deleted servers, create new ones, keep the others (and their focus).
  for (const [id, card] of cards) {
    if (!state.servers.has(id)) {
      card.el.remove();
      cards.delete(id);
    }
  }
  ids.forEach((id, index) => {
    let card = cards.get(id);
    if (!card) {
      card = new ServerCard(id, cardActions);
      cards.set(id, card);
    }
    const server = state.servers.get(id);
    card.update({ ...server, preferred: state.preferred === id, serving: state.serving === id });
    card.renderHistory(history.samples(id), history.range());
    if (list.children[index] !== card.el) list.insertBefore(card.el, list.children[index] || null);
  });

  show(byId('empty-state'), state.loaded && ids.length === 0);
  const up = [...state.servers.values()].filter((s) => s.status?.state === 'up').length;
  byId('servers-summary').textContent = state.loaded
    ? `${ids.length} server${ids.length === 1 ? '' : 's'} · ${up} up · serving: ${state.serving ? nameOf(state.serving) : 'none'}`
    : 'Loading…';
}

// -- live events -----------------------------------------------------------------------------

function isFresh(ts) {
  return Math.abs(Date.now() / 1000 - ts) < ANNOUNCE_WINDOW_S;
}

/**
 * One event of the stream. Its SSE data is the bus event {id, kind, ts, data}.
 */
function onEvent(kind, payload) {
  const event = payload && typeof payload === 'object' && 'data' in payload
    ? payload
    : { kind, ts: Date.now() / 1000, data: payload || {} };
  const data = event.data || {};
  const ts = Number(event.ts) || Date.now() / 1000;

  const entry = describeEvent(kind, data, nameOf);
  if (entry) log.add({ ...entry, id: event.id, ts, kind });

  switch (kind) {
    case 'server.checked': {
      history.add(data.server, ts, { latency: data.latency, queue: data.queue_remaining, ok: data.ok });
      const server = state.servers.get(data.server);
      if (server) {
        const status = { ...(server.status || {}) };
        if (data.state) status.state = data.state;
        if (data.latency !== null && data.latency !== undefined) status.latency = data.latency;
        status.queue_remaining = data.queue_remaining ?? null;
        if ('http_status' in data) status.http_status = data.http_status;
        status.last_error = data.error ?? null;
        status.last_check = ts;
        // A result that disagrees with the verdict means a change is being confirmed.
        status.checking = Boolean(data.ok) !== (status.state === 'up');
        state.servers.set(data.server, { ...server, status });
      }
      scheduleRender();
      break;
    }
    case 'server.state': {
      const server = state.servers.get(data.server);
      if (server) {
        state.servers.set(data.server, {
          ...server,
          status: { ...(server.status || {}), state: data.state, checking: false, last_change: ts },
        });
      }
      if (isFresh(ts)) announce(entry.text);
      scheduleRender();
      scheduleRefresh(data.server);
      break;
    }
    case 'serving.changed':
      state.serving = data.serving ?? null;
      if ('preferred' in data) state.preferred = data.preferred ?? null;
      if (isFresh(ts)) announce(entry.text);
      scheduleRender();
      break;
    case 'server.restarted':
      scheduleRefresh(data.server);
      break;
    case 'admin.change':
      scheduleRefresh(null, {
        settings: ['settings.updated', 'config.imported'].includes(data.action),
      });
      break;
    case 'config.applied':
    case 'resync':
    case 'events.dropped':
      scheduleRefresh(null, { settings: true });
      break;
    default:
      break;
  }
}

const CONNECTION_TEXT = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
  unauthorized: 'Needs the admin token',
};

let everLive = false;

const stream = new EventStream(api, {
  onEvent,
  onState: (connection) => {
    const el = byId('connection');
    el.dataset.state = connection;
    byId('connection-text').textContent = CONNECTION_TEXT[connection] || connection;
    el.title = connection === 'live' ? 'Receiving live updates from the gateway' : '';
    if (connection === 'live') {
      // After a reconnect (or a failed first load), re-read everything once: the gateway may
      // have restarted, or was not reachable when the page opened.
      if (everLive || !state.loaded) scheduleRefresh(null, { settings: true });
      everLive = true;
    }
  },
});

// -- actions ---------------------------------------------------------------------------------

async function activate(id, radio) {
  const name = nameOf(id);
  try {
    const server = await api.post(`servers/${encodeURIComponent(id)}/activate`);
    state.preferred = id;
    applyServer(server);
    toast(`${name} is now the active server.`);
  } catch (error) {
    toast(`Could not select ${name}: ${describeError(error)}`, 'error');
    scheduleRender(); // put the radios back as they were
    radio?.focus();
  }
}

async function testOne(id, card) {
  card.testButton.disabled = true;
  card.showTest('Testing…');
  try {
    const result = await api.post(`servers/${encodeURIComponent(id)}/test`);
    card.showTest(result);
    announce(`${nameOf(id)}: ${describeTest(result)}`);
  } catch (error) {
    card.showTest(null);
    toast(`Test of ${nameOf(id)} failed: ${describeError(error)}`, 'error');
  } finally {
    card.testButton.disabled = false;
  }
}

async function testAll() {
  const button = byId('test-all');
  button.disabled = true;
  button.textContent = 'Testing…';
  for (const card of cards.values()) card.showTest('Testing…');
  try {
    const report = await api.post('servers/test');
    const results = report?.results || [];
    for (const result of results) cards.get(result.server)?.showTest(result);
    const ok = results.filter((r) => r.ok).length;
    toast(`Test all: ${ok} of ${results.length} server${results.length === 1 ? '' : 's'} passed.`, ok === results.length ? 'info' : 'warn');
  } catch (error) {
    for (const card of cards.values()) card.showTest(null);
    toast(`Test all failed: ${describeError(error)}`, 'error');
  } finally {
    button.disabled = false;
    button.textContent = 'Test all';
  }
}

function confirmDelete(id, opener) {
  const server = state.servers.get(id);
  if (!server) return;
  const name = server.name || id;
  confirmDialog.open({
    title: `Delete ${name}?`,
    text: `“${name}” (${server.url}) will be removed from the gateway and its configuration file.`,
    okLabel: 'Delete',
    opener,
    action: async () => {
      await api.delete(`servers/${encodeURIComponent(id)}`);
      state.servers.delete(id);
      scheduleRender();
      scheduleRefresh();
      toast(`${name} deleted.`);
    },
    describeError: (error) => {
      if (error instanceof ApiError && error.status === 409) {
        if (state.preferred === id) {
          return `“${name}” is the active server and cannot be deleted. Select another server as active first, then delete this one.`;
        }
        if (state.serving === id) {
          return `“${name}” is serving traffic right now (after a failover) and cannot be deleted. Select another server first.`;
        }
        return `Cannot delete “${name}”: ${error.message}`;
      }
      return `Cannot delete “${name}”: ${describeError(error)}`;
    },
  });
}

const form = new ServerForm(api, {
  describeError,
  onSaved: (server, mode) => {
    applyServer(server);
    toast(mode === 'add' ? `${server.name} added.` : `${server.name} saved.`);
  },
});

async function exportConfig() {
  const button = byId('export-config');
  button.disabled = true;
  try {
    const text = await api.request('GET', 'config', { query: { format: 'yaml' }, as: 'text' });
    const url = URL.createObjectURL(new Blob([text], { type: 'application/yaml' }));
    const link = h('a', { href: url, download: `comfyui-gateway-${fileStamp()}.yaml`, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    toast('Configuration exported (secrets are masked).');
  } catch (error) {
    toast(`Export failed: ${describeError(error)}`, 'error');
  } finally {
    button.disabled = false;
  }
}

// Import: pick a file, choose replace or merge, show the validation errors of a bad file.
const importDialog = byId('import-dialog');
const importInput = byId('import-file');
let importFile = null;

function showImportErrors(title, errors) {
  byId('import-errors-title').textContent = title;
  fill(
    byId('import-errors-list'),
    errors.map((e) => {
      const where = [e.location || 'file', e.line ? `line ${e.line}` : ''].filter(Boolean).join(', ');
      return h('li', null, h('code', null, where), ': ', e.message || '');
    }),
  );
  const box = byId('import-errors');
  show(box, true);
  box.focus();
}

async function runImport() {
  if (!importFile) return;
  const button = byId('import-ok');
  button.disabled = true;
  show(byId('import-errors'), false);
  const mode = importDialog.querySelector('input[name="import-mode"]:checked')?.value || 'replace';
  try {
    const text = await importFile.text();
    const isJson = /\.json$/i.test(importFile.name) || importFile.type === 'application/json';
    const report = await api.request('PUT', 'config', {
      query: { mode },
      body: text,
      contentType: isJson ? 'application/json' : 'application/yaml',
    });
    importDialog.close('done');
    const parts = [`Imported ${importFile.name} (${mode}): ${report.servers.length} server(s)`];
    if (report.added?.length) parts.push(`added ${report.added.join(', ')}`);
    if (report.removed?.length) parts.push(`removed ${report.removed.join(', ')}`);
    if (report.changed?.length) parts.push(`changed ${report.changed.join(', ')}`);
    toast(`${parts.join('; ')}.`);
    scheduleRefresh(null, { settings: true });
  } catch (error) {
    if (error instanceof ApiError && error.errors.length) {
      showImportErrors(`Nothing was changed. ${error.message}:`, error.errors);
    } else {
      showImportErrors(`Nothing was changed. ${describeError(error)}`, []);
    }
  } finally {
    button.disabled = false;
  }
}

// Settings (auto-switch and failback).
async function patchFailover(change, revert) {
  try {
    state.settings = await api.patch('settings', { failover: change });
    const failover = state.settings.failover || {};
    setAutoSwitch(Boolean(failover.auto_switch));
    byId('failback').value = failover.failback;
    byId('failback-hold').value = failover.failback_hold;
    return true;
  } catch (error) {
    revert();
    toast(`Setting not saved: ${describeError(error)}`, 'error');
    return false;
  }
}

// -- wiring ----------------------------------------------------------------------------------

function wire() {
  wireCloseButtons();
  byId('token-button').addEventListener('click', () => tokenPrompt.manage());
  byId('toast-close').addEventListener('click', () => show(byId('toast'), false));
  byId('add-server').addEventListener('click', (event) => form.open('add', null, event.currentTarget));
  byId('test-all').addEventListener('click', testAll);
  byId('export-config').addEventListener('click', exportConfig);
  byId('import-config').addEventListener('click', () => importInput.click());
  importInput.addEventListener('change', () => {
    importFile = importInput.files?.[0] || null;
    importInput.value = ''; // the same file can be picked again
    if (!importFile) return;
    byId('import-file-name').textContent = importFile.name;
    show(byId('import-errors'), false);
    openDialog(importDialog, { opener: byId('import-config'), focus: byId('import-ok') });
  });
  byId('import-form').addEventListener('submit', (event) => {
    event.preventDefault();
    runImport();
  });
  byId('clear-log').addEventListener('click', () => log.clear());

  const auto = byId('auto-switch');
  auto.addEventListener('change', async () => {
    const on = auto.checked;
    if (await patchFailover({ auto_switch: on }, () => setAutoSwitch(!on))) {
      toast(`Auto-switch on failure is ${on ? 'on' : 'off'}.`);
    }
  });
  const failback = byId('failback');
  failback.addEventListener('change', async () => {
    const previous = state.settings?.failover?.failback || 'auto';
    if (await patchFailover({ failback: failback.value }, () => { failback.value = previous; })) {
      toast(`Failback is ${failback.value === 'auto' ? 'automatic' : 'manual'}.`);
    }
  });
  const hold = byId('failback-hold');
  hold.addEventListener('change', async () => {
    const previous = state.settings?.failover?.failback_hold ?? '';
    const value = Number(hold.value);
    if (hold.value.trim() === '' || !Number.isFinite(value) || value < 0) {
      hold.value = previous;
      toast('The hold time must be a number of seconds (0 or more).', 'error');
      return;
    }
    if (await patchFailover({ failback_hold: value }, () => { hold.value = previous; })) {
      toast(`Failback hold is ${value} s.`);
    }
  });
}

async function start() {
  byId('servers-summary').textContent = 'Loading…';
  starting = true;
  try {
    await loadServers();
  } catch (error) {
    const banner = byId('load-error');
    banner.textContent = error instanceof ApiError && error.status === 401
      ? 'This gateway protects its admin API: use “Admin token” at the top to enter the token.'
      : `Cannot load the servers: ${describeError(error)}`;
    show(banner, true);
    byId('servers-summary').textContent = '';
    if (!(error instanceof ApiError && error.status === 401)) stream.start();
    return;
  } finally {
    starting = false;
  }
  loadSettings().catch((error) => toast(`Cannot load the settings: ${describeError(error)}`, 'error'));
  stream.start();
}

wire();
updateTokenButton();
start();

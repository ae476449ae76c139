// The add / edit server dialog: collects the form into an API body, shows the API's field
// errors next to their fields (422 `errors[].location`), and tests unsaved values.

import { ApiError } from './api.js';
import { byId, fill, h, show } from './dom.js';
import { describeTest } from './format.js';
import { openDialog } from './dialogs.js';

/**
 * Form controls by the API location they edit. A 422 error whose location starts with one of
 * these keys is shown under that control (the longest matching key wins).
 */
const FIELDS = {
  id: 'f-id',
  name: 'f-name',
  url: 'f-url',
  enabled: 'f-enabled',
  priority: 'f-priority',
  timeouts: 'f-timeout-connect',
  'timeouts.connect': 'f-timeout-connect',
  'timeouts.read': 'f-timeout-read',
  max_connections: 'f-max-connections',
  auth: 'f-bearer',
  'auth.bearer_token': 'f-bearer',
  'auth.query_token': 'f-query-token',
  'auth.basic': 'f-basic-user',
  'auth.basic.username': 'f-basic-user',
  'auth.basic.password': 'f-basic-password',
  'auth.headers': 'f-headers',
};

/** Find the control for an error location ("url", "auth.headers.X-Key", "body.url"...). */
export function controlFor(location) {
  const loc = String(location || '').replace(/\[\d+\]/g, '');
  const parts = loc.split('.').filter(Boolean);
  // Try the location itself, then without leading segments (e.g. "server.url" -> "url").
  for (let start = 0; start < parts.length; start += 1) {
    for (let end = parts.length; end > start; end -= 1) {
      const key = parts.slice(start, end).join('.');
      if (FIELDS[key]) return FIELDS[key];
    }
  }
  return null;
}

/** Parse the "Name: value" lines of the extra headers field; throws with the bad line. */
export function parseHeaders(text) {
  const headers = {};
  const lines = String(text || '').split(/\r?\n/);
  lines.forEach((raw, index) => {
    const line = raw.trim();
    if (!line) return;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new Error(`Line ${index + 1}: write “Name: value”.`);
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  });
  return headers;
}

export class ServerForm {
  /**
   * @param {import('./api.js').Api} api
   * @param {{onSaved: (server: object, mode: 'add'|'edit') => void, describeError: (e: Error) => string}} hooks
   */
  constructor(api, { onSaved, describeError }) {
    this.api = api;
    this.onSaved = onSaved;
    this.describeError = describeError;
    this.dialog = byId('server-dialog');
    this.form = byId('server-form');
    this.title = byId('server-dialog-title');
    this.banner = byId('server-form-error');
    this.testButton = byId('server-test');
    this.saveButton = byId('server-save');
    this.testResult = byId('server-test-result');
    this.credentials = byId('credentials');
    this.mode = 'add';
    this.server = null;
    this.busy = false;

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.save();
    });
    this.testButton.addEventListener('click', () => this.test());
    // An edited field loses its error at once.
    this.form.addEventListener('input', (event) => {
      const input = event.target;
      if (input.getAttribute('aria-invalid') === 'true') this.clearFieldError(input.id);
    });
  }

  /** The control element for an id. */
  el(id) {
    return byId(id);
  }

  /**
   * Open the dialog to add a server (server null) or edit one.
   * @param {'add'|'edit'} mode
   * @param {object|null} server the API document of the server to edit
   * @param {Element|null} opener focus returns here on close
   */
  open(mode, server = null, opener = null) {
    this.mode = mode;
    this.server = server;
    this.form.reset();
    this.clearErrors();
    show(this.testResult, false);
    this.title.textContent = mode === 'add' ? 'Add server' : `Edit ${server.name || server.id}`;
    this.saveButton.textContent = mode === 'add' ? 'Add server' : 'Save changes';

    const v = (id, value) => {
      this.el(id).value = value === null || value === undefined ? '' : String(value);
    };
    const idInput = this.el('f-id');
    idInput.readOnly = mode === 'edit';
    idInput.setAttribute('aria-readonly', mode === 'edit' ? 'true' : 'false');
    const read = this.el('f-timeout-read');
    if (mode === 'edit') {
      v('f-name', server.name);
      v('f-url', server.url);
      v('f-id', server.id);
      this.el('f-enabled').checked = server.enabled !== false;
      v('f-priority', server.priority);
      v('f-timeout-connect', server.timeouts?.connect);
      v('f-timeout-read', server.timeouts?.read);
      v('f-max-connections', server.max_connections);
      const auth = server.auth || {};
      v('f-bearer', auth.bearer_token);
      v('f-query-token', auth.query_token);
      v('f-basic-user', auth.basic?.username);
      v('f-basic-password', auth.basic?.password);
      v(
        'f-headers',
        Object.entries(auth.headers || {})
          .map(([name, value]) => `${name}: ${value}`)
          .join('\n'),
      );
      read.placeholder = 'no limit';
      this.credentials.open = Boolean(server.auth);
    } else {
      read.placeholder = '300';
      this.credentials.open = false;
    }
    openDialog(this.dialog, { opener, focus: this.el('f-name') });
  }

  /** Read a number input: undefined when empty, NaN when not a number. */
  number(id, { integer = false } = {}) {
    const input = this.el(id);
    if (input.validity.badInput) return Number.NaN;
    const text = input.value.trim();
    if (text === '') return undefined;
    const n = Number(text);
    return integer && !Number.isInteger(n) ? Number.NaN : n;
  }

  /**
   * Build the API body from the form. For an edit it is a JSON merge patch: a cleared secret is
   * null (removed), an untouched one stays "********" (kept by the API).
   * Returns {body, errors} where errors are local problems [{location, message}].
   */
  collect() {
    const errors = [];
    const text = (id) => this.el(id).value.trim();
    const body = {};
    const name = text('f-name');
    const url = text('f-url');
    const id = text('f-id');
    if (name) body.name = name;
    if (url) body.url = url;
    else errors.push({ location: 'url', message: 'Enter the server’s URL, e.g. http://127.0.0.1:8188.' });
    if (!name && !id) errors.push({ location: 'name', message: 'Enter a name (or an ID).' });
    if (id && this.mode === 'add') body.id = id;
    body.enabled = this.el('f-enabled').checked;

    const numberField = (inputId, location, target, key, opts) => {
      const n = this.number(inputId, opts);
      if (Number.isNaN(n)) errors.push({ location, message: opts?.integer ? 'Enter a whole number.' : 'Enter a number.' });
      else if (n !== undefined) target[key] = n;
    };
    numberField('f-priority', 'priority', body, 'priority', { integer: true });
    numberField('f-max-connections', 'max_connections', body, 'max_connections', { integer: true });
    const timeouts = {};
    numberField('f-timeout-connect', 'timeouts.connect', timeouts, 'connect');
    numberField('f-timeout-read', 'timeouts.read', timeouts, 'read');
    if (Object.keys(timeouts).length) body.timeouts = timeouts;

    // Credentials.
    const before = (this.mode === 'edit' && this.server?.auth) || {};
    const auth = {};
    const secret = (inputId, key) => {
      const value = this.el(inputId).value;
      if (value) auth[key] = value;
      else if (before[key] !== undefined && before[key] !== null) auth[key] = null;
    };
    secret('f-bearer', 'bearer_token');
    secret('f-query-token', 'query_token');
    const user = text('f-basic-user');
    const password = this.el('f-basic-password').value;
    if (user || password) {
      if (!user) errors.push({ location: 'auth.basic.username', message: 'Enter the user name for the password.' });
      else if (!password) errors.push({ location: 'auth.basic.password', message: 'Enter the password for this user.' });
      else auth.basic = { username: user, password };
    } else if (before.basic) {
      auth.basic = null;
    }
    try {
      const headers = parseHeaders(this.el('f-headers').value);
      for (const name of Object.keys(before.headers || {})) {
        if (!(name in headers)) headers[name] = null; // merge patch: removed header
      }
      if (Object.keys(headers).length) auth.headers = headers;
    } catch (error) {
      errors.push({ location: 'auth.headers', message: error.message });
    }
    const anyCredential = Object.values(auth).some((value) => value !== null);
    if (anyCredential) body.auth = auth;
    else if (this.mode === 'edit' && this.server?.auth) body.auth = null;
    return { body, errors };
  }

  /** The body to test: the unsaved values as a whole server (masks resolved by the API). */
  testBody() {
    const { body, errors } = this.collect();
    if (this.mode === 'edit') {
      body.id = this.server.id;
      if (body.auth) {
        // A test takes a whole server, not a patch: drop removed members.
        const auth = Object.fromEntries(Object.entries(body.auth).filter(([, value]) => value !== null));
        if (auth.headers) {
          auth.headers = Object.fromEntries(Object.entries(auth.headers).filter(([, value]) => value !== null));
        }
        body.auth = auth;
      } else {
        delete body.auth;
      }
    }
    return { body, errors };
  }

  async save() {
    if (this.busy) return;
    this.clearErrors();
    const { body, errors } = this.collect();
    if (errors.length) {
      this.showErrors(errors);
      return;
    }
    this.setBusy(true, this.saveButton, 'Saving…');
    try {
      const saved = this.mode === 'add'
        ? await this.api.post('servers', body)
        : await this.api.patch(`servers/${encodeURIComponent(this.server.id)}`, body);
      this.dialog.close('saved');
      this.onSaved(saved, this.mode);
    } catch (error) {
      this.showApiError(error);
    } finally {
      this.setBusy(false);
    }
  }

  async test() {
    if (this.busy) return;
    this.clearErrors();
    const { body, errors } = this.testBody();
    if (errors.length) {
      this.showErrors(errors);
      return;
    }
    this.setBusy(true, this.testButton, 'Testing…');
    this.testResult.dataset.ok = 'pending';
    fill(this.testResult, 'Testing the connection…');
    show(this.testResult, true);
    try {
      const report = await this.api.post('servers/test', body);
      const result = report?.results?.[0];
      this.testResult.dataset.ok = result?.ok ? 'true' : 'false';
      fill(this.testResult, h('strong', null, result?.ok ? 'Test passed: ' : 'Test failed: '), describeTest(result));
    } catch (error) {
      show(this.testResult, false);
      this.showApiError(error);
    } finally {
      this.setBusy(false);
    }
  }

  setBusy(busy, button = null, label = '') {
    this.busy = busy;
    for (const b of [this.saveButton, this.testButton]) b.disabled = busy;
    if (busy && button) {
      button.dataset.label = button.textContent;
      button.textContent = label;
    } else {
      for (const b of [this.saveButton, this.testButton]) {
        if (b.dataset.label) {
          b.textContent = b.dataset.label;
          delete b.dataset.label;
        }
      }
    }
  }

  /** Show an API error: field errors beside their fields, the rest in the banner. */
  showApiError(error) {
    if (error instanceof ApiError && error.errors.length) {
      this.showErrors(error.errors, error.message);
    } else {
      this.showErrors([], this.describeError(error));
    }
  }

  /**
   * @param {Array<{location: string, message: string}>} errors
   * @param {string} [summary]
   */
  showErrors(errors, summary = '') {
    const unplaced = [];
    let first = null;
    for (const error of errors) {
      const id = controlFor(error.location);
      if (!id) {
        unplaced.push(error.location ? `${error.location}: ${error.message}` : error.message);
        continue;
      }
      const input = this.el(id);
      const slot = byId(`${id}-error`);
      slot.textContent = slot.hidden ? error.message : `${slot.textContent} ${error.message}`;
      show(slot, true);
      input.setAttribute('aria-invalid', 'true');
      if (input.closest('details')) input.closest('details').open = true;
      first = first || input;
    }
    const lines = [];
    if (summary && (unplaced.length || !first)) lines.push(summary);
    else if (first) lines.push(errors.length === 1 ? 'Please correct the field marked below.' : 'Please correct the fields marked below.');
    lines.push(...unplaced);
    fill(this.banner, lines.map((line) => h('p', null, line)));
    show(this.banner, lines.length > 0);
    (first || this.banner).focus();
  }

  clearFieldError(id) {
    const input = this.el(id);
    input.removeAttribute('aria-invalid');
    const slot = document.getElementById(`${id}-error`);
    if (slot) {
      slot.textContent = '';
      show(slot, false);
    }
  }

  clearErrors() {
    for (const id of new Set(Object.values(FIELDS))) this.clearFieldError(id);
    fill(this.banner);
    show(this.banner, false);
  }
}


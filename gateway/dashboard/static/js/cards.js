// One card per server: identity, live state, statistics, sparkline and actions.
//
// A card is built once per server id and then updated in place, so keyboard focus and the
// radio selection survive live updates. Every API string goes through textContent.

import { h, fill, show } from './dom.js';
import {
  STATE_LABELS,
  describeDevice,
  describeTest,
  displayState,
  formatClock,
  formatDateTime,
  formatLatency,
  formatQueue,
} from './format.js';
import { describeHistory, describeSpan, sparkline } from './sparkline.js';

let serial = 0;

export class ServerCard {
  /**
   * @param {string} id server id
   * @param {{onActivate: Function, onTest: Function, onEdit: Function, onDelete: Function, onServeNow: Function}} actions
   */
  constructor(id, actions) {
    this.id = id;
    this.server = null;
    const uid = `srv-${(serial += 1)}`;

    this.radio = h('input', {
      type: 'radio',
      name: 'active-server',
      id: `${uid}-radio`,
      class: 'card-radio',
      'aria-describedby': `${uid}-state`,
      onchange: () => {
        if (this.radio.checked) actions.onActivate(this.id, this.radio);
      },
    });
    this.radio.value = id;
    this.nameLabel = h('label', { for: `${uid}-radio` });
    this.name = h('h3', { class: 'card-name', id: `${uid}-name` }, this.nameLabel);
    this.url = h('p', { class: 'card-url' });
    this.stateText = h('span', { class: 'state-text' });
    this.state = h(
      'p',
      { class: 'state-pill', id: `${uid}-state` },
      h('span', { class: 'state-icon', 'aria-hidden': 'true' }),
      h('span', { class: 'visually-hidden' }, 'State: '),
      this.stateText,
    );

    this.badgePreferred = h('span', { class: 'badge badge-preferred', title: 'Selected by the admin' }, 'Preferred');
    this.badgeServing = h('span', { class: 'badge badge-serving', title: 'Traffic goes here now' }, 'Serving');
    this.badgeDisabled = h('span', { class: 'badge badge-disabled' }, 'Disabled');
    // After a failover the preferred server is not serving: offer to move traffic back now.
    this.serveNow = h(
      'button',
      { type: 'button', class: 'btn btn-small btn-link', onclick: () => actions.onServeNow(this.id) },
      'Serve from here now',
    );
    this.badges = h(
      'div',
      { class: 'badges' },
      this.badgePreferred,
      this.badgeServing,
      this.badgeDisabled,
      this.serveNow,
    );

    this.latency = h('dd', { class: 'stat-latency' });
    this.queue = h('dd', { class: 'stat-queue' });
    this.version = h('dd', { class: 'stat-version' });
    this.lastCheck = h('dd', { class: 'stat-check' });
    this.stats = h(
      'dl',
      { class: 'stats' },
      h('div', null, h('dt', null, 'Latency'), this.latency),
      h('div', null, h('dt', null, 'Queue'), this.queue),
      h('div', null, h('dt', null, 'ComfyUI'), this.version),
      h('div', null, h('dt', null, 'Last check'), this.lastCheck),
    );

    this.devices = h('ul', { class: 'devices', 'aria-label': 'GPU and memory' });

    this.sparkHolder = h('div', { class: 'spark-holder' });
    this.sparkWindow = h('span', { class: 'legend-window' }, 'last 10 min');
    this.spark = h(
      'figure',
      { class: 'spark' },
      this.sparkHolder,
      h(
        'figcaption',
        { class: 'spark-legend' },
        h('span', { class: 'legend legend-latency' }, 'Latency'),
        h('span', { class: 'legend legend-queue' }, 'Queue'),
        h('span', { class: 'legend legend-down' }, 'Failed check'),
        this.sparkWindow,
      ),
    );

    this.errorText = h('span', { class: 'error-text' });
    this.lastError = h('p', { class: 'last-error' }, h('strong', null, 'Last error: '), this.errorText);
    this.testResult = h('p', { class: 'card-test', role: 'status' });
    show(this.testResult, false);

    this.testButton = h('button', { type: 'button', class: 'btn btn-small', onclick: () => actions.onTest(this.id, this) }, 'Test');
    this.editButton = h('button', { type: 'button', class: 'btn btn-small', onclick: () => actions.onEdit(this.id, this.editButton) }, 'Edit');
    this.deleteButton = h(
      'button',
      { type: 'button', class: 'btn btn-small btn-danger-ghost', onclick: () => actions.onDelete(this.id, this.deleteButton) },
      'Delete',
    );

    this.el = h(
      'li',
      { class: 'card', dataset: { serverId: id }, 'aria-labelledby': `${uid}-name` },
      h(
        'div',
        { class: 'card-head' },
        this.radio,
        h('div', { class: 'card-title' }, this.name, this.url),
        this.state,
      ),
      this.badges,
      this.stats,
      this.devices,
      this.spark,
      this.lastError,
      this.testResult,
      h('div', { class: 'card-actions' }, this.testButton, this.editButton, this.deleteButton),
    );
  }

  /**
   * Show a server document of the API ({...config, status, preferred, serving}).
   * @param {object} server
   */
  update(server) {
    this.server = server;
    const status = server.status || {};
    const name = server.name || server.id;
    const state = displayState(status);

    this.nameLabel.textContent = name;
    this.url.textContent = server.url || '';
    this.url.title = server.url || '';
    this.el.dataset.state = state;
    this.el.classList.toggle('is-serving', Boolean(server.serving));
    this.el.classList.toggle('is-disabled', server.enabled === false);
    this.state.dataset.state = state;
    this.stateText.textContent = STATE_LABELS[state];
    this.state.title = status.last_change ? `Since ${formatDateTime(status.last_change)}` : '';

    if (document.activeElement !== this.radio || this.radio.checked !== Boolean(server.preferred)) {
      this.radio.checked = Boolean(server.preferred);
    }
    this.radio.setAttribute('aria-label', `Use ${name} as the active server`);
    show(this.badgePreferred, Boolean(server.preferred));
    show(this.badgeServing, Boolean(server.serving));
    show(this.badgeDisabled, server.enabled === false);
    show(this.serveNow, Boolean(server.preferred) && !server.serving && server.enabled !== false);

    this.latency.textContent = formatLatency(status.latency);
    this.queue.textContent = formatQueue(status.queue_remaining);
    this.version.textContent = status.comfyui_version || '—';
    this.lastCheck.textContent = formatClock(status.last_check);
    this.lastCheck.title = formatDateTime(status.last_check);

    this.renderDevices(Array.isArray(status.devices) ? status.devices : []);

    this.errorText.textContent = status.last_error || '';
    show(this.lastError, Boolean(status.last_error));

    this.testButton.setAttribute('aria-label', `Test ${name}`);
    this.editButton.setAttribute('aria-label', `Edit ${name}`);
    this.deleteButton.setAttribute('aria-label', `Delete ${name}`);
  }

  renderDevices(devices) {
    const items = devices.map((device) => {
      const d = describeDevice(device);
      const bar = d.usedFraction === null
        ? null
        : h(
          'span',
          { class: 'vram-bar', 'aria-hidden': 'true' },
          h('span', { class: 'vram-used', style: { width: `${(d.usedFraction * 100).toFixed(1)}%` } }),
        );
      return h(
        'li',
        { class: 'device' },
        h('span', { class: 'device-name', title: d.name }, d.name),
        d.hasVram ? h('span', { class: 'device-vram' }, `VRAM ${d.vramText}`) : h('span', { class: 'device-vram' }, d.type.toUpperCase()),
        bar,
      );
    });
    fill(this.devices, items);
    show(this.devices, items.length > 0);
  }

  /** Redraw the sparkline from the history store. */
  renderHistory(samples, range) {
    const label = describeHistory(samples, range);
    fill(this.sparkHolder, sparkline(samples, range, `${this.server?.name || this.id}: ${label}`));
    this.sparkWindow.textContent = describeSpan(range);
  }

  /** Show the outcome of a connection test (or `null` to hide it, or a string while running). */
  showTest(result) {
    if (result === null) {
      show(this.testResult, false);
      return;
    }
    if (typeof result === 'string') {
      this.testResult.dataset.ok = 'pending';
      this.testResult.textContent = result;
    } else {
      this.testResult.dataset.ok = result.ok ? 'true' : 'false';
      this.testResult.textContent = `Test: ${describeTest(result)}`;
    }
    show(this.testResult, true);
  }
}

// The event log: switches, state changes and admin changes, newest first, as text.

import { h, show } from './dom.js';
import { formatClock, formatDateTime } from './format.js';

const MAX_ENTRIES = 200;

const SWITCH_LABELS = {
  failover: 'Failover',
  failback: 'Failback',
  recover: 'Recovered',
  switch: 'Switch',
};

const ADMIN_ACTIONS = {
  'server.added': (name) => `Server ${name} added`,
  'server.updated': (name, data) =>
    `Server ${name} edited${Array.isArray(data.fields) && data.fields.length ? ` (${data.fields.join(', ')})` : ''}`,
  'server.deleted': (name) => `Server ${name} deleted`,
  'server.activated': (name) => `${name} selected as the active server`,
  'settings.updated': (_name, data) =>
    `Settings changed${Array.isArray(data.fields) && data.fields.length ? `: ${data.fields.join(', ')}` : ''}`,
  'config.imported': (_name, data) =>
    `Configuration imported (${data.mode || 'replace'}${data.migrated ? ', migrated from the old format' : ''})`,
};

/**
 * Describe one bus event for the log, or null when it is not worth a line.
 * @param {string} kind
 * @param {object} data
 * @param {(id: string|null) => string} nameOf server id -> display name
 * @returns {{tag: string, tone: string, text: string} | null}
 */
export function describeEvent(kind, data, nameOf) {
  const reason = data.reason ? ` — ${data.reason}` : '';
  switch (kind) {
    case 'server.state':
      return {
        tag: data.state === 'up' ? 'Up' : data.state === 'down' ? 'Down' : 'State',
        tone: data.state === 'up' ? 'good' : data.state === 'down' ? 'bad' : 'neutral',
        text: `${nameOf(data.server)} is ${data.state}${data.previous ? ` (was ${data.previous})` : ''}${reason}`,
      };
    case 'serving.changed': {
      const label = SWITCH_LABELS[data.kind] || 'Switch';
      const target = data.serving ? nameOf(data.serving) : 'no server';
      const from = data.previous ? ` from ${nameOf(data.previous)}` : '';
      return {
        tag: label,
        tone: data.kind === 'failover' ? 'warn' : 'info',
        text: `Traffic moved${from} to ${target}${reason}`,
      };
    }
    case 'server.restarted':
      return {
        tag: 'Restart',
        tone: 'warn',
        text: `${nameOf(data.server)} restarted${data.evidence ? ` (${data.evidence})` : ''}`,
      };
    case 'admin.change': {
      const describe = ADMIN_ACTIONS[data.action];
      const name = data.server ? nameOf(data.server) : '';
      return {
        tag: 'Admin',
        tone: 'neutral',
        text: describe ? describe(name, data) : `${data.action || 'change'}${name ? ` ${name}` : ''}`,
      };
    }
    case 'config.applied':
      // Admin changes are logged as admin.change; a reload from the file is news.
      if (String(data.reason || '').startsWith('admin')) return null;
      return { tag: 'Config', tone: 'neutral', text: `Configuration applied${reason}` };
    default:
      return null;
  }
}

export class EventLog {
  /**
   * @param {HTMLOListElement} list
   * @param {HTMLElement} empty shown while the log is empty
   */
  constructor(list, empty) {
    this.list = list;
    this.empty = empty;
    this.seen = new Set();
  }

  /**
   * Add a line (ignores an event id already logged, e.g. replayed after a reconnect).
   * @param {{id?: number|string, ts: number, tag: string, tone: string, text: string, kind: string}} entry
   */
  add(entry) {
    if (entry.id !== undefined && entry.id !== null) {
      if (this.seen.has(entry.id)) return;
      this.seen.add(entry.id);
    }
    const item = h(
      'li',
      { class: 'log-entry', dataset: { kind: entry.kind, tone: entry.tone } },
      h('time', { datetime: new Date(entry.ts * 1000).toISOString(), title: formatDateTime(entry.ts) }, formatClock(entry.ts)),
      h('span', { class: 'log-tag' }, entry.tag),
      h('span', { class: 'log-text' }, entry.text),
    );
    // Keep newest first, ordered by timestamp even when events arrive out of order.
    let before = this.list.firstElementChild;
    while (before && Number(before.dataset.ts) > entry.ts) before = before.nextElementSibling;
    item.dataset.ts = String(entry.ts);
    this.list.insertBefore(item, before);
    while (this.list.children.length > MAX_ENTRIES) this.list.lastElementChild.remove();
    show(this.empty, false);
  }

  clear() {
    this.list.replaceChildren();
    show(this.empty, true);
  }
}

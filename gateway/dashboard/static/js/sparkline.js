// Per-server latency/queue history built from `server.checked` events, drawn as inline SVG.

import { s } from './dom.js';
import { formatLatency } from './format.js';

/** How much history a sparkline shows, seconds. */
export const WINDOW_SECONDS = 600;

/** The shortest window drawn, seconds. */
const MIN_SPAN_SECONDS = 10;

const WIDTH = 300;
const HEIGHT = 48;
const PAD = 3;

/**
 * Samples per server, trimmed to the window. Times are the gateway's own event timestamps, and
 * the window ends at the newest one seen, so a browser clock that is off does not matter.
 */
export class History {
  constructor(windowSeconds = WINDOW_SECONDS) {
    this.windowSeconds = windowSeconds;
    /** @type {Map<string, Array<{ts: number, latency: number|null, queue: number|null, ok: boolean}>>} */
    this.series = new Map();
    this.latest = 0;
  }

  /** Record one check of a server (from a `server.checked` event). */
  add(serverId, ts, { latency = null, queue = null, ok = false } = {}) {
    let samples = this.series.get(serverId);
    if (!samples) {
      samples = [];
      this.series.set(serverId, samples);
    }
    if (samples.length && samples[samples.length - 1].ts > ts) return; // replayed, older
    samples.push({
      ts,
      latency: ok && Number.isFinite(latency) ? latency : null,
      queue: Number.isInteger(queue) ? queue : null,
      ok: Boolean(ok),
    });
    this.latest = Math.max(this.latest, ts);
    this.trim();
  }

  /** Forget servers that no longer exist. */
  keepOnly(ids) {
    for (const id of [...this.series.keys()]) if (!ids.has(id)) this.series.delete(id);
  }

  trim() {
    const start = this.latest - this.windowSeconds;
    for (const samples of this.series.values()) {
      let drop = 0;
      // Keep one sample before the window so the line enters from the left edge.
      while (drop < samples.length - 1 && samples[drop + 1].ts < start) drop += 1;
      if (drop) samples.splice(0, drop);
    }
  }

  /** The samples of one server inside the window (oldest first). */
  samples(serverId) {
    return this.series.get(serverId) || [];
  }

  /**
   * [start, end] of the drawn window, gateway time: the last 10 minutes, or less while the
   * page has not seen that much yet (at least 10 seconds), so a fresh page is not empty.
   */
  range() {
    let earliest = this.latest;
    for (const samples of this.series.values()) {
      if (samples.length) earliest = Math.min(earliest, samples[0].ts);
    }
    const span = Math.min(this.windowSeconds, Math.max(MIN_SPAN_SECONDS, this.latest - earliest));
    return [this.latest - span, this.latest];
  }
}

/**
 * Summarize samples for text (screen readers and the legend).
 * @returns {{latencyMax: number|null, latencyAvg: number|null, queueMax: number|null, downs: number, count: number}}
 */
export function summarize(samples) {
  const lat = samples.map((p) => p.latency).filter((v) => v !== null);
  const queue = samples.map((p) => p.queue).filter((v) => v !== null);
  return {
    latencyMax: lat.length ? Math.max(...lat) : null,
    latencyAvg: lat.length ? lat.reduce((a, b) => a + b, 0) / lat.length : null,
    queueMax: queue.length ? Math.max(...queue) : null,
    downs: samples.filter((p) => !p.ok).length,
    count: samples.length,
  };
}

/**
 * Draw a sparkline: latency as a line (gaps where checks failed), queue as a stepped area on
 * its own scale, failed checks as marks along the bottom.
 * @param {Array<{ts:number, latency:number|null, queue:number|null, ok:boolean}>} samples
 * @param {[number, number]} range gateway-time window
 * @param {string} label accessible description
 * @returns {SVGSVGElement}
 */
export function sparkline(samples, [start, end], label) {
  const span = Math.max(1, end - start);
  const x = (ts) => PAD + ((Math.max(ts, start) - start) / span) * (WIDTH - 2 * PAD);
  const stats = summarize(samples);
  const latMax = Math.max(stats.latencyMax || 0, 0.001) * 1.15;
  const queueMax = Math.max(stats.queueMax || 0, 1);
  const yLat = (v) => HEIGHT - PAD - (v / latMax) * (HEIGHT - 2 * PAD);
  const yQueue = (v) => HEIGHT - PAD - (v / queueMax) * (HEIGHT - 2 * PAD) * 0.6;

  const svg = s('svg', {
    class: 'sparkline',
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: 'none',
    role: 'img',
    'aria-label': label,
  });
  svg.append(s('title', { text: label }));
  svg.append(s('line', { class: 'spark-base', x1: 0, x2: WIDTH, y1: HEIGHT - PAD, y2: HEIGHT - PAD }));

  // Queue: a stepped area.
  const queued = samples.filter((p) => p.queue !== null);
  if (queued.some((p) => p.queue > 0)) {
    let d = `M${x(queued[0].ts).toFixed(1)},${yQueue(0).toFixed(1)}`;
    queued.forEach((p, i) => {
      const next = i + 1 < queued.length ? x(queued[i + 1].ts) : x(end);
      d += ` L${x(p.ts).toFixed(1)},${yQueue(p.queue).toFixed(1)} L${next.toFixed(1)},${yQueue(p.queue).toFixed(1)}`;
    });
    d += ` L${x(end).toFixed(1)},${yQueue(0).toFixed(1)} Z`;
    svg.append(s('path', { class: 'spark-queue', d }));
  }

  // Latency: one polyline per run of successful checks.
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      svg.append(s('circle', { class: 'spark-dot', cx: run[0][0], cy: run[0][1], r: 1.6 }));
    } else if (run.length > 1) {
      svg.append(
        s('polyline', {
          class: 'spark-latency',
          points: run.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(' '),
        }),
      );
    }
    run = [];
  };
  for (const p of samples) {
    if (p.latency === null) flush();
    else run.push([x(p.ts), yLat(p.latency)]);
  }
  flush();

  // Failed checks.
  for (const p of samples) {
    if (!p.ok) {
      svg.append(s('rect', { class: 'spark-down', x: x(p.ts) - 1, y: HEIGHT - PAD - 5, width: 2, height: 5 }));
    }
  }
  return svg;
}

/** The accessible description of a server's sparkline. */
export function describeHistory(samples, range) {
  const st = summarize(samples);
  const window = describeSpan(range);
  if (!st.count) return `No checks received yet (${window}).`;
  const parts = [`${window[0].toUpperCase()}${window.slice(1)}, ${st.count} checks`];
  if (st.latencyAvg !== null) {
    parts.push(`latency average ${formatLatency(st.latencyAvg)}, peak ${formatLatency(st.latencyMax)}`);
  }
  if (st.queueMax !== null) parts.push(`queue peak ${st.queueMax}`);
  if (st.downs) parts.push(`${st.downs} failed`);
  return `${parts.join('; ')}.`;
}

/** "last 10 min" / "last 30 s" for a [start, end] window. */
export function describeSpan([start, end]) {
  const seconds = Math.max(0, end - start);
  if (seconds < 90) return `last ${Math.round(seconds)} s`;
  return `last ${Math.round(seconds / 60)} min`;
}

// Formatting of numbers, times and states for display (pure functions, no DOM).

/** Health states the API reports, plus "checking" (a state in transition). */
export const STATE_LABELS = {
  up: 'Up',
  down: 'Down',
  unknown: 'Unknown',
  checking: 'Checking',
};

/**
 * The state shown for a status: "checking" while a verdict is in transition, else its state.
 * @param {{state?: string, checking?: boolean}} status
 */
export function displayState(status) {
  if (!status) return 'unknown';
  if (status.checking) return 'checking';
  return STATE_LABELS[status.state] ? status.state : 'unknown';
}

/** Latency in seconds → "12 ms" / "1.24 s"; "—" when unknown. */
export function formatLatency(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const ms = seconds * 1000;
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

/** Bytes → "23.6 GB" (decimal units, like GPU vendors). */
export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes)) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

/** Queue length → "3 queued" / "idle" / "—". */
export function formatQueue(n) {
  if (n === null || n === undefined) return '—';
  return n === 0 ? 'idle' : `${n} queued`;
}

/** Unix time (seconds) → local "14:02:03". */
export function formatClock(ts) {
  if (!ts) return '—';
  return new Date(ts * 1000).toLocaleTimeString([], {
    hour: '2-digit',
    minute: '2-digit',
    second: '2-digit',
    hour12: false,
  });
}

/** Unix time (seconds) → local date and time, for tooltips. */
export function formatDateTime(ts) {
  if (!ts) return '';
  return new Date(ts * 1000).toLocaleString();
}

/** Timestamp for a download's file name: 20250102-130405. */
export function fileStamp(date = new Date()) {
  const pad = (n) => String(n).padStart(2, '0');
  return (
    `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}-` +
    `${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`
  );
}

/** Describe a GPU/CPU device from /system_stats: name and "free / total" VRAM. */
export function describeDevice(device) {
  const name = String(device?.name || device?.type || 'device')
    .replace(/\s*:\s*(cudaMallocAsync|native)$/i, '')
    .trim();
  const total = Number(device?.vram_total);
  const free = Number(device?.vram_free);
  const hasVram = Number.isFinite(total) && total > 0;
  return {
    name,
    type: device?.type ? String(device.type) : '',
    hasVram,
    total: hasVram ? total : null,
    free: hasVram && Number.isFinite(free) ? free : null,
    usedFraction: hasVram && Number.isFinite(free) ? Math.min(1, Math.max(0, 1 - free / total)) : null,
    vramText: hasVram
      ? `${formatBytes(Number.isFinite(free) ? free : null)} free of ${formatBytes(total)}`
      : '',
  };
}

/** One-line summary of a connection test result. */
export function describeTest(result) {
  if (!result) return '';
  if (!result.reachable) return `Unreachable${result.error ? `: ${result.error}` : ''}`;
  const parts = [result.ok ? 'Reachable' : 'Answered with problems'];
  if (result.latency !== null && result.latency !== undefined) parts.push(formatLatency(result.latency));
  if (result.http_status) parts.push(`HTTP ${result.http_status}`);
  if (result.comfyui_version) parts.push(`ComfyUI ${result.comfyui_version}`);
  // The websocket handshake: {ok, latency, error} (or a plain boolean).
  const ws = result.websocket;
  const wsOk = ws && typeof ws === 'object' ? ws.ok : ws;
  if (wsOk === true) parts.push('WebSocket OK');
  else if (wsOk === false) parts.push(`WebSocket failed${ws?.error ? ` (${ws.error})` : ''}`);
  let text = parts.join(' · ');
  if (result.error) text += ` — ${result.error}`;
  return text;
}

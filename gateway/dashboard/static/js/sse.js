// A Server-Sent Events client over fetch(), for GET /gateway/api/events.
//
// The browser's EventSource cannot send an Authorization header, and the admin API may protect
// reads with the admin token. This client parses the same wire format (WHATWG HTML "Server-sent
// events": `id:`, `event:`, `data:`, `retry:`, comments) from a streamed fetch() body, sends the
// token, and resumes after a disconnect with `Last-Event-ID`, so no event is lost or repeated.
// There is no polling: one long-lived request, re-opened only when it ends.

const DEFAULT_RETRY_MS = 2000;
const MAX_RETRY_MS = 30000;

export class EventStream {
  /**
   * @param {import('./api.js').Api} api the API client (URL, token, 401 handling)
   * @param {object} handlers
   * @param {(kind: string, data: *, id: string|null) => void} handlers.onEvent one event
   * @param {(state: 'connecting'|'live'|'reconnecting'|'unauthorized') => void} handlers.onState
   */
  constructor(api, { onEvent, onState }) {
    this.api = api;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastEventId = null;
    this.retryMs = DEFAULT_RETRY_MS;
    this.failures = 0;
    this.controller = null;
    this.stopped = true;
  }

  /** Open the stream (and keep re-opening it until stop()). */
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop();
  }

  /** Close the stream for good. */
  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  /** Drop the current connection and open a new one at once (e.g. after a new token). */
  restart() {
    this.failures = 0;
    this.controller?.abort();
    if (this.stopped) this.start();
  }

  async loop() {
    while (!this.stopped) {
      this.onState(this.failures ? 'reconnecting' : 'connecting');
      try {
        await this.connect();
        this.failures = 0; // the stream ended normally (e.g. gateway shutdown): reconnect
      } catch (error) {
        if (this.stopped) return;
        if (error?.name === 'AbortError') continue; // restart(): reconnect at once
        if (error && error.unauthorized) {
          this.onState('unauthorized');
          const retry = await this.api.onUnauthorized?.(
            'The live status stream needs the admin token.',
            { invalid: Boolean(this.api.token) },
          );
          if (!retry) {
            this.stopped = true;
            return;
          }
          continue;
        }
        this.failures += 1;
      }
      if (this.stopped) return;
      this.onState('reconnecting');
      const backoff = Math.min(MAX_RETRY_MS, this.retryMs * 2 ** Math.min(this.failures, 4));
      await sleep(this.failures ? backoff : this.retryMs);
    }
  }

  async connect() {
    this.controller = new AbortController();
    const headers = this.api.authHeaders({ Accept: 'text/event-stream' });
    if (this.lastEventId) headers['Last-Event-ID'] = this.lastEventId;
    const response = await fetch(this.api.url('events'), {
      headers,
      cache: 'no-store',
      credentials: 'same-origin',
      signal: this.controller.signal,
    });
    if (response.status === 401) throw Object.assign(new Error('unauthorized'), { unauthorized: true });
    if (!response.ok || !response.body) throw new Error(`event stream: HTTP ${response.status}`);
    this.onState('live');
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { type: '', data: [], id: null };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // Complete lines only; a trailing partial line waits for the next chunk.
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = lines.pop();
        for (const line of lines) event = this.line(line, event);
      }
    } finally {
      reader.releaseLock();
    }
  }

  /** Process one line of the stream; return the event being assembled. */
  line(line, event) {
    if (line === '') {
      if (event.id !== null) this.lastEventId = event.id;
      if (event.data.length) {
        const raw = event.data.join('\n');
        let data;
        try {
          data = JSON.parse(raw);
        } catch {
          data = raw;
        }
        try {
          this.onEvent(event.type || 'message', data, event.id);
        } catch (error) {
          console.error('dashboard: event handler failed', error);
        }
      }
      return { type: '', data: [], id: null };
    }
    if (line.startsWith(':')) return event; // comment (": ping")
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') event.type = value;
    else if (field === 'data') event.data.push(value);
    else if (field === 'id' && !value.includes('\0')) event.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retryMs = Number(value);
    return event;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Client of the gateway's admin REST API (/gateway/api/): JSON in and out, RFC 9457 problems
// turned into ApiError, and the admin token (session storage only) sent as a Bearer token.

/** What a secret looks like in any API answer; sent back unchanged it means "keep". */
export const MASK = '********';

const TOKEN_KEY = 'comfyui-gateway.admin-token';

/** An error answer of the admin API (or a network failure, status 0). */
export class ApiError extends Error {
  /**
   * @param {number} status HTTP status (0: no answer)
   * @param {object|null} problem the problem+json document, when there was one
   * @param {string} [fallback] message when the problem has no detail
   */
  constructor(status, problem, fallback) {
    super((problem && (problem.detail || problem.title)) || fallback || `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem || null;
  }

  /** Field errors of a 422: [{location, message, value, line?}]. */
  get errors() {
    return Array.isArray(this.problem?.errors) ? this.problem.errors : [];
  }
}

/** Read the admin token kept for this browser tab. */
export function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || null;
  } catch {
    return null; // storage disabled: the token lives only in memory (see Api.memoryToken)
  }
}

export class Api {
  /**
   * @param {string} base URL of the admin API, relative to the page (default "api/").
   */
  constructor(base = 'api/') {
    this.base = new URL(base, document.baseURI);
    this.memoryToken = null;
    /**
     * Called on a 401 with (message, {invalid}); resolves true when a new token was entered
     * (the request is then retried) or false when the user cancelled.
     * @type {null | ((message: string, info: {invalid: boolean}) => Promise<boolean>)}
     */
    this.onUnauthorized = null;
  }

  /** The admin token, or null. */
  get token() {
    return storedToken() || this.memoryToken;
  }

  /** Keep (or, with null, forget) the admin token for this browser tab only. */
  set token(value) {
    this.memoryToken = value || null;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage disabled: memoryToken is enough for this page */
    }
  }

  /** Absolute URL of an API path ("servers/x") with optional query parameters. */
  url(path, query) {
    const url = new URL(path.replace(/^\//, ''), this.base);
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, String(value));
    }
    return url;
  }

  /** Request headers with the token, when there is one. */
  authHeaders(extra = {}) {
    const headers = { ...extra };
    const token = this.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  /**
   * Call the API; resolve with the decoded answer (JSON, or text when `as: 'text'`).
   * A 401 asks for the token (onUnauthorized) and retries; other errors reject with ApiError.
   * @param {string} method
   * @param {string} path relative to the API base, e.g. "servers/local/activate"
   * @param {{json?: *, body?: BodyInit, contentType?: string, query?: object, as?: 'json'|'text'}} [options]
   */
  async request(method, path, options = {}) {
    const { json, body, contentType, query, as = 'json' } = options;
    for (let attempt = 0; ; attempt += 1) {
      const headers = this.authHeaders({ Accept: as === 'json' ? 'application/json' : '*/*' });
      let payload = body;
      if (json !== undefined) {
        payload = JSON.stringify(json);
        headers['Content-Type'] = 'application/json';
      } else if (contentType) {
        headers['Content-Type'] = contentType;
      }
      let response;
      try {
        response = await fetch(this.url(path, query), {
          method,
          headers,
          body: payload,
          cache: 'no-store',
          credentials: 'same-origin',
        });
      } catch {
        throw new ApiError(0, null, 'The gateway cannot be reached.');
      }
      if (response.status === 401 && this.onUnauthorized && attempt < 5) {
        const problem = await readProblem(response);
        const sent = Boolean(this.token);
        const retry = await this.onUnauthorized(
          problem?.detail || 'This action needs the admin token.',
          { invalid: sent },
        );
        if (retry) continue;
        throw new ApiError(401, problem, 'The admin token is required.');
      }
      if (!response.ok) {
        throw new ApiError(response.status, await readProblem(response));
      }
      if (response.status === 204) return null;
      if (as === 'text') return response.text();
      if (as === 'response') return response;
      const text = await response.text();
      return text ? JSON.parse(text) : null;
    }
  }

  get(path, query) {
    return this.request('GET', path, { query });
  }

  post(path, json) {
    return this.request('POST', path, json === undefined ? {} : { json });
  }

  patch(path, json) {
    return this.request('PATCH', path, { json });
  }

  delete(path) {
    return this.request('DELETE', path);
  }
}

/** Decode a problem+json (or any JSON) error body; null when the body is not JSON. */
async function readProblem(response) {
  try {
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    return data && typeof data === 'object' ? data : null;
  } catch {
    return null;
  }
}

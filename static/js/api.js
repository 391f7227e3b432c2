// The JSON API over fetch: CSRF header on unsafe requests, one error shape (ApiError).

const csrfMeta = document.querySelector('meta[name="csrf-token"]');
const CSRF = csrfMeta ? csrfMeta.content : '';

/** An API answer with a 4xx/5xx status, carrying the server's {error: {code, message, fields}}. */
export class ApiError extends Error {
  constructor(status, code, message, fields) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.fields = fields || {};
  }
}

async function request(method, path, { body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = CSRF;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, {
    method, headers, body: payload, signal, credentials: 'same-origin', cache: 'no-store',
  });
  if (res.status === 204) return null;
  const type = res.headers.get('Content-Type') || '';
  const data = type.includes('json') ? await res.json().catch(() => null) : null;
  if (!res.ok) {
    const err = (data && data.error) || {};
    if (res.status === 401) {
      // Session expired: send the user to log in and come back here.
      const next = encodeURIComponent(location.pathname + location.search);
      location.assign(`/login?next=${next}`);
    }
    throw new ApiError(
      res.status,
      err.code || `http_${res.status}`,
      err.message || `${method} ${path} failed with HTTP ${res.status}`,
      err.fields,
    );
  }
  return data;
}

/** Query: {limit, offset, sort, q, owner}; empty values are left out. */
export function listOrders(query, signal) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.set(key, String(value));
  }
  return request('GET', `/api/orders?${params}`, { signal });
}

export const createOrder = (fields) => request('POST', '/api/orders', { body: fields });
export const updateOrder = (id, fields) => request('PATCH', `/api/orders/${id}`, { body: fields });
export const deleteOrder = (id) => request('DELETE', `/api/orders/${id}`);

export const listUsers = () => request('GET', '/api/users');
export const createUser = (fields) => request('POST', '/api/users', { body: fields });
export const updateUser = (id, fields) => request('PATCH', `/api/users/${id}`, { body: fields });
export const revokeTokens = (id) => request('DELETE', `/api/users/${id}/tokens`);

export const listTokens = () => request('GET', '/api/tokens');
export const createToken = (name) => request('POST', '/api/tokens', { body: { name } });
export const revokeToken = (id) => request('DELETE', `/api/tokens/${id}`);

export const getQuotes = (instruments) => request('GET', `/api/quotes?instruments=${encodeURIComponent(instruments.join(','))}`);
export const getPnl = () => request('GET', '/api/pnl');

// The console's only way to the server: the operator API under /api (the same routes, answers and
// {code, message} errors as the admin socket), and a small DOM helper that only ever sets textContent.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET /api/v1/<path> with `query`, or POST it with a JSON `body`. */
export async function api(path, { query, body } = {}) {
  const qs = query ? `?${new URLSearchParams(query)}` : '';
  const init = body === undefined ? {} : { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
  const res = await fetch(`/api/v1/${path}${qs}`, { credentials: 'same-origin', ...init });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, data?.code ?? 'ML_ERR_INTERNAL', data?.message ?? `HTTP ${res.status}`);
  return data;
}

/** An element with attributes and children; strings become text nodes, never markup. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function table(headers, rows, attrs = {}) {
  return h('table', attrs, h('thead', {}, h('tr', {}, headers.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
}

/** `1h30m`, `90s`, `2d`: milliseconds, or NaN. */
export function parseDuration(text) {
  const m = /^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$/.exec(text.trim());
  if (!m || text.trim() === '') return NaN;
  const [d, hr, min, s] = m.slice(1).map((x) => Number(x ?? 0));
  return ((d * 24 + hr) * 60 + min) * 60_000 + s * 1000;
}

export const when = (iso) => (iso ? new Date(iso).toLocaleString() : '-');

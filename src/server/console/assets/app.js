// The console's pages, routed by the URL's hash (#/nodes, #/node/ID, ...). Each page asks the operator
// API for what it shows; the event stream (/api/events) refreshes the page that shows what changed.
import { ApiError, api, h, parseDuration, table, when } from './api.js';

const main = document.getElementById('main');
const status = document.getElementById('status');
const live = document.getElementById('live');
let current = { name: '', onEvent: () => {} };

function showError(err) {
  if (err instanceof ApiError && err.status === 401) status.textContent = 'Not logged in: run `meshlink server console login` and open the link it prints.';
  else status.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
}

const cell = (online) => h('td', { class: online ? 'online' : 'offline', 'data-col': 'online' }, online ? 'online' : 'offline');

async function nodesPage() {
  const list = await api('nodes');
  const rows = list.map((n) =>
    h('tr', { 'data-node-id': n.id },
      h('td', {}, h('a', { href: `#/node/${encodeURIComponent(n.id)}` }, n.hostname)),
      cell(n.online),
      h('td', {}, when(n.lastSeen)),
      h('td', {}, n.agentVersion ?? '-'),
      h('td', {}, n.meshIp ?? '-'),
      h('td', {}, n.tags && n.tags.length > 0 ? n.tags.join(', ') : '-'),
      h('td', {}, when(n.certNotAfter)),
      h('td', { class: 'muted' }, n.id)),
  );
  return {
    view: [h('h1', {}, `Nodes (${list.length})`), list.length === 0 ? h('p', { class: 'muted' }, 'No nodes yet: create a token and enroll an agent.') : table(['Hostname', 'Status', 'Last seen', 'Version', 'Mesh IP', 'Tags', 'Certificate expires', 'ID'], rows, { id: 'nodes' })],
    onEvent: (type) => type === 'node' && render(),
  };
}

// The figures an operator looks at first; the rest (Node.js internals) behind "All metrics".
const KEY_METRICS = /^(meshlink_agent_(cert_expiry_seconds|connects_total|heartbeat_rtt_seconds_sum|ws_bytes_total)|process_resident_memory_bytes|process_cpu_seconds_total|nodejs_version_info)$/;
const metricsTable = (metrics) =>
  table(['Name', 'Labels', 'Value', 'Time'], metrics.map((m) => h('tr', {}, h('td', {}, m.name), h('td', {}, Object.entries(m.labels).map(([k, v]) => `${k}=${v}`).join(' ')), h('td', {}, String(m.value)), h('td', {}, when(m.ts)))));

async function nodePage(id) {
  const n = await api('nodes/show', { query: { node: id } });
  const error = h('p', { class: 'error', id: 'revoke-error' });
  const revoke = async () => {
    if (!confirm(`Revoke ${n.hostname} (${n.id})? Its certificate is revoked and its connection closed at once.`)) return;
    try {
      const r = await api('nodes/remove', { body: { node: n.id } });
      error.textContent = '';
      status.textContent = '';
      main.replaceChildren(h('h1', {}, `Revoked ${r.hostname}`), h('p', { id: 'revoked' }, `${r.revokedSerials.length} certificate(s) revoked, ${r.closedConnections} connection(s) closed.`), h('a', { href: '#/nodes' }, 'Back to the nodes'));
      current = { name: 'revoked', onEvent: () => {} };
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
  return {
    view: [
      h('h1', {}, n.hostname),
      h('dl', {},
        h('dt', {}, 'ID'), h('dd', {}, n.id),
        h('dt', {}, 'Status'), h('dd', { class: n.online ? 'online' : 'offline', id: 'node-status' }, n.removedAt ? `removed ${when(n.removedAt)}` : n.online ? 'online' : 'offline'),
        h('dt', {}, 'Enrolled'), h('dd', {}, when(n.createdAt)),
        h('dt', {}, 'Last seen'), h('dd', {}, when(n.lastSeen)),
        h('dt', {}, 'Agent version'), h('dd', {}, n.agentVersion ?? '-'),
        h('dt', {}, 'Certificate'), h('dd', {}, `${n.certSerial ?? '-'}, expires ${when(n.certNotAfter)}`)),
      n.removedAt ? null : h('p', {}, h('button', { class: 'danger', id: 'revoke', onclick: revoke }, 'Revoke node…')),
      error,
      h('h2', {}, 'Latest metrics'),
      metricsTable(n.metrics.filter((m) => KEY_METRICS.test(m.name))),
      h('details', {}, h('summary', {}, `All ${n.metrics.length} metrics`), metricsTable(n.metrics)),
      h('h2', {}, 'Warnings'),
      table(['Time', 'Level', 'Message'], n.warnings.map((w) => h('tr', {}, h('td', {}, when(w.ts)), h('td', {}, w.level), h('td', {}, w.msg)))),
      h('h2', {}, 'Audit'),
      table(['Time', 'Operation', 'Operator', 'Target', 'Result'], n.audit.map((a) => h('tr', {}, h('td', {}, when(a.ts)), h('td', {}, a.operation), h('td', {}, a.actor ?? '-'), h('td', {}, a.target ?? '-'), h('td', {}, a.result)))),
    ],
    onEvent: (type, data) => type === 'node' && data.nodeId === n.id && render(),
  };
}

async function tokensPage() {
  const ttl = h('input', { name: 'ttl', id: 'token-ttl', value: '1h', size: 8, required: true });
  const tags = h('input', { name: 'tags', id: 'token-tags', placeholder: 'web, prod', size: 24 });
  const error = h('p', { class: 'error', id: 'token-error' });
  const out = h('div', { id: 'token-result' });
  const create = async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const ttlMs = parseDuration(ttl.value);
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
      error.textContent = 'TTL: whole numbers with units, largest first, e.g. 1h30m';
      return;
    }
    const tagList = tags.value.split(',').map((t) => t.trim()).filter((t) => t !== '');
    try {
      const t = await api('mesh/tokens', { body: { ttlMs, tags: tagList } });
      const command = h('pre', { id: 'enroll-command' }, t.enrollCommand);
      out.replaceChildren(
        h('h2', {}, 'Enroll command'),
        h('p', { class: 'muted' }, `One-time token, expires ${when(t.expiresAt)}${t.tags.length > 0 ? `; the node gets the tags ${t.tags.join(', ')}` : ''}. CA pin ${t.caPin}.`),
        command,
        h('button', { type: 'button', onclick: () => navigator.clipboard?.writeText(t.enrollCommand) }, 'Copy'),
      );
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
  return {
    view: [
      h('h1', {}, 'Enrollment tokens'),
      h('form', { id: 'token-form', onsubmit: create }, h('label', {}, 'TTL', ttl), h('label', {}, 'Tags (comma-separated)', tags), h('button', { type: 'submit', id: 'token-create' }, 'Create token')),
      error,
      out,
    ],
    onEvent: () => {},
  };
}

const feedRow = (e) => h('tr', {}, h('td', {}, when(e.ts)), h('td', {}, e.kind), h('td', {}, e.type), h('td', {}, e.nodeId ?? '-'), h('td', {}, e.seq ?? '-'), h('td', { class: 'detail' }, JSON.stringify(e.detail ?? null)));

async function eventsPage() {
  const feed = await api('mesh/feed', { query: { last: 100 } }).catch((err) => (err instanceof ApiError && err.code === 'ML_ERR_NOT_FOUND' ? { entries: [] } : Promise.reject(err)));
  const t = table(['Time', 'Kind', 'Type', 'Node', 'Seq', 'Detail'], feed.entries.slice().reverse().map(feedRow), { id: 'events' });
  const tbody = t.querySelector('tbody');
  return {
    view: [h('h1', {}, 'Mesh events'), h('p', { class: 'muted' }, 'Newest first; new entries appear as they happen.'), t],
    onEvent: (type, data) => {
      if (type === 'feed') tbody.prepend(feedRow(data));
      if (type === 'node') tbody.prepend(h('tr', {}, h('td', {}, when(new Date().toISOString())), h('td', {}, 'session'), h('td', {}, data.online ? 'online' : 'offline'), h('td', {}, data.nodeId), h('td', {}, '-'), h('td', {}, '')));
    },
  };
}

async function auditPage() {
  const records = await api('ops/audit', { query: { limit: 200 } });
  const at = (ms) => (ms ? new Date(ms).toLocaleString() : '-');
  return {
    view: [h('h1', {}, 'Audit log'), table(['Time', 'Source', 'Operator', 'Operation', 'Node', 'Target', 'Result'], records.map((r) => h('tr', {}, h('td', {}, at(r.ts)), h('td', {}, r.source), h('td', {}, r.actor ?? '-'), h('td', {}, r.operation), h('td', {}, r.nodeId ?? '-'), h('td', {}, r.target ?? '-'), h('td', {}, r.result))), { id: 'audit' })],
    onEvent: () => {},
  };
}

async function policyPage() {
  const p = await api('mesh/policy');
  const text = h('textarea', { id: 'policy-text', spellcheck: 'false' });
  text.value = p.policy === null ? 'null' : JSON.stringify(p.policy, null, 2);
  const error = h('p', { class: 'error', id: 'policy-error' });
  const info = h('p', { class: 'muted', id: 'policy-id' }, `Policy ${p.policyId}${p.policy === null ? ' (none: every node sees every node)' : ''}`);
  const save = async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    let policy;
    try {
      policy = JSON.parse(text.value);
    } catch (err) {
      error.textContent = `Not valid JSON: ${err.message}`;
      return;
    }
    try {
      const r = await api('mesh/policy', { body: { policy } });
      info.textContent = `Saved: policy ${r.policyId}; ${r.affectedNodes.length} node(s) told.`;
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
  return {
    view: [h('h1', {}, 'Mesh policy'), info, h('form', { id: 'policy-form', onsubmit: save }, text, h('button', { type: 'submit', id: 'policy-save' }, 'Save policy')), error],
    onEvent: () => {},
  };
}

const PAGES = { nodes: nodesPage, node: nodePage, tokens: tokensPage, events: eventsPage, audit: auditPage, policy: policyPage };

let rendering = 0;
async function render() {
  const [name = 'nodes', ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const page = PAGES[name] ?? nodesPage;
  const turn = ++rendering;
  try {
    const p = await page(...rest.map(decodeURIComponent));
    if (turn !== rendering) return; // a newer render started meanwhile
    status.textContent = '';
    current = { name, onEvent: p.onEvent };
    main.replaceChildren(...p.view.filter(Boolean));
    for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('active', a.getAttribute('href') === `#/${name}`);
  } catch (err) {
    if (turn === rendering) showError(err);
  }
}

function listen() {
  const source = new EventSource('/api/events');
  source.addEventListener('open', () => {
    live.textContent = 'live';
    live.className = 'online';
  });
  source.addEventListener('error', () => {
    live.textContent = 'reconnecting…';
    live.className = 'muted';
  });
  for (const type of ['node', 'feed']) source.addEventListener(type, (ev) => current.onEvent(type, JSON.parse(ev.data)));
}

document.getElementById('logout').addEventListener('click', async () => {
  await fetch('/logout', { method: 'POST', credentials: 'same-origin' });
  status.textContent = 'Logged out.';
  main.replaceChildren();
});

window.addEventListener('hashchange', () => void render());
void render();
listen();

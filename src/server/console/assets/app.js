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

/** The node's mesh peers, or null when the server runs no mesh (the section is left out then). */
const peersOf = (id) => api('mesh/peers', { query: { node: id } }).catch((err) => (err instanceof ApiError && err.code === 'ML_ERR_NOT_FOUND' ? null : Promise.reject(err)));

async function nodePage(id) {
  const [n, peers] = await Promise.all([api('nodes/show', { query: { node: id } }), peersOf(id)]);
  const error = h('p', { class: 'error', id: 'revoke-error' });
  const actionOut = h('pre', { id: 'action-result', hidden: true });
  // Ping and diagnostics: the agent's built-in actions, answered as JSON by ops.builtin (audited).
  const runAction = async (action) => {
    actionOut.hidden = false;
    actionOut.className = '';
    actionOut.textContent = `${action}…`;
    try {
      const r = await api('ops/builtin', { body: { node: n.id, action } });
      actionOut.dataset.action = action;
      actionOut.textContent = r.error ? `${action}: ${r.error}` : `${action}: exit ${r.exitCode}, ${r.durationMs} ms on the agent, ${r.roundTripMs} ms round trip\n\n${r.output}${r.truncated ? '\n(output truncated)' : ''}`;
    } catch (err) {
      actionOut.className = 'error';
      actionOut.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
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
      n.removedAt
        ? null
        : h('p', { class: 'actions' },
            h('button', { type: 'button', id: 'ping', onclick: () => runAction('ping') }, 'Ping'),
            h('button', { type: 'button', id: 'diagnostics', onclick: () => runAction('diagnostics') }, 'Diagnostics'),
            h('button', { class: 'danger', id: 'revoke', onclick: revoke }, 'Revoke node…')),
      actionOut,
      error,
      peers === null ? null : h('h2', {}, `Peers (${peers.peers.length})`),
      peers === null ? null : table(['Hostname', 'Mesh IP', 'Path', 'Endpoints', 'ID'], peers.peers.map((p) => h('tr', { 'data-peer-id': p.nodeId }, h('td', {}, p.hostname === null ? '-' : h('a', { href: `#/node/${encodeURIComponent(p.nodeId)}` }, p.hostname)), h('td', {}, p.meshIp), h('td', { class: 'peer-path' }, p.path ?? '-'), h('td', {}, p.endpoints.join(', ') || '-'), h('td', { class: 'muted' }, p.nodeId))), { id: 'peers' }),
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
  const listError = h('p', { class: 'error', id: 'token-list-error' });
  const listBody = h('tbody');
  const revoke = async (t) => {
    if (!confirm(`Revoke token ${t.id}? It no longer enrolls a node.`)) return;
    listError.textContent = '';
    try {
      await api('tokens/revoke', { body: { id: t.id } });
      await loadList();
    } catch (err) {
      listError.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
  const loadList = async () => {
    const list = await api('tokens', { query: { limit: 200 } });
    listBody.replaceChildren(...list.map((t) =>
      h('tr', { 'data-token-id': t.id },
        h('td', { class: 'mono' }, t.id),
        h('td', { class: `state-${t.state}`, 'data-col': 'state' }, t.state),
        h('td', {}, when(t.createdAt)),
        h('td', {}, when(t.expiresAt)),
        h('td', {}, String(t.uses)),
        h('td', {}, t.tags && t.tags.length > 0 ? t.tags.join(', ') : '-'),
        h('td', {}, t.state === 'usable' ? h('button', { type: 'button', class: 'danger revoke-token', onclick: () => revoke(t) }, 'Revoke…') : t.revokedAt ? `revoked ${when(t.revokedAt)}` : '-'))));
  };
  await loadList();
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
      await loadList();
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
      h('h2', {}, 'Tokens'),
      h('p', { class: 'muted' }, 'Newest first. A token is shown once, when it is created; here only its id.'),
      h('table', { id: 'tokens' }, h('thead', {}, h('tr', {}, ['ID', 'State', 'Created', 'Expires', 'Uses', 'Tags', ''].map((x) => h('th', {}, x)))), listBody),
      listError,
    ],
    onEvent: () => {},
  };
}

const bytes = (n) => (n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`);
const OP_NAMES = { push: 'cp (push)', pull: 'cp (pull)' };

// The streaming operations running now (ops.list): refreshed every 2 s while the page shows.
async function operationsPage() {
  const error = h('p', { class: 'error', id: 'operations-error' });
  const body = h('tbody');
  const end = async (o) => {
    if (!confirm(`End ${OP_NAMES[o.op] ?? o.op} on ${o.hostname} started by ${o.actor}? Their command stops with an error.`)) return;
    try {
      await api('ops/operations/end', { body: { id: o.id } });
      error.textContent = '';
      await load();
    } catch (err) {
      error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err);
    }
  };
  const empty = h('p', { class: 'muted', id: 'operations-empty' }, 'Nothing runs right now.');
  const load = async () => {
    const list = await api('ops/operations');
    empty.hidden = list.length > 0;
    body.replaceChildren(...list.map((o) =>
      h('tr', { 'data-op-id': o.id, 'data-op': o.op },
        h('td', {}, String(o.id)),
        h('td', {}, OP_NAMES[o.op] ?? o.op),
        h('td', {}, h('a', { href: `#/node/${encodeURIComponent(o.nodeId)}` }, o.hostname)),
        h('td', {}, o.actor),
        h('td', {}, o.target ?? '-'),
        h('td', {}, when(o.startedAt)),
        h('td', {}, bytes(o.toNode)),
        h('td', {}, bytes(o.fromNode)),
        h('td', {}, h('button', { type: 'button', class: 'danger end-op', onclick: () => end(o) }, 'End…')))));
  };
  await load();
  const timer = window.setInterval(() => load().catch((err) => (error.textContent = err instanceof ApiError ? `${err.code}: ${err.message}` : String(err))), 2000);
  return {
    view: [
      h('h1', {}, 'Running operations'),
      h('p', { class: 'muted' }, 'exec, logs, cp and tunnel connections now running, refreshed every 2 s. Ending one resets its stream on the node; the operator’s command fails with ML_ERR_OPS_ENDED.'),
      h('table', { id: 'operations' }, h('thead', {}, h('tr', {}, ['ID', 'Operation', 'Node', 'Operator', 'Target', 'Started', 'To node', 'From node', ''].map((x) => h('th', {}, x)))), body),
      empty,
      error,
    ],
    onEvent: () => {},
    onLeave: () => window.clearInterval(timer),
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
  const issues = h('ul', { class: 'error', id: 'policy-issues' });
  const info = h('p', { class: 'muted', id: 'policy-id' }, `Policy ${p.policyId}${p.policy === null ? ' (none: every node sees every node)' : ''}`);
  // Shown in place, under the editor: the code and message, and each issue the server named (its
  // message lists them as `path: message`, `; `-separated after "invalid policy at ") as an item.
  const showError = (message, err) => {
    error.textContent = message;
    const m = err instanceof ApiError && err.code === 'ML_ERR_MESH_POLICY' && err.message.startsWith('invalid policy at ') ? err.message.slice('invalid policy at '.length).split('; ') : [];
    issues.replaceChildren(...m.map((issue) => {
      const at = issue.indexOf(': ');
      return at > 0 ? h('li', {}, h('code', {}, issue.slice(0, at)), ` ${issue.slice(at + 2)}`) : h('li', {}, issue);
    }));
    text.classList.toggle('invalid', message !== '');
    text.setAttribute('aria-invalid', message !== '' ? 'true' : 'false');
  };
  const save = async (ev) => {
    ev.preventDefault();
    showError('');
    let policy;
    try {
      policy = JSON.parse(text.value);
    } catch (err) {
      showError(`Not valid JSON: ${err.message}`);
      return;
    }
    try {
      const r = await api('mesh/policy', { body: { policy } });
      info.textContent = `Saved: policy ${r.policyId}; ${r.affectedNodes.length} node(s) told.`;
    } catch (err) {
      showError(err instanceof ApiError ? `${err.code}: ${err.message}` : String(err), err);
    }
  };
  return {
    view: [h('h1', {}, 'Mesh policy'), info, h('form', { id: 'policy-form', onsubmit: save }, text, error, issues, h('button', { type: 'submit', id: 'policy-save' }, 'Save policy'))],
    onEvent: () => {},
  };
}

const PAGES = { nodes: nodesPage, node: nodePage, tokens: tokensPage, operations: operationsPage, events: eventsPage, audit: auditPage, policy: policyPage };

let rendering = 0;
async function render() {
  const [name = 'nodes', ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const page = PAGES[name] ?? nodesPage;
  const turn = ++rendering;
  try {
    const p = await page(...rest.map(decodeURIComponent));
    if (turn !== rendering) return; // a newer render started meanwhile
    status.textContent = '';
    current.onLeave?.();
    current = { name, onEvent: p.onEvent, onLeave: p.onLeave };
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

// The portico dashboard: polls GET /stats, draws it, and asks POST /explain. Everything that
// comes from the server is written as text (textContent), never as markup.
'use strict';

(() => {
  const POLL_MS = 1500;
  const WINDOW_MS = 10000;
  const TOKEN_KEY = 'portico.admin.token';

  const $ = (id) => document.getElementById(id);
  const readings = []; // { at, routes: Map(name -> { requests, errors, buckets }) }, oldest first
  let timer = null;
  let bounds = [];

  function token() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h.Authorization = `Bearer ${t}`;
    return h;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const c of cells) tr.appendChild(c instanceof Node ? c : el('td', c));
    return tr;
  }

  function num(text, cls) {
    return el('td', text, cls ? `num ${cls}` : 'num');
  }

  function setStatus(state, text) {
    const s = $('status');
    s.dataset.state = state;
    s.textContent = text;
  }

  function fmtRate(r) {
    if (r === null || r === undefined || !Number.isFinite(r)) return '–';
    if (r === 0) return '0';
    return r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2);
  }

  function fmtMs(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(ms)) return '–';
    if (ms < 1) return `${(ms * 1000).toFixed(0)} µs`;
    if (ms < 1000) return `${ms < 10 ? ms.toFixed(2) : ms.toFixed(1)} ms`;
    return `${(ms / 1000).toFixed(2)} s`;
  }

  // The q quantile of per-bucket counts, by linear interpolation within the bucket, as the
  // server (and Prometheus' histogram_quantile) computes it. Seconds, or null.
  function quantile(counts, q) {
    const total = counts.reduce((a, b) => a + b, 0);
    if (total <= 0) return null;
    const rank = q * total;
    let below = 0;
    let lower = 0;
    for (let i = 0; i < counts.length; i += 1) {
      const upper = i < bounds.length ? bounds[i] : Infinity;
      const c = counts[i];
      if (c > 0 && below + c >= rank) {
        if (!Number.isFinite(upper)) return lower;
        return lower + (upper - lower) * Math.min(1, Math.max(0, (rank - below) / c));
      }
      below += c;
      if (Number.isFinite(upper)) lower = upper;
    }
    return lower;
  }

  function matchText(m) {
    if (!m || typeof m !== 'object' || Object.keys(m).length === 0) return 'every request';
    return Object.entries(m)
      .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join('  ');
  }

  function remember(stats) {
    const at = Number(stats.at_unix_ms) || Date.now();
    const routes = new Map();
    for (const r of stats.routes) routes.set(r.name, { requests: r.requests, errors: r.errors, buckets: r.buckets });
    const last = readings[readings.length - 1];
    // Counts went down: another process answers now; earlier readings mean nothing.
    if (last && stats.totals.requests < last.total) readings.length = 0;
    readings.push({ at, routes, total: stats.totals.requests, errors: stats.totals.errors });
    while (readings.length > 2 && at - readings[1].at >= WINDOW_MS) readings.shift();
  }

  // What changed between the oldest kept reading and the newest: per route and in all.
  function windowed() {
    if (readings.length < 2) return null;
    const first = readings[0];
    const last = readings[readings.length - 1];
    const seconds = (last.at - first.at) / 1000;
    if (seconds <= 0) return null;
    const routes = new Map();
    for (const [name, now] of last.routes) {
      const then = first.routes.get(name) || { requests: 0, errors: 0, buckets: [] };
      const buckets = now.buckets.map((c, i) => Math.max(0, c - (then.buckets[i] || 0)));
      routes.set(name, {
        rate: Math.max(0, now.requests - then.requests) / seconds,
        errorRate: Math.max(0, now.errors - then.errors) / seconds,
        buckets,
      });
    }
    return {
      seconds,
      routes,
      rate: Math.max(0, last.total - first.total) / seconds,
      errorRate: Math.max(0, last.errors - first.errors) / seconds,
    };
  }

  function drawSummary(stats, w) {
    $('hash').textContent = stats.config_hash;
    $('total-requests').textContent = String(stats.totals.requests);
    $('total-rate').textContent = w ? fmtRate(w.rate) : '–';
    const er = $('error-rate');
    er.textContent = w ? fmtRate(w.errorRate) : '–';
    er.classList.toggle('errors', Boolean(w && w.errorRate > 0));
    $('error-share').textContent = w && w.rate > 0 ? `${((100 * w.errorRate) / w.rate).toFixed(1)} %` : '–';
    $('window').textContent = w ? w.seconds.toFixed(0) : String(WINDOW_MS / 1000);
  }

  function drawRoutes(stats, w) {
    const body = $('routes').tBodies[0];
    body.replaceChildren();
    if (stats.routes.length === 0) {
      const td = el('td', 'no routes', 'empty');
      td.colSpan = 10;
      body.appendChild(row([td]));
    }
    for (const r of stats.routes) {
      const recent = w && w.routes.get(r.name);
      const useRecent = recent && recent.buckets.some((c) => c > 0);
      const q = (p, fallback) => (useRecent ? quantile(recent.buckets, p) * 1000 : fallback);
      const tr = row([
        el('td', r.name, 'mono'),
        el('td', r.listeners.join(', ') || '–'),
        el('td', matchText(r.match), 'match mono'),
        el('td', r.action, 'mono'),
        num(recent ? fmtRate(recent.rate) : '–'),
        num(recent ? fmtRate(recent.errorRate) : '–', recent && recent.errorRate > 0 ? 'errors' : ''),
        num(fmtMs(q(0.5, r.p50_ms))),
        num(fmtMs(q(0.9, r.p90_ms))),
        num(fmtMs(q(0.99, r.p99_ms))),
        num(`${r.requests}${r.errors > 0 ? ` (${r.errors} 5xx)` : ''}`),
      ]);
      tr.dataset.route = r.name;
      body.appendChild(tr);
    }
  }

  function drawUpstreams(stats) {
    const box = $('upstreams');
    box.replaceChildren();
    if (stats.upstreams.length === 0) box.appendChild(el('p', 'no upstreams', 'hint'));
    for (const u of stats.upstreams) {
      const div = el('div', null, 'upstream');
      div.dataset.upstream = u.name;
      const h = el('h3', u.name);
      const healthy = u.targets.filter((t) => t.healthy).length;
      h.appendChild(el('span', `  ${u.balance} · ${healthy}/${u.targets.length} healthy · ${u.in_flight} in flight`, 'muted'));
      div.appendChild(h);
      const table = document.createElement('table');
      const head = row(['target', 'state', 'active check', 'in flight', 'latency (EWMA)'].map((t, i) => el('th', t, i >= 3 ? 'num' : '')));
      table.createTHead().appendChild(head);
      const body = table.createTBody();
      for (const t of u.targets) {
        const state = t.healthy ? 'healthy' : 'unhealthy';
        const badge = el('span', state, `badge ${state}`);
        const stateCell = el('td');
        stateCell.appendChild(badge);
        if (t.ejected_for_ms > 0) {
          stateCell.appendChild(document.createTextNode(' '));
          stateCell.appendChild(el('span', `ejected ${(t.ejected_for_ms / 1000).toFixed(1)} s`, 'badge ejected'));
        }
        const tr = row([
          el('td', t.address, 'mono'),
          stateCell,
          el('td', t.active_check_up ? 'up' : 'down'),
          num(t.in_flight),
          num(fmtMs(t.ewma_ms)),
        ]);
        tr.dataset.target = t.address;
        tr.dataset.state = state;
        body.appendChild(tr);
      }
      div.appendChild(table);
      box.appendChild(div);
    }
  }

  function drawListeners(stats) {
    const body = $('listeners').tBodies[0];
    body.replaceChildren();
    for (const l of stats.listeners) {
      const tr = row([
        el('td', l.name, 'mono'),
        el('td', l.bind || '–', 'mono'),
        el('td', `${l.protocol || '–'}${l.tls ? ' (TLS)' : ''}`),
        num(l.routes),
        num(l.connections),
      ]);
      tr.dataset.listener = l.name;
      body.appendChild(tr);
    }
  }

  function drawReloads(stats) {
    const body = $('reloads').tBodies[0];
    body.replaceChildren();
    for (const r of stats.reloads) {
      const when = new Date(r.at_unix * 1000);
      const result = el('td');
      result.appendChild(el('span', r.result, `badge ${r.result === 'applied' ? 'applied' : 'refused'}`));
      body.appendChild(row([
        el('td', when.toLocaleTimeString(), 'mono'),
        el('td', r.trigger),
        result,
        el('td', r.hash || '–', 'mono'),
        el('td', r.error || ''),
      ]));
    }
  }

  // With cluster.etcd: what this node knows of etcd, and the node list (GET /cluster/nodes).
  async function drawCluster(stats) {
    const box = $('cluster');
    if (!stats.cluster) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const e = stats.cluster.etcd;
    let text = `this node: ${stats.cluster.node_id} · etcd ${e.endpoint} · ` +
      (e.connected ? 'connected' : `unreachable: ${e.error || 'no answer'}`) +
      ` · shared config revision ${e.revision}`;
    if (e.refused_revision) text += ` · revision ${e.refused_revision} refused: ${e.refused_reason}`;
    const line = $('cluster-etcd');
    line.textContent = text;
    line.dataset.state = e.connected && !e.refused_revision ? 'ok' : 'trouble';
    const body = $('cluster-nodes').tBodies[0];
    try {
      const res = await fetch('/cluster/nodes', { headers: headers(), cache: 'no-store' });
      if (!res.ok) throw new Error(`answered ${res.status}`);
      const list = await res.json();
      body.replaceChildren();
      for (const n of list.nodes) {
        const health = el('td');
        health.appendChild(el('span', n.health, `badge ${n.health === 'ok' ? 'applied' : 'refused'}`));
        const tr = row([
          el('td', n.id, 'mono'),
          el('td', n.address || '–', 'mono'),
          el('td', n.version),
          num(n.config_revision),
          el('td', n.same_revision ? 'yes' : 'no'),
          health,
          el('td', new Date(n.started * 1000).toLocaleString(), 'mono'),
        ]);
        tr.dataset.node = n.id;
        body.appendChild(tr);
      }
    } catch (err) {
      body.replaceChildren(row([el('td', `node list unavailable: ${err.message}`)]));
    }
  }

  function draw(stats) {
    bounds = stats.bounds_s || bounds;
    remember(stats);
    const w = windowed();
    drawSummary(stats, w);
    drawRoutes(stats, w);
    drawUpstreams(stats);
    drawListeners(stats);
    drawReloads(stats);
    drawCluster(stats);
  }

  async function poll() {
    timer = null;
    try {
      const res = await fetch('/stats', { headers: headers(), cache: 'no-store' });
      if (res.status === 401) {
        $('token-needed').hidden = false;
        setStatus('token', token() ? 'token refused' : 'token needed');
        return; // until a token is given
      }
      if (!res.ok) throw new Error(`/stats answered ${res.status}`);
      const stats = await res.json();
      $('token-needed').hidden = true;
      draw(stats);
      setStatus('live', `live · ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      setStatus('error', `unreachable: ${e.message}`);
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function restart() {
    if (timer !== null) clearTimeout(timer);
    readings.length = 0;
    poll();
  }

  async function explain(event) {
    event.preventDefault();
    const out = $('explain-out');
    let url = $('explain-url').value.trim();
    // `host/path` is taken for `http://host/path`, as a browser's address bar does.
    if (url && !/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) url = `http://${url}`;
    const body = {
      method: $('explain-method').value.trim() || 'GET',
      url,
      headers: $('explain-headers').value.split('\n').map((h) => h.trim()).filter((h) => h.length > 0),
    };
    out.dataset.state = 'asking';
    out.textContent = '…';
    try {
      const res = await fetch('/explain', {
        method: 'POST',
        headers: headers({ 'Content-Type': 'application/json' }),
        body: JSON.stringify(body),
        cache: 'no-store',
      });
      const answer = await res.json().catch(() => ({}));
      if (res.ok && typeof answer.text === 'string') {
        out.dataset.state = 'answer';
        out.textContent = answer.text;
      } else {
        out.dataset.state = 'error';
        out.textContent = answer.message || `/explain answered ${res.status}`;
      }
    } catch (e) {
      out.dataset.state = 'error';
      out.textContent = `unreachable: ${e.message}`;
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token').value.trim();
      try {
        if (value) sessionStorage.setItem(TOKEN_KEY, value);
      } catch (_) {
        // Storage refused (a private window): the token lives as long as the field.
      }
      $('token').value = '';
      $('token').placeholder = value ? 'token set for this tab' : $('token').placeholder;
      restart();
    });
    $('token-forget').addEventListener('click', () => {
      try {
        sessionStorage.removeItem(TOKEN_KEY);
      } catch (_) {
        // Nothing stored.
      }
      $('token').placeholder = 'bearer token, if the admin API has one';
      restart();
    });
    if (token()) $('token').placeholder = 'token set for this tab';
    $('explain-form').addEventListener('submit', explain);
    poll();
  });
})();

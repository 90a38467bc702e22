// treecast dashboard: draws the node's status from /api/status's event stream (Server-Sent
// Events: `status` reports and `throughput` samples). Read-only, no library, no build step.
'use strict';
(function () {
  const $ = (id) => document.getElementById(id);
  const token = new URLSearchParams(location.search).get('token');
  const api = 'api/status' + (token ? '?token=' + encodeURIComponent(token) : '');
  const WINDOW_MS = 10 * 60 * 1000;
  const SOURCES = ['publisher', 'peer', 'relay'];
  let samples = [];
  let report = null;
  let updates = 0;
  const sort = { key: 'state', dir: 1 };

  // ---- formatting ----
  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let u = 0;
    while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
    return (u === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + units[u];
  }
  function duration(ms) {
    if (ms < 1000) return ms + ' ms';
    const s = ms / 1000;
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + String(Math.floor(s % 60)).padStart(2, '0') + 's';
    return Math.floor(m / 60) + 'h ' + String(m % 60).padStart(2, '0') + 'm';
  }
  function ago(ms) {
    const now = report ? report.now_unix_ms : Date.now();
    const s = Math.max(0, Math.round((now - ms) / 1000));
    return s <= 1 ? 'now' : duration(s * 1000) + ' ago';
  }
  function clock(ms) { return new Date(ms).toLocaleTimeString(); }
  function short(peer) { return peer.length > 12 ? '…' + peer.slice(-10) : peer; }
  function rev(r) { return r === null || r === undefined ? '-' : String(r); }
  function set(id, value) {
    const e = $(id);
    const v = String(value);
    if (e.textContent !== v) e.textContent = v;
  }
  function cell(tr, value, cls) {
    const td = document.createElement('td');
    td.textContent = value;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }
  function show(id, on) { $(id).hidden = !on; }
  function width(id, frac) { $(id).style.width = (Math.max(0, Math.min(1, frac)) * 100).toFixed(1) + '%'; }

  // ---- the node ----
  function drawNode(r) {
    set('role', 'treecast ' + r.role);
    set('dir', r.dir);
    document.title = 'treecast ' + r.role + ' · ' + r.dir;
    set('revision', rev(r.revision));
    set('newest', rev(r.newest_known) + (r.newest_signed_by ? ' (signed by ' + r.newest_signed_by + ')' : ''));
    const state = $('state');
    const [label, cls] = r.synced ? ['in sync', 'ok'] : r.sync ? ['syncing', 'wait'] : ['waiting', 'wait'];
    state.textContent = label;
    state.className = 'badge ' + cls;
    set('swarm', r.swarm_id);
    set('publisher', r.publisher_fingerprint);
    set('node', r.peer_id);
    set('reachability', r.reachability);
    set('addrs', r.addrs.length ? r.addrs.join('  ') : '-');
    set('uptime', duration(r.uptime_secs * 1000));
    const t = r.traffic;
    set('traffic', '↓ ' + bytes(t.total.down) + ' (' + bytes(t.rate_bytes_per_sec.down) + '/s) · ↑ ' +
      bytes(t.total.up) + ' (' + bytes(t.rate_bytes_per_sec.up) + '/s)');
    show('error', !!r.error);
    if (r.error) set('error', 'Not progressing: ' + r.error);
  }

  function drawDownload(r) {
    show('download-card', !!r.sync);
    if (!r.sync) return;
    const s = r.sync;
    const frac = s.bytes_total ? s.bytes_done / s.bytes_total : 1;
    set('download-pct', (frac * 100).toFixed(0) + '%');
    set('download-revision', rev(s.revision));
    width('download-bar', frac);
    set('download-text', bytes(s.bytes_done) + ' of ' + bytes(s.bytes_total) + ' at ' +
      bytes(s.rate_bytes_per_sec) + '/s · ETA ' + (s.eta_secs === null ? '-' : duration(s.eta_secs * 1000)));
  }

  // ---- the publisher's rollout ----
  function drawRollout(r) {
    const ro = r.rollout;
    show('rollout-card', !!ro);
    if (!ro) return;
    $('rollout-card').dataset.elapsedMs = ro.elapsed_ms;
    set('rollout-revision', ro.revision);
    set('rollout-holding', ro.holding);
    set('rollout-subscribers', ro.subscribers);
    width('rollout-bar', ro.subscribers ? ro.holding / ro.subscribers : 0);
    let time;
    if (ro.complete_unix_ms) {
      time = 'reached every online subscriber in ' + duration(ro.elapsed_ms) + ' (published ' + clock(ro.published_unix_ms) + ')';
    } else if (ro.subscribers === 0) {
      time = 'no online subscriber yet (published ' + clock(ro.published_unix_ms) + ')';
    } else {
      time = 'rolling out for ' + duration(ro.elapsed_ms);
    }
    set('rollout-time', time);
    const behind = $('rollout-behind');
    behind.replaceChildren(...ro.behind.map((b) => {
      const li = document.createElement('li');
      li.textContent = 'behind: ' + short(b.peer) + ' at revision ' + rev(b.revision);
      li.title = b.peer;
      li.dataset.peer = b.peer;
      return li;
    }));
    const rows = (ro.history || []).map((h) => {
      const tr = document.createElement('tr');
      tr.dataset.revision = h.revision;
      cell(tr, h.revision);
      cell(tr, clock(h.published_unix_ms));
      const took = h.complete_unix_ms ? duration(h.elapsed_ms)
        : h.superseded_unix_ms ? 'superseded after ' + duration(h.elapsed_ms)
          : 'under way, ' + duration(h.elapsed_ms);
      cell(tr, took);
      cell(tr, h.holding + ' / ' + h.subscribers);
      return tr;
    });
    $('history').tBodies[0].replaceChildren(...rows);
  }

  // ---- peers ----
  function peerRows(r) {
    return r.peers.map((p) => ({
      peer: p.peer,
      role: p.role || '-',
      link: p.connection || '-',
      revision: p.revision === null ? -1 : p.revision,
      down: p.rate_bytes_per_sec.down,
      up: p.rate_bytes_per_sec.up,
      rtt: p.rtt_ms === null ? Infinity : p.rtt_ms,
      seen: -p.last_seen_unix_ms,
      seenAt: p.last_seen_unix_ms,
      state: p.banned ? 'banned' : p.online ? 'online' : 'offline',
      address: p.address || '-',
    }));
  }
  function drawPeers(r) {
    const rows = peerRows(r);
    const k = sort.key;
    rows.sort((a, b) => (a[k] < b[k] ? -1 : a[k] > b[k] ? 1 : a.peer < b.peer ? -1 : 1) * sort.dir);
    const online = rows.filter((p) => p.state === 'online').length;
    set('peer-count', online + ' online of ' + rows.length);
    $('peers').tBodies[0].replaceChildren(...rows.map((p) => {
      const tr = document.createElement('tr');
      tr.dataset.peer = p.peer;
      cell(tr, short(p.peer), 'mono').title = p.peer;
      cell(tr, p.role);
      cell(tr, p.link);
      cell(tr, p.revision < 0 ? '-' : p.revision, 'num');
      cell(tr, bytes(p.down), 'num');
      cell(tr, bytes(p.up), 'num');
      cell(tr, p.rtt === Infinity ? '-' : p.rtt.toFixed(1) + ' ms', 'num');
      cell(tr, ago(p.seenAt));
      cell(tr, p.state, 'state-' + p.state);
      cell(tr, p.address, 'mono');
      return tr;
    }));
    for (const th of $('peers').tHead.rows[0].cells) {
      th.className = th.dataset.key === sort.key ? (sort.dir > 0 ? 'asc' : 'desc') : '';
      if (['revision', 'down', 'up', 'rtt'].includes(th.dataset.key)) th.classList.add('num');
    }
  }
  $('peers').tHead.addEventListener('click', (e) => {
    const key = e.target.dataset && e.target.dataset.key;
    if (!key) return;
    sort.dir = sort.key === key ? -sort.dir : 1;
    sort.key = key;
    if (report) drawPeers(report);
  });

  // ---- the throughput chart (SVG) ----
  function addSamples(list) {
    for (const s of list) {
      if (samples.length && s.unix_ms <= samples[samples.length - 1].unix_ms) continue;
      samples.push(s);
    }
    const newest = samples.length ? samples[samples.length - 1].unix_ms : 0;
    samples = samples.filter((s) => newest - s.unix_ms <= WINDOW_MS);
  }
  function sum(m) { return SOURCES.reduce((a, k) => a + (m[k] || 0), 0); }
  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function drawChart() {
    const chart = $('chart');
    const W = Math.max(300, Math.round(chart.clientWidth || 600));
    const H = Math.max(120, Math.round(chart.clientHeight || 220));
    chart.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    const top = 16, bottom = H - 18, mid = (top + bottom) / 2;
    const peakUp = samples.reduce((a, s) => Math.max(a, sum(s.up)), 0);
    const peakDown = samples.reduce((a, s) => Math.max(a, sum(s.down)), 0);
    const peak = Math.max(peakUp, peakDown, 1);
    const newest = samples.length ? samples[samples.length - 1].unix_ms : Date.now();
    // Ten minutes once there are; until then the time there is, and at least one minute.
    const span = Math.min(WINDOW_MS, Math.max(60 * 1000, samples.length ? newest - samples[0].unix_ms : 0));
    const x = (t) => W - ((newest - t) / span) * W;
    const kids = [svg('line', { x1: 0, x2: W, y1: mid, y2: mid, class: 'axis' })];
    for (const dir of ['down', 'up']) {
      const y = (v) => (dir === 'down' ? mid - (v / peak) * (mid - top) : mid + (v / peak) * (bottom - mid));
      const below = samples.map(() => 0);
      for (const src of SOURCES) {
        const above = samples.map((s, i) => below[i] + (s[dir][src] || 0));
        if (samples.length && above.some((v, i) => v > below[i])) {
          let d = '';
          samples.forEach((s, i) => { d += (i ? 'L' : 'M') + x(s.unix_ms).toFixed(1) + ',' + y(above[i]).toFixed(1); });
          for (let i = samples.length - 1; i >= 0; i--) d += 'L' + x(samples[i].unix_ms).toFixed(1) + ',' + y(below[i]).toFixed(1);
          kids.push(svg('path', { d: d + 'Z', class: 'series src-' + src + ' ' + dir }));
        }
        above.forEach((v, i) => { below[i] = v; });
      }
    }
    const label = (tx, ty, s, anchor) => {
      const t = svg('text', { x: tx, y: ty, 'text-anchor': anchor || 'start' });
      t.textContent = s;
      return t;
    };
    kids.push(label(4, top - 4, '↓ received'), label(4, bottom - 4, '↑ sent'));
    kids.push(label(W - 4, top - 4, bytes(peak) + '/s', 'end'), label(W - 4, H - 3, 'now', 'end'));
    kids.push(label(4, H - 3, '−' + duration(span).replace(/ 00s$/, '')));
    chart.replaceChildren(...kids);
    chart.dataset.points = samples.length;
    chart.dataset.peakUp = Math.round(peakUp);
    chart.dataset.peakDown = Math.round(peakDown);
  }
  $('chart-legend').replaceChildren(...SOURCES.flatMap((src) => {
    const sw = document.createElement('span');
    sw.className = 'swatch src-' + src;
    return [sw, document.createTextNode(src === 'peer' ? 'peers' : src)];
  }));

  // ---- live updates ----
  function live(ok, why) {
    const b = $('live');
    b.textContent = ok ? 'live' : why || 'reconnecting…';
    b.className = 'badge ' + (ok ? 'ok' : 'bad');
  }
  function draw(r) {
    report = r;
    updates++;
    document.body.dataset.updates = updates;
    drawNode(r);
    drawDownload(r);
    drawRollout(r);
    drawPeers(r);
  }
  const events = new EventSource(api);
  events.addEventListener('status', (e) => { draw(JSON.parse(e.data)); live(true); });
  events.addEventListener('throughput', (e) => { addSamples(JSON.parse(e.data)); drawChart(); });
  events.addEventListener('open', () => live(true));
  events.addEventListener('error', () => live(false));
  window.addEventListener('resize', drawChart);
  drawChart();
})();

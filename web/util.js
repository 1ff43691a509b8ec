// util.js - DOM building and formatting helpers shared by every view.
//
// Everything that comes from the API reaches the page through h() and
// text nodes (textContent), never through innerHTML, so a pipeline name,
// a commit message or a log line can never become markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.setAttribute('class', v);
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// h('a', {href: '#/'}, 'text', child…): an HTML element.
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// s('rect', {x: 1}): an SVG element.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

// The server's clock: otacd time may run faster than the wall clock
// (--time-scale) and is anchored in its database, so "now" for durations of
// running jobs comes from /api/v1/health, not from Date.now().
// Jobs that ran on agents are measured in real time (their real_started_at,
// real_finished_at), whatever the scale; /api/v1/health's real_time is the
// server's wall clock.
const clock = { base: Date.now(), at: Date.now(), scale: 1, real: Date.now() };
export function setServerClock(time, scale, realTime) {
  clock.base = time;
  clock.at = Date.now();
  if (realTime) clock.real = realTime;
  else clock.real = Date.now();
  if (scale !== undefined) clock.scale = scale > 0 ? scale : 1;   // else: keep health's scale
}
export function serverRealNow() {
  return clock.real + (Date.now() - clock.at);
}
export function serverNow() {
  return clock.base + (Date.now() - clock.at) * clock.scale;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !isFinite(ms) || ms < 0) return '';
  if (ms < 1000) return ms + ' ms';
  const sec = Math.floor(ms / 1000);
  if (sec < 60) return (ms / 1000).toFixed(ms < 10000 ? 1 : 0) + ' s';
  const d = Math.floor(sec / 86400), hr = Math.floor(sec % 86400 / 3600);
  const m = Math.floor(sec % 3600 / 60), ss = sec % 60;
  if (d) return d + 'd ' + hr + 'h';
  if (hr) return hr + 'h ' + m + 'm';
  return m + 'm ' + ss + 's';
}

// Duration from started to finished, or to now while it is still going.
export function span(started, finished) {
  if (!started) return '';
  return fmtDuration((finished || serverNow()) - started);
}

// A duration cell that keeps counting while the thing is running.
export function durationNode(started, finished) {
  const el = h('span', { class: 'dur' }, span(started, finished));
  if (started && !finished) el.dataset.since = String(started);
  return el;
}

// A job's duration, in the clock the API says (job.clock): real time for
// jobs on agents, otacd time for holds and jobs inside otacd.  The title
// says which.
export function jobDurationNode(job) {
  if (job.clock !== 'real' || !job.real_started_at) {
    const el = job.started_at ? durationNode(job.started_at, job.finished_at) : h('span', { class: 'dur' }, '');
    el.title = 'otacd time (--time-scale)';
    return el;
  }
  const fin = job.real_finished_at;
  const el = h('span', { class: 'dur', title: 'real time on the agent' },
    fmtDuration((fin || serverRealNow()) - job.real_started_at));
  if (!fin) el.dataset.realSince = String(job.real_started_at);
  return el;
}

// A countdown to an otacd time (a rollout hold): "3h 12m", then `over`.
export function countdownNode(until, over = 'over') {
  const el = h('span', { class: 'countdown', 'data-until': until, 'data-over': over });
  el.textContent = until > serverNow() ? fmtDuration(until - serverNow()) : over;
  return el;
}

export function tickDurations() {
  const now = serverNow();
  for (const el of document.querySelectorAll('[data-since]'))
    el.textContent = fmtDuration(now - Number(el.dataset.since));
  for (const el of document.querySelectorAll('[data-real-since]'))
    el.textContent = fmtDuration(serverRealNow() - Number(el.dataset.realSince));
  for (const el of document.querySelectorAll('[data-ago]'))
    el.textContent = ago(Number(el.dataset.ago));
  for (const el of document.querySelectorAll('[data-until]')) {
    const left = Number(el.dataset.until) - now;
    el.textContent = left > 0 ? fmtDuration(left) : el.dataset.over || 'over';
  }
  // progress bars of holds: data-from, data-to (otacd ms)
  for (const el of document.querySelectorAll('[data-from][data-to]')) {
    const from = Number(el.dataset.from), to = Number(el.dataset.to);
    el.style.width = (to > from ? Math.max(0, Math.min(1, (now - from) / (to - from))) * 100 : 100).toFixed(1) + '%';
  }
}

export function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, '0');
  return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' +
    p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
}

export function ago(ms) {
  if (!ms) return 'never';
  const d = serverNow() - ms;
  if (d < 5000) return 'just now';
  return fmtDuration(d).replace(/ \d+s$/, '') + ' ago';
}

// <time> with the absolute time as title and "3m ago" as text, kept fresh.
export function timeAgo(ms) {
  if (!ms) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: new Date(ms).toISOString(), title: fmtTime(ms), 'data-ago': ms }, ago(ms));
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  if (n < 1024) return n + ' B';
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return v.toFixed(v < 10 ? 1 : 0) + ' ' + units[i];
}

export function shortRef(ref) {
  if (!ref) return '';
  return ref.replace(/^refs\/(heads|tags)\//, '');
}

export function shortId(hex, n = 12) {
  return hex ? String(hex).slice(0, n) : '';
}

export function firstLine(text) {
  return text ? String(text).split('\n', 1)[0] : '';
}

const STATES = new Set(['queued', 'running', 'passed', 'failed', 'canceled', 'skipped', 'blocked',
  'idle', 'busy', 'offline', 'lost']);
// Rollout, release and gate states borrow the colours of run states; the
// ones that need a person (paused, waiting for approval) look "blocked".
const ALIAS = {
  free: 'idle', starting: 'running', holding: 'running', rolling: 'running', reissuing: 'running',
  waiting_approval: 'blocked', paused: 'blocked', halted: 'failed', waiting_window: 'queued',
  created: 'queued', released: 'passed', rolled_back: 'failed', pass: 'passed', fail: 'failed',
  inconclusive: 'queued', error: 'failed',
};

function colourOf(st) {
  if (STATES.has(st)) return st;
  return ALIAS[st] || 'other';
}

// A state badge: the word is always shown (colour is never the only cue).
export function badge(state) {
  const st = String(state || 'unknown');
  return h('span', { class: 'badge st-' + colourOf(st), 'data-state': st }, st.replace(/_/g, ' '));
}

export function stateClass(state) {
  return 'st-' + colourOf(state);
}

// A definition list from [label, value] pairs, skipping empty values.
export function facts(pairs) {
  const dl = h('dl', { class: 'facts' });
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === '') continue;
    dl.append(h('div', null, h('dt', null, k), h('dd', null, v)));
  }
  return dl;
}

// Wrap a table so that it scrolls sideways on narrow screens instead of
// overflowing the page.
export function tableWrap(table, label) {
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': label, tabindex: '0' }, table);
}

export function table(headers, rows, cls) {
  return h('table', { class: cls || null },
    h('thead', null, h('tr', null, headers.map((x) =>
      typeof x === 'string' ? h('th', { scope: 'col' }, x) : h('th', { scope: 'col', class: x.class }, x.text)))),
    h('tbody', null, rows));
}

// Replace the children of el with nodes, keeping keyboard focus on the
// "same" element (same data-key) if it had it: views re-render on every
// event and must not throw a keyboard user back to the top.
export function replaceKeepingFocus(el, nodes) {
  const active = document.activeElement;
  const key = active && el.contains(active) ? active.getAttribute('data-key') : null;
  el.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  if (key) {
    const again = el.querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (again) again.focus({ preventScroll: true });
  }
}

// Make the element `el` look like `next` (a freshly built copy of it) by
// changing only what differs, so that elements that stay keep their
// identity: a graph redrawn on every event would otherwise be a new tree
// each time, losing hover and focus and detaching whatever a person (or a
// test) is pointing at.  Children are matched by position; a child whose
// tag or identity (data-stage, data-job, data-from, data-to) changed is
// replaced whole.  Only for trees without event listeners (they are not
// carried over).  Returns the node that is in the document afterwards.
const IDENTITY = ['data-stage', 'data-job', 'data-from', 'data-to'];
export function morph(el, next) {
  const same = el.nodeType === next.nodeType && el.nodeName === next.nodeName &&
    (el.nodeType !== Node.ELEMENT_NODE ||
     (el.namespaceURI === next.namespaceURI && IDENTITY.every((a) => el.getAttribute(a) === next.getAttribute(a))));
  if (!same) {
    el.replaceWith(next);
    return next;
  }
  if (el.nodeType !== Node.ELEMENT_NODE) {
    if (el.nodeValue !== next.nodeValue) el.nodeValue = next.nodeValue;
    return el;
  }
  for (const a of [...el.attributes]) if (!next.hasAttribute(a.name)) el.removeAttribute(a.name);
  for (const a of [...next.attributes]) if (el.getAttribute(a.name) !== a.value) el.setAttribute(a.name, a.value);
  const was = [...el.childNodes], now = [...next.childNodes];
  now.forEach((c, i) => { if (i < was.length) morph(was[i], c); else el.append(c); });
  for (let i = now.length; i < was.length; i++) was[i].remove();
  return el;
}

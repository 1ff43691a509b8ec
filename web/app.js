// app.js - the otacd status page: routing, live updates, status and errors.
//
// The page reads only the public JSON API (docs/api.md).  Views live in
// their own modules (overview.js, run.js, job.js, release.js, agents.js);
// each is a class with load() (first render), refresh() (re-read after a
// change), wants(event) (whether an event concerns it), and destroy().
//
// Live updates come from one EventSource on /api/v1/events, shared by the
// page's tabs (live.js).  Any event a
// view wants schedules its refresh (debounced, so a burst of events costs
// one round of requests).  EventSource reconnects by itself when otacd
// restarts; while it is disconnected the header says "reconnecting…", and
// once it is back the view is refreshed (events missed meanwhile are
// replayed by Last-Event-ID, and the refresh covers the rest).

import { AuthError, getJSON, setToken, takeTokenFromHash, token } from './api.js';
import { startLive, stopLive } from './live.js';
import { h, setServerClock, tickDurations } from './util.js';
import { clearError, reportError, setConn } from './status.js';
import { OverviewView } from './overview.js';
import { RunView } from './run.js';
import { JobLogView } from './job.js';
import { ReleaseView } from './release.js';
import { AgentsView } from './agents.js';

const main = document.getElementById('main');
const signout = document.getElementById('signout');

const DEBOUNCE_MS = 200;

// ---- routing ---------------------------------------------------------------

function parseRoute() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  let m;
  if (path === '/' || path === '') return { name: 'overview', key: 'overview', query };
  if ((m = path.match(/^\/runs\/(\d+)\/?$/))) return { name: 'run', key: 'run' + m[1], id: Number(m[1]), query };
  if ((m = path.match(/^\/jobs\/(\d+)(?:\/log)?(?:\/L(\d+))?\/?$/)))
    return { name: 'job', key: 'job' + m[1] + '/' + (query.get('attempt') || ''), id: Number(m[1]), line: m[2] ? Number(m[2]) : 0, query };
  if ((m = path.match(/^\/releases\/(\d+)\/?$/))) return { name: 'release', key: 'release' + m[1], id: Number(m[1]), query };
  if (path === '/agents' || path === '/agents/') return { name: 'agents', key: 'agents', query };
  return { name: 'missing', key: 'missing' + path, path, query };
}

const VIEWS = {
  overview: OverviewView,
  run: RunView,
  job: JobLogView,
  release: ReleaseView,
  agents: AgentsView,
};

class MissingView {
  constructor(ctx) { this.ctx = ctx; }
  async load() {
    this.ctx.title('Not found');
    this.ctx.main.replaceChildren(h('h1', null, 'Nothing here'),
      h('p', null, 'The page “', this.ctx.route.path, '” does not exist. ', h('a', { href: '#/' }, 'Back to the runs'), '.'));
  }
  refresh() {}
  wants() { return false; }
  destroy() {}
}

let current = null;     // { route, view, ctx }
let authShown = false;

// Stop the current view: its requests' answers are ignored from now on and
// its streams are closed.
function dropView() {
  if (!current) return;
  current.ctx.alive = false;
  current.view.destroy();
  current = null;
}

function makeCtx(route) {
  const ctx = {
    route,
    main,
    alive: true,
    title(t) { document.title = t ? t + ' · otacd' : 'otacd'; },
    // A view's request failed: a missing or refused token shows the token
    // form; anything else goes to the error area (the view keeps what it
    // showed last).
    fail(err, source = 'view') {
      if (!ctx.alive || (err && err.name === 'AbortError')) return;
      if (err instanceof AuthError) { showTokenForm(err); return; }
      reportError(source, err);
    },
    ok(source = 'view') { clearError(source); },
    // re-read the view soon (a poll, or after an action), debounced like events
    refreshSoon() { if (ctx.alive && current && current.ctx === ctx) scheduleRefresh(); },
  };
  return ctx;
}

async function route(opts = {}) {
  const r = parseRoute();
  for (const a of document.querySelectorAll('header nav a')) {
    const on = a.dataset.nav === r.name || (a.dataset.nav === 'overview' && ['run', 'job', 'release'].includes(r.name));
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  if (current && !authShown && current.route.key === r.key && current.view.update) {
    current.route = r;
    current.ctx.route = r;
    current.view.update(r);
    return;
  }
  dropView();
  authShown = false;
  clearError('view');
  const ctx = makeCtx(r);
  const View = VIEWS[r.name] || MissingView;
  const view = new View(ctx);
  current = { route: r, view, ctx };
  main.replaceChildren(h('p', { class: 'muted loading' }, 'Loading…'));
  if (!opts.initial) {
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true });
  }
  try {
    await view.load();
    if (ctx.alive && !authShown) ctx.ok();
  } catch (e) {
    ctx.fail(e);
  }
}

// ---- token form ---------------------------------------------------------------

function showTokenForm(err) {
  if (authShown) return;
  authShown = true;
  dropView();
  stopEvents();
  setConn('auth', 'signed out');
  const had = !!token();
  const input = h('input', { id: 'token-input', name: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' });
  const form = h('form', { id: 'token-form', class: 'token-form' },
    h('h1', null, 'A token is needed'),
    h('p', null, had
      ? 'otacd refused the token this page has (' + err.message + '). Enter another one.'
      : 'This otacd does not allow anonymous reads. Enter a viewer token (otactl and the admin token work too).'),
    h('p', { class: 'muted' }, 'It is kept in this browser’s local storage and sent only to this otacd. A link can carry one: ',
      h('code', null, location.origin + '/#token=…'), '.'),
    h('label', { for: 'token-input' }, 'Token'),
    h('div', { class: 'token-row' }, input, h('button', { type: 'submit' }, 'Use token')));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const t = input.value.trim();
    if (!t) return;
    setToken(t);
    signout.hidden = false;
    authShown = false;
    startEvents();
    route();
  });
  document.title = 'Token needed · otacd';
  main.replaceChildren(form);
  clearError('view');
  input.focus();
}

signout.addEventListener('click', () => {
  setToken('');
  signout.hidden = true;
  dropView();
  route();
});

// ---- live events -------------------------------------------------------------

let refreshTimer = 0;
let refreshing = false;
let refreshAgain = false;

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(runRefresh, DEBOUNCE_MS);
}

async function runRefresh() {
  refreshTimer = 0;
  if (!current || authShown) return;
  if (refreshing) { refreshAgain = true; return; }
  refreshing = true;
  const { view, ctx } = current;
  try {
    await view.refresh();
    if (ctx.alive && !authShown) ctx.ok();
  } catch (e) {
    ctx.fail(e);
  } finally {
    refreshing = false;
    if (refreshAgain) { refreshAgain = false; scheduleRefresh(); }
  }
}

const CONN_TEXT = { live: 'live', down: 'reconnecting…', lost: 'reconnecting…', connecting: 'connecting…' };

function startEvents() {
  startLive({
    event(ev) {
      document.body.dataset.lastEvent = String(ev.id || '');
      if (current && !authShown && current.view.wants(ev)) scheduleRefresh();
    },
    state(st) {
      setConn(st === 'lost' ? 'down' : st, CONN_TEXT[st] || st);
      if (st === 'live') clearError('events');
      else if (st === 'lost') reportError('events', new Error('live updates lost; retrying'));
    },
    reconnected() {
      refreshClock();
      scheduleRefresh();
    },
  });
}

function stopEvents() {
  stopLive();
  clearError('events');
}

// The disk guard's state (docs/operations.md): a banner while the state
// directory's disk is full and otacd takes no new work.
function showStorage(storage) {
  const el = document.getElementById('storage');
  if (!el) return;
  const full = storage && storage.state === 'full';
  el.hidden = !full;
  el.textContent = full ? 'Disk full: ' + storage.message : '';
}

async function refreshClock() {
  try {
    const hl = await getJSON('/api/v1/health');
    setServerClock(hl.time, hl.time_scale, hl.real_time);
    showStorage(hl.storage);
  } catch {
    // health needs no token; if it fails the views will say so
  }
}

// ---- start ---------------------------------------------------------------------

takeTokenFromHash();
signout.hidden = !token();
window.addEventListener('hashchange', () => {
  if (/(?:^#|&)token=/.test(location.hash)) {
    takeTokenFromHash();
    signout.hidden = !token();
    dropView();
    stopEvents();
    startEvents();
  }
  route();
});
setInterval(tickDurations, 1000);
setInterval(refreshClock, 15000);   // the clock's anchor and the disk banner
refreshClock().then(() => {
  startEvents();
  route({ initial: true });
});

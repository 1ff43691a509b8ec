// live.js - otacd's event stream (GET /api/v1/events), shared by all the
// page's tabs.
//
// Browsers allow only six HTTP/1.1 connections per host, and every
// EventSource holds one for good: with a stream per tab, a few tabs would
// starve the page's own requests.  So one tab (whichever holds the Web Lock
// "otacd-events") keeps the stream and relays each event and its
// connection state to the other tabs over a BroadcastChannel; when that
// tab closes, the lock passes to another one, which resumes from the last
// event id it heard.  Browsers without Web Locks give each tab its own
// stream.
//
// EventSource reconnects by itself when the connection drops (a daemon
// restart), sending Last-Event-ID so nothing is missed.  If the browser
// gives up (an HTTP error such as 401), we open a new stream after 2 s.

import { streamURL } from './api.js';

// Every kind otacd records (docs/api.md).  EventSource has no catch-all for
// named events, so unknown kinds would be missed: the list errs on the side
// of more.
const KINDS = ['run.created', 'run.state', 'run.final', 'stage.state', 'job.running', 'job.retry', 'job.final',
  'job.state', 'artifact.added', 'artifact.expired', 'release.created', 'agent.registered', 'agent.state',
  'delivery.received', 'delivery.created', 'delivery.state', 'delivery.final', 'delivery.done', 'delivery.failed',
  'delivery.ignored', 'rollout.changed', 'rollout.created', 'rollout.state', 'rollout.step', 'rollout.final', 'gate.result'];
const RETRY_MS = 2000;

const chan = typeof BroadcastChannel === 'function' ? new BroadcastChannel('otacd-events') : null;
const shared = !!(chan && navigator.locks && navigator.locks.request);

let on = { event() {}, state() {}, reconnected() {} };
let running = false;
let leader = false;
let releaseLock = null;
let abortLock = null;
let es = null;
let retry = 0;
let lastId = 0;
let state = 'connecting';

function setState(st) {
  const was = state;
  state = st;
  on.state(st);
  if (st === 'live' && was !== 'live') on.reconnected();
  if (leader && chan) chan.postMessage({ t: 'state', st });
}

function deliver(ev) {
  if (ev.id) lastId = Math.max(lastId, ev.id);
  on.event(ev);
}

function open() {
  close();
  const path = '/api/v1/events' + (lastId ? '?after=' + lastId : '');
  const src = new EventSource(streamURL(path));
  es = src;
  const onEvent = (e) => {
    if (es !== src) return;
    let ev;
    try { ev = JSON.parse(e.data); } catch { return; }
    if (!ev.id && e.lastEventId) ev.id = Number(e.lastEventId);
    deliver(ev);
    if (chan) chan.postMessage({ t: 'event', ev });
  };
  for (const k of KINDS) src.addEventListener(k, onEvent);
  src.onmessage = onEvent;
  src.onopen = () => { if (es === src) setState('live'); };
  src.onerror = () => {
    if (es !== src) return;
    setState(src.readyState === EventSource.CLOSED ? 'lost' : 'down');
    if (src.readyState === EventSource.CLOSED) {
      clearTimeout(retry);
      retry = setTimeout(() => { if (running && es === src) open(); }, RETRY_MS);
    }
  };
}

function close() {
  clearTimeout(retry);
  if (es) es.close();
  es = null;
}

if (chan) {
  chan.onmessage = (m) => {
    const d = m.data || {};
    if (!running) return;
    if (leader) {
      if (d.t === 'hello') chan.postMessage({ t: 'state', st: state });
      return;
    }
    if (d.t === 'event') deliver(d.ev);
    else if (d.t === 'state') setState(d.st);
  };
}

// Start following; handlers: event(ev), state("live"|"down"|"lost"|
// "connecting"), reconnected() (the stream is live again, or for the first
// time: re-read what is shown, events before it are not replayed).
export function startLive(handlers) {
  on = { ...on, ...handlers };
  if (running) return;
  running = true;
  state = 'connecting';
  on.state(state);
  if (!shared) {
    leader = true;
    open();
    return;
  }
  const ac = new AbortController();
  abortLock = ac;
  navigator.locks.request('otacd-events', { signal: ac.signal }, () => {
    if (!running || abortLock !== ac) return undefined;
    leader = true;
    open();
    return new Promise((res) => { releaseLock = res; });
  }).catch(() => { /* aborted by stopLive */ });
  chan.postMessage({ t: 'hello' });
}

export function stopLive() {
  running = false;
  close();
  leader = false;
  if (abortLock) abortLock.abort();
  abortLock = null;
  if (releaseLock) releaseLock();
  releaseLock = null;
}

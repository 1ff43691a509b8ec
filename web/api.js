// api.js - the page's only way to the daemon: the public JSON API with a
// viewer token.
//
// The token arrives once as #token=... in the address (so a link can carry
// it), is moved to localStorage and removed from the address, and is sent
// as "Authorization: Bearer" on every request.  EventSource cannot send
// headers, so streams carry it as ?access_token= (otacd accepts that on
// GET only).

const KEY = 'otacd-token';

export class AuthError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Take #token=... out of the address (keeping the rest of the route, if
// any, e.g. #token=abc&/runs/4 or #/runs/4&token=abc).
export function takeTokenFromHash() {
  const m = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (!m) return;
  const token = decodeURIComponent(m[1]).trim();
  if (token) localStorage.setItem(KEY, token);
  let rest = location.hash.replace(/^#/, '').replace(/(^|&)token=[^&]*/, '').replace(/^&/, '');
  if (!rest.startsWith('/')) rest = '/';
  history.replaceState(null, '', location.pathname + location.search + '#' + rest);
}

export function token() {
  return localStorage.getItem(KEY) || '';
}

export function setToken(t) {
  if (t) localStorage.setItem(KEY, t);
  else localStorage.removeItem(KEY);
  me = null;
}

function headers() {
  const t = token();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

async function request(path, opts = {}) {
  let r;
  try {
    r = await fetch(path, { headers: headers(), cache: 'no-store', signal: opts.signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new Error('cannot reach otacd (' + path + '): ' + e.message);
  }
  if (r.status === 401 || r.status === 403) {
    const why = await errorText(r);
    throw new AuthError(r.status, why || (r.status === 401 ? 'a token is needed' : 'this token may not read that'));
  }
  if (!r.ok) throw new HttpError(r.status, path + ': HTTP ' + r.status + (await errorText(r).then((t) => t ? ': ' + t : '')));
  return r;
}

async function errorText(r) {
  try {
    const body = await r.text();
    try { return JSON.parse(body).error || body; } catch { return body.slice(0, 200); }
  } catch { return ''; }
}

// GET a JSON document.
export async function getJSON(path, opts) {
  const r = await request(path, opts);
  return r.json();
}

// GET raw bytes with the response (for logs: headers X-Log-Size, X-Attempt,
// X-Job-State).
export async function getBytes(path, opts) {
  const r = await request(path, opts);
  return { bytes: new Uint8Array(await r.arrayBuffer()), headers: r.headers };
}

// The URL of a stream for EventSource, with the token in the query.
export function streamURL(path) {
  const t = token();
  if (!t) return path;
  return path + (path.includes('?') ? '&' : '?') + 'access_token=' + encodeURIComponent(t);
}

// Download an artifact: the request needs the header, so fetch it, then
// hand the bytes to the browser through a temporary blob URL.
export async function download(path, filename) {
  const r = await request(path);
  const blob = await r.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return { size: blob.size, sha256: r.headers.get('X-Sha256') };
}

// POST a JSON body (an action: cancel, promote, rollback, pause, resume).
// Any answer but 2xx throws an HttpError carrying otacd's own reason (409
// "the rollout is not paused", 403 "this token may not do that"), so the
// caller can show it where the action was asked for.  A 401/403 here does
// not show the token form: the token still reads; it just may not act.
export async function postJSON(path, body) {
  let r;
  try {
    r = await fetch(path, {
      method: 'POST',
      headers: { ...headers(), 'Content-Type': 'application/json' },
      body: JSON.stringify(body || {}),
      cache: 'no-store',
    });
  } catch (e) {
    throw new Error('cannot reach otacd (' + path + '): ' + e.message);
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (!r.ok) {
    const why = (data && data.error) || text.slice(0, 300) || r.statusText;
    throw new HttpError(r.status, 'HTTP ' + r.status + ': ' + why);
  }
  return data;
}

// Who the token is: GET /api/v1/whoami -> {name, role}.  Asked once per
// token.  An otacd without that route (404) or a failed request counts as a
// viewer: the page then shows no action buttons (the API would refuse the
// actions anyway).
let me = null;
export async function whoami() {
  const t = token();
  if (me && me.token === t) return me.answer;
  let answer = { name: '', role: 'viewer' };
  try {
    answer = await getJSON('/api/v1/whoami');
  } catch (e) {
    if (e instanceof AuthError) throw e;
  }
  me = { token: t, answer };
  return answer;
}

// Whether a role may act on runs and rollouts (docs/api.md: operator, admin).
export function mayAct(who) {
  return !!who && (who.role === 'operator' || who.role === 'admin');
}

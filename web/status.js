// status.js - the header's connection indicator and the error area under
// it.  Errors are kept per source ("view", "events", "download", "log") so
// that one source recovering clears only its own message.

import { h } from './util.js';

const conn = document.getElementById('conn');
const errorsEl = document.getElementById('errors');
const errors = new Map();   // source -> message

function showErrors() {
  errorsEl.replaceChildren(...[...errors.values()].map((m) => h('p', null, m)));
  errorsEl.hidden = errors.size === 0;
}

export function reportError(source, err) {
  const msg = err && err.message ? err.message : String(err);
  if (errors.get(source) === msg) return;
  errors.set(source, msg);
  showErrors();
}

export function clearError(source) {
  if (errors.delete(source)) showErrors();
}

// state: "live", "down" (reconnecting), "auth" (no usable token).
export function setConn(state, text) {
  conn.dataset.state = state;
  conn.textContent = text;
}

// ansi.js - ANSI SGR colour codes in job logs to styled spans.
//
// Supported: reset (0), bold (1), dim (2), italic (3), underline (4), their
// "off" codes (22, 23, 24), foreground 30-37 / 90-97 / 39, background
// 40-47 / 100-107 / 49.  256-colour and true-colour codes (38;5;n,
// 38;2;r;g;b) are consumed and ignored; every other escape sequence (cursor
// movement, OSC titles) is removed.  Output is text nodes inside spans: the
// log text is never parsed as HTML.

export const PLAIN = Object.freeze({ fg: -1, bg: -1, bold: false, dim: false, italic: false, underline: false });

// CSI ... final byte, OSC ... BEL/ST, or ESC + one char.
const ESC_RE = /\x1b(?:\[([0-?]*)[ -/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_]?)/g;

function apply(state, params) {
  const st = { ...state };
  const codes = params === '' ? [0] : params.split(/[;:]/).map((x) => (x === '' ? 0 : Number(x)));
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) Object.assign(st, PLAIN);
    else if (c === 1) st.bold = true;
    else if (c === 2) st.dim = true;
    else if (c === 3) st.italic = true;
    else if (c === 4) st.underline = true;
    else if (c === 22) { st.bold = false; st.dim = false; }
    else if (c === 23) st.italic = false;
    else if (c === 24) st.underline = false;
    else if (c >= 30 && c <= 37) st.fg = c - 30;
    else if (c >= 90 && c <= 97) st.fg = c - 90 + 8;
    else if (c === 39) st.fg = -1;
    else if (c >= 40 && c <= 47) st.bg = c - 40;
    else if (c >= 100 && c <= 107) st.bg = c - 100 + 8;
    else if (c === 49) st.bg = -1;
    else if (c === 38 || c === 48) {
      // extended colours: skip their parameters
      if (codes[i + 1] === 5) i += 2;
      else if (codes[i + 1] === 2) i += 4;
    }
  }
  return Object.freeze(st);
}

function classes(st) {
  const c = [];
  if (st.fg >= 0) c.push('a-fg' + st.fg);
  if (st.bg >= 0) c.push('a-bg' + st.bg);
  if (st.bold) c.push('a-b');
  if (st.dim) c.push('a-d');
  if (st.italic) c.push('a-i');
  if (st.underline) c.push('a-u');
  return c.join(' ');
}

// The SGR state after text, starting from state (for lines that are not
// rendered: only the state is carried on).
export function endState(text, state) {
  if (text.indexOf('\x1b') < 0) return state;
  let st = state;
  ESC_RE.lastIndex = 0;
  let m;
  while ((m = ESC_RE.exec(text))) {
    if (m[2] === 'm') st = apply(st, m[1]);
  }
  return st;
}

// Append text (one line, starting in state) to parent as text nodes and
// spans; returns the state at its end.
export function render(parent, text, state) {
  let st = state;
  let last = 0;
  const emit = (chunk) => {
    if (!chunk) return;
    // other control characters (except tab) would only show as boxes
    chunk = chunk.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
    if (!chunk) return;
    const cls = classes(st);
    if (cls) {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = chunk;
      parent.append(span);
    } else {
      parent.append(document.createTextNode(chunk));
    }
  };
  if (text.indexOf('\x1b') < 0) {
    emit(text);
    return st;
  }
  ESC_RE.lastIndex = 0;
  let m;
  while ((m = ESC_RE.exec(text))) {
    emit(text.slice(last, m.index));
    if (m[2] === 'm') st = apply(st, m[1]);
    last = ESC_RE.lastIndex;
    if (m[0].length === 0) ESC_RE.lastIndex++;
  }
  emit(text.slice(last));
  return st;
}

// The text of a line without escape sequences (for copying, searching).
export function strip(text) {
  return text.replace(ESC_RE, '');
}

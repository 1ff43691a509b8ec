// logview.js - a job log that stays fast at 100k+ lines.
//
// Lines are kept in an array (raw text plus the ANSI state they start in);
// only the lines inside the scroll window (and a margin) exist in the DOM.
// Incoming text is queued and split into lines in slices of at most
// SLICE characters per task, so a multi-megabyte log never blocks the page
// for long; rendering happens once per animation frame.  Lines have a fixed
// height (no wrapping: long lines scroll sideways), which is what makes the
// window arithmetic exact.

import { PLAIN, endState, render, strip } from './ansi.js';

const LINE_H = 20;      // px, must match .log-line in style.css
const OVERSCAN = 40;    // lines rendered above and below the visible ones
const SLICE = 256 * 1024;

export class LogView {
  // opts.href(n): the address of line n (1-based) for its number link.
  constructor(opts) {
    this.href = opts.href;
    this.texts = [];        // complete lines
    this.states = [];       // ANSI state at the start of each line
    this.partial = '';      // text after the last newline
    this.state = PLAIN;     // ANSI state at the start of `partial`
    this.queue = [];
    this.queued = 0;
    this.processing = false;
    this.follow = true;     // keep the newest line in view
    this.selected = 0;
    this.version = 0;
    this.rendered = { first: -1, last: -1, count: 0, sel: -1, version: -1 };
    this.onchange = null;   // called after lines were added (count changed)

    this.el = document.createElement('div');
    this.el.className = 'log';
    this.el.tabIndex = 0;
    this.el.setAttribute('role', 'region');
    this.el.setAttribute('aria-label', 'Job log');
    this.sizer = document.createElement('div');
    this.sizer.className = 'log-sizer';
    this.win = document.createElement('div');
    this.win.className = 'log-window';
    this.sizer.append(this.win);
    this.el.append(this.sizer);
    this.el.addEventListener('scroll', () => {
      const bottom = this.el.scrollHeight - this.el.clientHeight - this.el.scrollTop;
      this.follow = bottom < LINE_H * 2;
      this.schedule();
    }, { passive: true });
    this.resizeObs = new ResizeObserver(() => this.schedule());
    this.resizeObs.observe(this.el);
  }

  // Number of lines (the unfinished last line counts once it has text).
  get count() {
    return this.texts.length + (this.partial ? 1 : 0);
  }

  lineText(n) {
    const t = n <= this.texts.length ? this.texts[n - 1] : this.partial;
    return t === undefined ? undefined : strip(t);
  }

  clear() {
    this.texts = [];
    this.states = [];
    this.partial = '';
    this.state = PLAIN;
    this.queue = [];
    this.queued = 0;
    this.version++;
    this.rendered = { first: -1, last: -1, count: 0, sel: -1, version: -1 };
    this.win.replaceChildren();
    this.schedule();
  }

  append(text) {
    if (!text) return;
    this.queue.push(text);
    this.queued += text.length;
    if (!this.processing) {
      this.processing = true;
      this.process();
    }
  }

  // Whether text is still waiting to be split into lines.
  get busy() {
    return this.processing;
  }

  process() {
    let budget = SLICE;
    while (this.queue.length && budget > 0) {
      let chunk = this.queue.shift();
      if (chunk.length > budget) {
        this.queue.unshift(chunk.slice(budget));
        chunk = chunk.slice(0, budget);
      }
      budget -= chunk.length;
      this.queued -= chunk.length;
      this.split(chunk);
    }
    this.processing = this.queue.length > 0;
    if (this.processing) setTimeout(() => this.process(), 0);
    this.schedule();
    if (this.onchange) this.onchange(this);
  }

  split(chunk) {
    let start = 0;
    for (;;) {
      const nl = chunk.indexOf('\n', start);
      if (nl < 0) break;
      let line = this.partial + chunk.slice(start, nl);
      this.partial = '';
      if (line.endsWith('\r')) line = line.slice(0, -1);
      this.texts.push(line);
      this.states.push(this.state);
      this.state = endState(line, this.state);
      start = nl + 1;
    }
    this.partial += chunk.slice(start);
    this.version++;
  }

  select(n) {
    this.selected = n;
    this.follow = false;
    this.scrollTo(n);
    this.schedule();
  }

  scrollTo(n) {
    const top = Math.max(0, (n - 1) * LINE_H - this.el.clientHeight / 3);
    this.el.scrollTop = top;
  }

  scrollToEnd() {
    this.follow = true;
    this.el.scrollTop = this.el.scrollHeight;
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.draw();
    });
  }

  draw() {
    const count = this.count;
    this.sizer.style.height = count * LINE_H + 'px';
    this.el.style.setProperty('--ln-width', String(Math.max(count, 1)).length + 2 + 'ch');
    if (this.follow && count) this.el.scrollTop = this.el.scrollHeight;
    const top = this.el.scrollTop, height = this.el.clientHeight || 600;
    const first = Math.max(1, Math.floor(top / LINE_H) - OVERSCAN + 1);
    const last = Math.min(count, Math.ceil((top + height) / LINE_H) + OVERSCAN);
    const r = this.rendered;
    // Redraw only when the window moved, the selection changed, or lines
    // inside the window changed: lines are only ever appended (and the
    // unfinished last line grows), so only a window reaching the old last
    // line can have changed.
    const changed = r.version !== this.version && last >= r.count;
    if (r.first === first && r.last === last && r.sel === this.selected && !changed) return;
    const frag = document.createDocumentFragment();
    for (let n = first; n <= last; n++) frag.append(this.lineNode(n));
    this.win.style.transform = 'translateY(' + (first - 1) * LINE_H + 'px)';
    this.win.replaceChildren(frag);
    this.rendered = { first, last, count, sel: this.selected, version: this.version };
    this.el.dataset.first = String(first);
    this.el.dataset.last = String(last);
  }

  lineNode(n) {
    const complete = n <= this.texts.length;
    const text = complete ? this.texts[n - 1] : this.partial;
    const state = complete ? this.states[n - 1] : this.state;
    const row = document.createElement('div');
    row.className = n === this.selected ? 'log-line sel' : 'log-line';
    row.id = 'L' + n;
    const num = document.createElement('a');
    num.className = 'ln';
    num.href = this.href(n);
    num.textContent = String(n);
    num.setAttribute('aria-label', 'line ' + n);
    num.setAttribute('data-key', 'L' + n);
    const body = document.createElement('span');
    body.className = 'lt';
    render(body, text, state);
    row.append(num, body);
    return row;
  }

  destroy() {
    this.resizeObs.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
    this.queue = [];
  }
}

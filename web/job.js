// job.js - #/jobs/ID/log[/L123][?attempt=N] : a job's log, live.
//
// The log so far comes from GET /api/v1/jobs/ID/log (plain bytes); the
// rest follows over Server-Sent Events from the byte offset where that
// ended (?follow=1&offset=N&attempt=A, token as access_token).  Every log
// event's id is the offset after it, so after a dropped connection (a
// daemon restart) the page reopens the stream exactly where it stopped, or
// starts over if the job moved on to a new attempt meanwhile.

import { download, getBytes, getJSON, streamURL } from './api.js';
import { LogView } from './logview.js';
import { clearError, reportError } from './status.js';
import { badge, jobDurationNode, facts, fmtTime, h, replaceKeepingFocus } from './util.js';

const FINAL = new Set(['passed', 'failed', 'canceled', 'skipped']);

// The length of the longest prefix of bytes that ends on a UTF-8 character
// boundary (the stream continues from there, so no character is split).
function completeUtf8(bytes) {
  const n = bytes.length;
  for (let back = 1; back <= Math.min(3, n); back++) {
    const b = bytes[n - back];
    if ((b & 0xc0) === 0x80) continue;          // continuation byte: look further back
    const need = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;
}

export class JobLogView {
  constructor(ctx) {
    this.ctx = ctx;
    this.id = ctx.route.id;
    this.wantAttempt = Number(ctx.route.query.get('attempt')) || 0;
    this.pendingLine = ctx.route.line || 0;
    this.es = null;
    this.retry = 0;
    this.offset = 0;
    this.attempt = 0;     // the attempt whose log is shown (0: none yet)
    this.live = false;
  }

  async load() {
    this.ctx.title('Job ' + this.id);
    this.head = h('div', { class: 'job-head' });
    this.count = h('span', { class: 'log-count', id: 'log-count' }, '0 lines');
    this.stream = h('span', { class: 'log-stream', id: 'log-stream', role: 'status' }, '');
    this.attempts = h('span', { class: 'attempts' });
    this.log = new LogView({ href: (n) => '#/jobs/' + this.id + '/log/L' + n + (this.wantAttempt ? '?attempt=' + this.wantAttempt : '') });
    this.log.onchange = () => this.changed();
    const toolbar = h('div', { class: 'log-tools' },
      this.count, this.stream, this.attempts,
      h('span', { class: 'spacer' }),
      h('button', { type: 'button', class: 'small', onclick: () => { this.log.select(0); this.log.el.scrollTop = 0; } }, 'Top'),
      h('button', { type: 'button', class: 'small', onclick: () => this.log.scrollToEnd() }, 'End'),
      h('button', { type: 'button', class: 'small', onclick: () => this.downloadLog() }, 'Download log'));
    this.crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Runs'), ' › ', 'job ' + this.id);
    this.ctx.main.replaceChildren(this.crumbs, this.head, toolbar, this.log.el);
    const job = await getJSON('/api/v1/jobs/' + this.id);
    if (!this.ctx.alive) return;
    this.renderHead(job);
    await this.loadLog(job);
  }

  update(route) {
    this.ctx.route = route;
    if (route.line) {
      this.pendingLine = route.line;
      this.changed();
    }
  }

  changed() {
    const n = this.log.count;
    this.count.textContent = n + (n === 1 ? ' line' : ' lines');
    this.log.el.dataset.lines = String(n);
    this.log.el.dataset.busy = this.log.busy ? '1' : '0';
    if (this.pendingLine && n >= this.pendingLine) {
      this.log.select(this.pendingLine);
      this.pendingLine = 0;
    }
  }

  async loadLog(job) {
    this.closeStream();
    this.log.clear();
    this.offset = 0;
    this.attempt = this.wantAttempt || job.attempt;
    this.job = job;
    if (this.attempt > 0) {
      const { bytes } = await getBytes('/api/v1/jobs/' + this.id + '/log?attempt=' + this.attempt);
      if (!this.ctx.alive) return;
      const n = completeUtf8(bytes);
      this.offset = n;
      this.log.append(new TextDecoder().decode(bytes.subarray(0, n)));
    }
    this.changed();
    this.live = !FINAL.has(job.state) && (!this.wantAttempt || this.wantAttempt === job.attempt);
    this.renderAttempts(job);
    if (this.live) this.follow();
    else this.setStream(this.attempt ? 'complete: ' + job.state : 'no log: ' + job.state);
  }

  setStream(text, state) {
    this.stream.textContent = text;
    this.stream.dataset.state = state || '';
  }

  follow() {
    this.closeStream();
    let path = '/api/v1/jobs/' + this.id + '/log?follow=1&offset=' + this.offset;
    if (this.attempt) path += '&attempt=' + this.attempt;
    const es = new EventSource(streamURL(path));
    this.es = es;
    this.setStream(this.attempt ? 'streaming…' : 'waiting for an agent…', 'live');
    const parse = (e) => {
      try { return JSON.parse(e.data); } catch { return {}; }
    };
    es.addEventListener('log', (e) => {
      const d = parse(e);
      if (typeof d.text !== 'string') return;
      if (!this.attempt && d.attempt) this.attempt = d.attempt;
      if (d.attempt && d.attempt !== this.attempt) { this.restart(); return; }
      const end = Number(e.lastEventId);
      if (end && end <= this.offset) return;      // already shown
      this.log.append(d.text);
      if (end) this.offset = end;
      this.setStream('streaming…', 'live');
      clearError('log');
    });
    es.addEventListener('attempt', (e) => {
      const d = parse(e);
      if (!d.attempt) return;
      // a retry started: show the new attempt from its beginning
      this.attempt = d.attempt;
      this.offset = 0;
      this.log.clear();
      this.changed();
      this.refreshHead();
      this.follow();
    });
    es.addEventListener('end', (e) => {
      const d = parse(e);
      this.closeStream();
      this.live = false;
      this.setStream('ended: ' + d.state, d.state);
      this.refreshHead();
    });
    es.onerror = () => {
      if (this.es !== es) return;
      // reopen ourselves (with the offset we have) rather than let the
      // browser reuse the old address: the attempt may have changed
      this.closeStream();
      this.setStream('reconnecting…', 'down');
      this.retry = setTimeout(() => this.resync(), 1000);
    };
  }

  // After a dropped stream: continue where we were, or start over when
  // the job moved on to another attempt meanwhile.
  async resync() {
    if (!this.ctx.alive) return;
    try {
      const job = await getJSON('/api/v1/jobs/' + this.id);
      if (!this.ctx.alive) return;
      this.renderHead(job);
      clearError('log');
      if (!this.wantAttempt && job.attempt !== this.attempt && this.attempt !== 0) await this.loadLog(job);
      else this.follow();
    } catch (e) {
      if (!this.ctx.alive) return;
      if (e.status) { this.ctx.fail(e, 'log'); return; }
      reportError('log', new Error('log stream: ' + e.message));
      this.retry = setTimeout(() => this.resync(), 2000);
    }
  }

  async restart() {
    this.closeStream();
    try {
      const job = await getJSON('/api/v1/jobs/' + this.id);
      if (this.ctx.alive) await this.loadLog(job);
    } catch (e) {
      this.ctx.fail(e, 'log');
    }
  }

  closeStream() {
    clearTimeout(this.retry);
    if (this.es) this.es.close();
    this.es = null;
  }

  async refreshHead() {
    try {
      const job = await getJSON('/api/v1/jobs/' + this.id);
      if (this.ctx.alive) this.renderHead(job);
    } catch (e) {
      this.ctx.fail(e);
    }
  }

  async refresh() {
    const job = await getJSON('/api/v1/jobs/' + this.id);
    if (!this.ctx.alive) return;
    this.renderHead(job);
  }

  renderHead(job) {
    this.job = job;
    this.ctx.title(job.name + ' (' + job.state + ')');
    this.crumbs.replaceChildren(h('a', { href: '#/' }, 'Runs'), ' › ',
      h('a', { href: '#/runs/' + job.run_id }, 'Run #' + job.run_id), ' › ', job.name);
    replaceKeepingFocus(this.head, [
      h('div', { class: 'title-row' }, h('h1', null, job.name), badge(job.state)),
      facts([
        ['Stage', job.stage],
        ['Attempt', job.attempt ? job.attempt + ' of ' + job.max_attempts : 'not started'],
        ['Agent', job.agent],
        ['Started', fmtTime(job.started_at)],
        ['Duration', job.started_at ? jobDurationNode(job) : ''],
        ['Exit code', job.exit_code === null || job.exit_code === undefined ? '' : String(job.exit_code)],
        ['Failure', job.failure],
        ['Message', job.message],
      ]),
    ]);
    this.renderAttempts(job);
  }

  renderAttempts(job) {
    if (!this.attempts) return;
    if (!job.attempt || job.attempt < 2) { this.attempts.replaceChildren(); return; }
    const shown = this.wantAttempt || job.attempt;
    const links = [];
    for (let a = 1; a <= job.attempt; a++) {
      const href = '#/jobs/' + this.id + '/log' + (a === job.attempt ? '' : '?attempt=' + a);
      links.push(' ', a === shown
        ? h('a', { href, 'aria-current': 'page', class: 'current' }, String(a))
        : h('a', { href }, String(a)));
    }
    this.attempts.replaceChildren('attempt:', ...links);
  }

  async downloadLog() {
    try {
      await download('/api/v1/jobs/' + this.id + '/log?attempt=' + (this.attempt || 1),
        'job-' + this.id + '-attempt-' + (this.attempt || 1) + '.log');
      clearError('download');
    } catch (e) {
      reportError('download', new Error('log download failed: ' + e.message));
    }
  }

  wants(ev) {
    return ev.job_id === this.id;
  }

  destroy() {
    this.closeStream();
    this.log.destroy();
    clearError('log');
  }
}

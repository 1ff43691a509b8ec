// overview.js - #/ : what is rolling out now (anything paused or waiting
// for approval highlighted), recent runs (filters, older pages) and
// releases.
//
// Filters and the page position live in the address (#/?pipeline=hello&
// state=failed&before=120, and limit=N for the page size, 50 by default),
// so a filtered view can be bookmarked and the back button works.

import { getJSON } from './api.js';
import { badge, countdownNode, durationNode, firstLine, h, replaceKeepingFocus, shortId, shortRef, table, tableWrap, timeAgo } from './util.js';

// Rollout states that need a person.
const NEEDS_PERSON = { paused: 'paused: needs a person', waiting_approval: 'waiting for approval' };

const STATES = ['', 'queued', 'blocked', 'running', 'passed', 'failed', 'canceled', 'skipped'];
const PAGE = 50;

export class OverviewView {
  constructor(ctx) {
    this.ctx = ctx;
    this.pipelines = [];
  }

  filters() {
    const q = this.ctx.route.query;
    return { pipeline: q.get('pipeline') || '', ref: q.get('ref') || '', state: q.get('state') || '', before: q.get('before') || '' };
  }

  runsPath() {
    const f = this.filters();
    const limit = Math.min(200, Math.max(1, Number(this.ctx.route.query.get('limit')) || PAGE));
    const p = new URLSearchParams({ limit: String(limit) });
    for (const k of ['pipeline', 'ref', 'state', 'before']) if (f[k]) p.set(k, f[k]);
    return '/api/v1/runs?' + p.toString();
  }

  async load() {
    this.ctx.title('Runs');
    this.runsBox = h('div', { class: 'runs-box' });
    this.attention = h('p', { class: 'attention', hidden: true, 'aria-live': 'polite' });
    this.releasesBox = h('div', { class: 'releases-box' });
    this.rolloutsBox = h('div', { class: 'rollouts-box' });
    this.flagsBox = h('div', { class: 'flags-box' });
    this.form = this.filterForm();
    this.ctx.main.replaceChildren(
      h('h1', { class: 'sr-only' }, 'Overview'),
      h('section', { 'aria-labelledby': 'ro-now-h', class: 'rolling-now' }, h('h2', { id: 'ro-now-h' }, 'Rolling out now'), this.rolloutsBox),
      h('section', { 'aria-labelledby': 'runs-h' },
        h('div', { class: 'title-row' }, h('h2', { id: 'runs-h' }, 'Runs')),
        this.form, this.attention, this.runsBox),
      h('section', { 'aria-labelledby': 'rel-h' }, h('h2', { id: 'rel-h' }, 'Releases'), this.releasesBox),
      h('section', { 'aria-labelledby': 'flags-h', class: 'flags' }, h('h2', { id: 'flags-h' }, 'Feature flags'), this.flagsBox));
    getJSON('/api/v1/pipelines').then((p) => {
      this.pipelines = p.map((x) => x.name);
      const dl = document.getElementById('pipeline-names');
      if (dl) dl.replaceChildren(...this.pipelines.map((n) => h('option', { value: n })));
    }).catch(() => {});
    await this.refresh();
  }

  update(route) {
    this.ctx.route = route;
    const f = this.filters();
    this.form.elements.pipeline.value = f.pipeline;
    this.form.elements.ref.value = f.ref;
    this.form.elements.state.value = f.state;
    this.refresh().catch((e) => this.ctx.fail(e));
  }

  filterForm() {
    const f = this.filters();
    const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter runs' },
      h('label', null, 'Pipeline', h('input', { name: 'pipeline', value: f.pipeline, list: 'pipeline-names', autocomplete: 'off' })),
      h('datalist', { id: 'pipeline-names' }),
      h('label', null, 'Ref', h('input', { name: 'ref', value: f.ref, placeholder: 'refs/heads/main', autocomplete: 'off' })),
      h('label', null, 'State', h('select', { name: 'state' },
        STATES.map((st) => h('option', { value: st, selected: st === f.state }, st || 'any')))),
      h('button', { type: 'submit' }, 'Filter'),
      h('a', { href: '#/', class: 'clear' }, 'Clear'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      const limit = this.ctx.route.query.get('limit');
      if (limit) p.set('limit', limit);
      for (const k of ['pipeline', 'ref', 'state']) {
        const v = form.elements[k].value.trim();
        if (v) p.set(k, v);
      }
      const qs = p.toString();
      location.hash = '#/' + (qs ? '?' + qs : '');
    });
    return form;
  }

  async refresh() {
    const [runs, releases, rollouts, flags] = await Promise.all([getJSON(this.runsPath()), getJSON('/api/v1/releases'),
      getJSON('/api/v1/rollouts'), getJSON('/api/v1/flags').catch(() => [])]);
    if (!this.ctx.alive) return;
    this.renderRollouts(rollouts);
    this.renderFlags(flags);
    this.renderRuns(runs);
    this.renderReleases(releases);
    if (!this.rendered) {
      this.rendered = true;
      performance.mark('otacd-overview-rendered');
    }
  }

  renderRollouts(list) {
    if (!list.length) {
      replaceKeepingFocus(this.rolloutsBox, [h('p', { class: 'empty' }, 'Nothing is rolling out.')]);
      return;
    }
    const stuck = list.filter((r) => NEEDS_PERSON[r.state]);
    const rows = list.map((r) => {
      const need = NEEDS_PERSON[r.state];
      return h('tr', { 'data-rollout-id': r.id, 'data-release-id': r.release, 'data-state': r.state, class: need ? 'needs-person' : null },
        h('td', null, h('a', { href: '#/releases/' + r.release, 'data-key': 'ro-' + r.id }, r.version)),
        h('td', null, r.product),
        h('td', null, r.stage, h('span', { class: 'muted' }, ' (' + r.kind + ')')),
        h('td', null, badge(r.state), need ? h('span', { class: 'sr-only' }, ' (needs a person)') : null),
        h('td', { class: 'num' }, String((r.step || 0) + 1)),
        h('td', { class: 'num' }, ((r.percent_bp || 0) / 100) + ' %'),
        h('td', { class: 'num' }, r.state === 'holding' && r.hold_until ? countdownNode(r.hold_until, 'hold over') : '—'),
        h('td', { class: 'opt reason' }, r.reason || ''));
    });
    replaceKeepingFocus(this.rolloutsBox, [
      stuck.length ? h('p', { class: 'attention has-blocked', 'data-stuck': stuck.length },
        stuck.length + (stuck.length === 1 ? ' rollout needs' : ' rollouts need') + ' a person: ' +
        stuck.map((r) => r.product + ' ' + r.version + ' ' + r.stage + ' (' + NEEDS_PERSON[r.state] + ')').join(', ')) : null,
      tableWrap(table(['Release', 'Product', 'Stage', 'State', { text: 'Step', class: 'num' }, { text: 'Exposure', class: 'num' },
        { text: 'Hold left', class: 'num' }, { text: 'Reason', class: 'opt' }], rows, 'rollouts'), 'Rolling out now'),
    ]);
  }

  // Feature flags (issue 17, docs/rollout.md): state, exposure, step and the last verdict.
  renderFlags(list) {
    if (!list.length) {
      replaceKeepingFocus(this.flagsBox, [h('p', { class: 'empty' }, 'No feature flags.')]);
      return;
    }
    const rows = list.map((f) => {
      const ev = (f.evals || [])[0];
      return h('tr', { 'data-flag': f.product + '/' + f.name, 'data-state': f.state },
        h('td', null, f.name),
        h('td', null, f.product),
        h('td', null, badge(f.state)),
        h('td', { class: 'num' }, f.steps ? (f.step + 1) + '/' + f.steps : '—'),
        h('td', { class: 'num' }, (f.bp / 100) + ' %'),
        h('td', { class: 'opt' }, JSON.stringify(f.value)),
        h('td', { class: 'opt reason' }, ev ? ev.reason : (f.reason || '')));
    });
    replaceKeepingFocus(this.flagsBox, [tableWrap(table(['Flag', 'Product', 'State', { text: 'Step', class: 'num' },
      { text: 'Exposure', class: 'num' }, { text: 'Value', class: 'opt' }, { text: 'Last verdict', class: 'opt' }], rows, 'flags'),
    'Feature flags')]);
  }

  renderRuns(data) {
    const runs = data.runs || [];
    const f = this.filters();
    const counts = {};
    for (const r of runs) counts[r.state] = (counts[r.state] || 0) + 1;
    const waiting = ['running', 'queued', 'blocked'].filter((st) => counts[st]).map((st) => counts[st] + ' ' + st);
    this.attention.hidden = !waiting.length;
    this.attention.textContent = waiting.length ? 'Now: ' + waiting.join(', ') : '';
    this.attention.classList.toggle('has-blocked', !!(counts.blocked || counts.queued));

    const rows = runs.map((r) => {
      const msg = firstLine(r.message);
      return h('tr', { class: 'run-row row-' + r.state, 'data-run-id': r.id },
        h('td', { class: 'c-run' }, h('a', { href: '#/runs/' + r.id, 'data-key': 'run-' + r.id }, '#' + r.id)),
        h('td', { class: 'c-pl' }, r.pipeline),
        h('td', { class: 'c-ref ref', title: r.ref || '' }, shortRef(r.ref)),
        h('td', { class: 'c-commit commit opt' }, r.commit
          ? [h('code', { title: r.commit }, shortId(r.commit, 8)), msg ? h('span', { class: 'msg', title: r.message }, ' ' + msg) : null]
          : h('span', { class: 'muted' }, '—')),
        h('td', { class: 'c-state' }, badge(r.state)),
        h('td', { class: 'c-trigger opt' }, r.trigger || ''),
        h('td', { class: 'c-created' }, timeAgo(r.created_at)),
        h('td', { class: 'c-dur num' }, durationNode(r.started_at, r.finished_at)));
    });
    const nodes = [];
    if (rows.length) {
      nodes.push(tableWrap(table(['Run', 'Pipeline', 'Ref', { text: 'Commit', class: 'opt' }, 'State',
        { text: 'Trigger', class: 'opt' }, 'Created', { text: 'Duration', class: 'num' }], rows, 'runs'), 'Runs'));
    } else {
      nodes.push(h('p', { class: 'empty' }, f.before ? 'No older runs.' : f.pipeline || f.ref || f.state
        ? 'No runs match these filters.'
        : 'No runs yet. Trigger one with otactl trigger pipelines/hello.yml, or push to a configured repository.'));
    }
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of runs' });
    if (f.before) pager.append(h('a', { href: this.pageHash(''), 'data-key': 'newest' }, '← Newest'));
    if (data.next_before) pager.append(h('a', { href: this.pageHash(String(data.next_before)), 'data-key': 'older' }, 'Older runs →'));
    if (pager.childNodes.length) nodes.push(pager);
    replaceKeepingFocus(this.runsBox, nodes);
  }

  pageHash(before) {
    const p = new URLSearchParams(this.ctx.route.query);
    if (before) p.set('before', before); else p.delete('before');
    const qs = p.toString();
    return '#/' + (qs ? '?' + qs : '');
  }

  renderReleases(releases) {
    if (!releases.length) {
      replaceKeepingFocus(this.releasesBox, [h('p', { class: 'empty' }, 'No releases yet. A pipeline with a release stage makes one.')]);
      return;
    }
    const shown = this.allReleases ? releases : releases.slice(0, 20);
    const rows = shown.map((r) => h('tr', { 'data-release-id': r.id },
      h('td', null, h('a', { href: '#/releases/' + r.id, 'data-key': 'rel-' + r.id }, r.version)),
      h('td', null, r.product),
      h('td', { class: 'num' }, String(r.security_counter)),
      h('td', { class: 'opt' }, h('code', { title: r.key_id }, shortId(r.key_id, 16))),
      h('td', null, h('a', { href: '#/runs/' + r.run_id, 'data-key': 'rel-run-' + r.id }, '#' + r.run_id)),
      h('td', null, timeAgo(r.created_at))));
    const nodes = [tableWrap(table(['Version', 'Product', { text: 'Counter', class: 'num' }, { text: 'Key id', class: 'opt' },
      'Run', 'Created'], rows, 'releases'), 'Releases')];
    if (releases.length > shown.length) {
      nodes.push(h('button', { type: 'button', class: 'linkish', 'data-key': 'all-releases', onclick: () => {
        this.allReleases = true;
        this.renderReleases(releases);
      } }, 'Show all ' + releases.length + ' releases'));
    }
    replaceKeepingFocus(this.releasesBox, nodes);
  }

  wants(ev) {
    return /^(run|release|rollout|stage|job\.final|job\.running)/.test(ev.kind || '');
  }

  destroy() {}
}

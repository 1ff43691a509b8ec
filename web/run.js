// run.js - #/runs/ID : a run's header (the commit linked to its
// repository when that is a web address), its stage graph, its jobs, its
// test, HIL and analysis results (reports.js) and its artifacts
// (downloadable; the download goes through fetch because it needs the
// token).  An operator's token also gets "Cancel run…" while the
// run is not finished (POST /api/v1/runs/ID/cancel, behind the reason and
// confirmation dialog).

import { download, getJSON, mayAct, postJSON, whoami } from './api.js';
import { askAction } from './dialog.js';
import { drawDag, jobLabel } from './dag.js';
import { reportsView } from './reports.js';
import { clearError, reportError } from './status.js';
import { badge, durationNode, jobDurationNode, facts, firstLine, fmtBytes, fmtTime, h, morph, replaceKeepingFocus, shortId, shortRef, table, tableWrap } from './util.js';

export function basename(name) {
  return String(name).split('/').pop() || 'artifact';
}

// A download button for an artifact: fetch with the token, save as a blob.
export function downloadButton(art) {
  const b = h('button', { type: 'button', class: 'small', 'data-key': 'dl-' + art.id, 'data-artifact': art.id,
    'aria-label': 'Download ' + art.name });
  b.textContent = 'Download';
  b.addEventListener('click', async () => {
    b.disabled = true;
    b.textContent = 'Downloading…';
    try {
      await download('/api/v1/artifacts/' + art.id, basename(art.name));
      clearError('download');
    } catch (e) {
      reportError('download', new Error('download of ' + art.name + ' failed: ' + e.message));
    } finally {
      b.disabled = false;
      b.textContent = 'Download';
    }
  });
  return b;
}

export function artifactTable(arts, withJob) {
  const rows = arts.map((a) => h('tr', { 'data-artifact-id': a.id },
    h('td', { class: 'name' }, a.name),
    h('td', { class: 'opt' }, a.type || ''),
    h('td', null, a.hardware || ''),
    h('td', { class: 'num' }, fmtBytes(a.size)),
    h('td', { class: 'sha' }, h('code', { title: 'sha256 ' + a.sha256 }, a.sha256)),
    withJob ? h('td', { class: 'opt' }, a.job_id ? h('a', { href: '#/jobs/' + a.job_id + '/log', 'data-key': 'art-job-' + a.id }, 'job ' + a.job_id) : '') : null,
    h('td', null, downloadButton(a))));
  const head = ['Name', { text: 'Type', class: 'opt' }, 'Hardware', { text: 'Size', class: 'num' }, 'sha256'];
  if (withJob) head.push({ text: 'From', class: 'opt' });
  head.push('');
  return tableWrap(table(head, rows, 'artifacts'), 'Artifacts');
}

// The commit's page in its repository's web interface, when the
// repository is a web address: GitHub, Gitea and Forgejo serve
// REPO/commit/ID, and GitLab redirects it to REPO/-/commit/ID.  Local
// paths and ssh addresses have no page.
export function commitUrl(repo, commit) {
  if (!repo || !commit || !/^https?:\/\/[^\s]+$/.test(repo)) return null;
  return repo.replace(/\.git$/, '').replace(/\/+$/, '') + '/commit/' + encodeURIComponent(commit);
}

// The Jobs table's note: how a job failed and the engine's message (for a
// test or analysis verdict, it names the failures).
function jobNote(j) {
  if (!j.failure) return j.message || '';
  const how = j.failure + (j.exit_code !== null && j.exit_code !== undefined ? ' (exit ' + j.exit_code + ')' : '');
  return j.message && j.message !== j.failure ? how + ': ' + j.message : how;
}

export class RunView {
  constructor(ctx) {
    this.ctx = ctx;
    this.id = ctx.route.id;
  }

  async load() {
    this.ctx.title('Run #' + this.id);
    this.head = h('div', { class: 'run-head' });
    this.dagBox = h('div', { class: 'dag-wrap', tabindex: '-1' });
    this.jobsBox = h('div');
    this.reportsBox = h('div', { class: 'reports' });
    this.artsBox = h('div');
    this.ctx.main.replaceChildren(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Runs'), ' › ', 'Run #' + this.id),
      this.head,
      h('section', { 'aria-labelledby': 'stages-h' }, h('h2', { id: 'stages-h' }, 'Stages'), this.dagBox),
      h('section', { 'aria-labelledby': 'jobs-h' }, h('h2', { id: 'jobs-h' }, 'Jobs'), this.jobsBox),
      h('section', { 'aria-labelledby': 'reports-h' }, h('h2', { id: 'reports-h' }, 'Tests and analysis'), this.reportsBox),
      h('section', { 'aria-labelledby': 'arts-h' }, h('h2', { id: 'arts-h' }, 'Artifacts'), this.artsBox));
    await this.refresh();
  }

  // load() and the debounced refreshes may overlap: only the answers of
  // the latest refresh are drawn, so an older snapshot never overwrites a
  // newer one.
  async refresh() {
    const seq = this.seq = (this.seq || 0) + 1;
    const [run, arts, reports, me, metrics] = await Promise.all([
      getJSON('/api/v1/runs/' + this.id),
      getJSON('/api/v1/runs/' + this.id + '/artifacts'),
      getJSON('/api/v1/runs/' + this.id + '/reports'),
      whoami(),
      getJSON('/api/v1/runs/' + this.id + '/metrics?history=20').catch(() => null),
    ]);
    if (!this.ctx.alive || seq !== this.seq) return;
    this.me = me;
    this.ctx.title('Run #' + run.id + ' ' + run.pipeline + ' (' + run.state + ')');
    this.renderHead(run);
    // the graph is updated in place: its boxes and links stay the same
    // elements while the run goes on
    const dag = drawDag(run.stages || []);
    const old = this.dagBox.querySelector('svg.dag');
    if (old) morph(old, dag);
    else replaceKeepingFocus(this.dagBox, [dag]);
    this.renderJobs(run);
    replaceKeepingFocus(this.reportsBox, reportsView(reports, run.stages, metrics));
    replaceKeepingFocus(this.artsBox, arts.length ? [artifactTable(arts, true)] : [h('p', { class: 'empty' }, 'No artifacts (yet).')]);
  }

  renderHead(run) {
    const link = commitUrl(run.repo, run.commit);
    const id = h('code', { title: run.commit }, shortId(run.commit || '', 10));
    const commit = run.commit
      ? h('span', null, link ? h('a', { href: link, rel: 'noopener noreferrer', target: '_blank', 'data-key': 'commit-link' }, id) : id,
        run.message ? h('span', { class: 'msg' }, ' ' + firstLine(run.message)) : null,
        run.author ? h('span', { class: 'muted' }, ' — ' + run.author) : null)
      : null;
    const trigger = [run.trigger || ''];
    if (run.pusher) trigger.push(' by ' + run.pusher);
    if (run.delivery) trigger.push(' (delivery ' + run.delivery + ')');
    replaceKeepingFocus(this.head, [
      h('div', { class: 'title-row' }, h('h1', null, 'Run #' + run.id + ' ', h('span', { class: 'pl' }, run.pipeline)), badge(run.state),
        mayAct(this.me) && ['queued', 'running', 'blocked'].includes(run.state)
          ? h('button', { type: 'button', class: 'act danger', 'data-action': 'cancel', 'data-key': 'act-cancel', onclick: () => this.cancel(run) }, 'Cancel run…')
          : null),
      this.note || null,
      facts([
        ['Ref', run.ref ? h('span', { title: run.ref }, shortRef(run.ref)) : ''],
        ['Commit', commit],
        ['Repository', run.repo],
        ['Pipeline file', run.file],
        ['Trigger', trigger.join('')],
        ['Trust', run.protected === undefined ? null
          : h('span', { title: run.trust_reason || '' }, (run.protected ? 'protected: ' : 'unprotected: ') + (run.trust_reason || ''))],
        ['Created', fmtTime(run.created_at)],
        ['Duration', run.started_at ? durationNode(run.started_at, run.finished_at) : 'not started'],
        ['Concurrency', run.concurrency],
      ]),
      run.error ? h('pre', { class: 'run-error', role: 'note' }, run.error) : null,
      run.state === 'blocked' ? h('p', { class: 'attention has-blocked' }, 'Blocked: an older run of concurrency group “' + run.concurrency + '” is still running.') : null,
    ]);
  }

  async cancel(run) {
    const answer = await askAction({
      action: 'cancel', title: 'Cancel run #' + run.id, confirm: 'Cancel run', danger: true,
      text: 'Stop run #' + run.id + ' (' + run.pipeline + '): running jobs are killed, queued ones never start.',
      act: (reason) => postJSON('/api/v1/runs/' + run.id + '/cancel', { reason }),
    });
    if (answer === null || !this.ctx.alive) return;
    this.note = h('p', { class: 'action-note', role: 'status' }, 'Cancel requested; the run is now ' + (answer.state || 'canceling') + '.');
    this.ctx.refreshSoon();
  }

  renderJobs(run) {
    const rows = [];
    for (const st of run.stages || []) {
      for (const j of st.jobs) {
        rows.push(h('tr', { class: 'row-' + j.state, 'data-job-id': j.id },
          h('td', null, st.name),
          h('td', null, h('a', { href: '#/jobs/' + j.id + '/log', 'data-key': 'job-' + j.id }, jobLabel(j))),
          h('td', null, badge(j.state)),
          h('td', { class: 'num' }, j.attempt ? j.attempt + '/' + j.max_attempts : ''),
          h('td', { class: 'opt' }, j.agent || ''),
          h('td', { class: 'num' }, jobDurationNode(j)),
          h('td', { class: 'opt' }, j.state === 'skipped' && st.skip_reason ? st.skip_reason : jobNote(j))));
      }
    }
    replaceKeepingFocus(this.jobsBox, [tableWrap(table(['Stage', 'Job', 'State', { text: 'Attempt', class: 'num' },
      { text: 'Agent', class: 'opt' }, { text: 'Duration', class: 'num' }, { text: 'Note', class: 'opt' }], rows, 'jobs'), 'Jobs')]);
  }

  wants(ev) {
    return ev.run_id === this.id || (ev.kind || '').startsWith('release');
  }

  destroy() {}
}

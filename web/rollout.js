// rollout.js - the rollout part of the release page (#/releases/ID):
// where the release stands in its soak and rollout stages, the fleet,
// the gates, the verdicts, the audit log, and the operator's actions.
//
// Reads (docs/api.md, "Rollouts"): GET /api/v1/releases/ID/rollout (stages
// with plan, step, holds, last verdicts; fleet counters), GET
// /api/v1/releases/ID/gates?after=N (every gate check, fetched
// incrementally: only checks newer than the last one seen), GET
// /api/v1/audit?release=ID, and the release's run (stages not started yet).
//
// Holds count down in otacd time: each rollout answer carries otacd's
// `now`, which re-anchors the page's clock (util.js serverNow, scaled by
// /api/v1/health's time_scale), and the countdowns and progress bars tick
// every second from it.
//
// Live: "rollout.changed" events re-read the panel (app.js debounces).
// Gate checks and fleet counters change without events, so while a stage
// is active the panel also re-reads every POLL_MS.
//
// Actions (promote, rollback, pause, resume) appear only for an operator
// or admin token (GET /api/v1/whoami), each behind the confirmation dialog
// (dialog.js) asking for the reason; the API stays the judge (409, 403).

import { getJSON, mayAct, postJSON, whoami } from './api.js';
import { askAction } from './dialog.js';
import { drawGateChart, fmtValue } from './gatechart.js';
import { badge, countdownNode, facts, fmtDuration, fmtTime, h, replaceKeepingFocus, serverNow, setServerClock, table, tableWrap } from './util.js';

const ACTIVE = new Set(['starting', 'waiting_approval', 'waiting_window', 'holding', 'paused']);
const POLL_MS = 3000;
const HISTORY_ROWS = 100;

function pct(bp) {
  const p = (Number(bp) || 0) / 100;
  return (Number.isInteger(p) ? p : p.toFixed(2)) + ' %';
}

function cohortText(c) {
  if (!c || typeof c !== 'object') return 'all devices';
  const parts = Object.entries(c).map(([k, v]) => k + '=' + (Array.isArray(v) ? v.join('|') : v));
  return parts.length ? parts.join(', ') : 'all devices';
}

export class RolloutPanel {
  constructor(ctx, releaseId) {
    this.ctx = ctx;
    this.id = releaseId;
    this.evals = [];          // every gate check seen, oldest first
    this.specs = {};          // gate name -> spec (from rollout.gate_specs)
    this.showAll = false;
    this.timer = 0;
    this.me = null;
    this.box = h('div', { class: 'rollout-panel' });
    this.actionsBox = h('div', { class: 'actions', role: 'group', 'aria-label': 'Release actions' });
    this.note = h('p', { class: 'action-note', role: 'status', 'aria-live': 'polite', hidden: true });
    this.stagesBox = h('div', { class: 'rollout-stages' });
    this.fleetBox = h('div');
    this.chartsBox = h('div', { class: 'gate-charts' });
    this.verdictBox = h('div');
    this.auditBox = h('div');
    this.box.append(
      h('section', { 'aria-labelledby': 'ro-h' }, h('div', { class: 'title-row' }, h('h2', { id: 'ro-h' }, 'Rollout')),
        this.actionsBox, this.note, this.stagesBox),
      h('section', { 'aria-labelledby': 'fleet-h' }, h('h2', { id: 'fleet-h' }, 'Fleet'), this.fleetBox),
      h('section', { 'aria-labelledby': 'gates-h' }, h('h2', { id: 'gates-h' }, 'Gates'), this.chartsBox),
      h('section', { 'aria-labelledby': 'verdicts-h' }, h('h2', { id: 'verdicts-h' }, 'Verdict history'), this.verdictBox),
      h('section', { 'aria-labelledby': 'audit-h' }, h('h2', { id: 'audit-h' }, 'Audit log'), this.auditBox));
  }

  // Re-read everything; rel is the release (GET /api/v1/releases/ID).
  async refresh(rel) {
    const after = this.evals.length ? this.evals[this.evals.length - 1].id : 0;
    const [ro, audit, run, me, fresh] = await Promise.all([
      getJSON('/api/v1/releases/' + this.id + '/rollout'),
      getJSON('/api/v1/audit?release=' + this.id),
      rel.run_id ? getJSON('/api/v1/runs/' + rel.run_id).catch(() => null) : null,
      whoami(),
      this.readGates(after),
    ]);
    if (!this.ctx.alive) return;
    this.me = me;
    this.evals.push(...fresh);
    const rollouts = ro.rollouts || [];
    for (const r of rollouts) {
      if (r.now) setServerClock(r.now);
      for (const [k, v] of Object.entries(r.gate_specs || {})) this.specs[k] = v;
    }
    this.ro = ro;
    this.renderActions(ro, rollouts);
    this.renderStages(ro, rollouts, run);
    this.renderFleet(ro);
    this.renderCharts(rollouts);
    this.renderVerdicts();
    this.renderAudit(audit, new Map(rollouts.map((r) => [r.id, r.stage])));
    this.schedule(rollouts.some((r) => ACTIVE.has(r.state)) || ro.state === 'reissuing');
  }

  async readGates(after) {
    const out = [];
    for (let i = 0; i < 20; i++) {
      const page = await getJSON('/api/v1/releases/' + this.id + '/gates' + (after ? '?after=' + after : ''));
      out.push(...page);
      if (page.length < 5000) break;
      after = page[page.length - 1].id;
    }
    return out;
  }

  // Gate checks and fleet counters come without events: poll while active.
  schedule(active) {
    clearTimeout(this.timer);
    this.timer = 0;
    if (!active || !this.ctx.alive) return;
    this.timer = setTimeout(() => {
      if (this.ctx.alive && this.onPoll) this.onPoll();
    }, POLL_MS);
  }

  destroy() {
    clearTimeout(this.timer);
    this.timer = 0;
  }

  // ---- actions -------------------------------------------------------------

  renderActions(ro, rollouts) {
    if (!mayAct(this.me) || (!rollouts.length && ro.state === 'created')) {
      this.actionsBox.replaceChildren();
      this.actionsBox.hidden = true;
      return;
    }
    this.actionsBox.hidden = false;
    const active = rollouts.find((r) => ACTIVE.has(r.state));
    const where = active ? ' (stage ' + active.stage + ', ' + active.state.replace(/_/g, ' ') + ')' : '';
    const name = ro.product + ' ' + ro.version;
    const btn = (action, label, spec) => h('button', { type: 'button', class: 'act' + (spec.danger ? ' danger' : ''),
      'data-action': action, 'data-key': 'act-' + action, onclick: () => this.act(action, spec) }, label);
    replaceKeepingFocus(this.actionsBox, [
      btn('promote', 'Promote…', {
        title: 'Promote ' + name, confirm: 'Promote',
        text: 'Approve the stage waiting for approval, continue a paused one at its next step, or (with the option) end the current step’s hold now' + where + '.',
        options: [{ name: 'skip_step', label: 'Skip the rest of the current step’s hold' }],
      }),
      btn('pause', 'Pause…', {
        title: 'Pause ' + name, confirm: 'Pause',
        text: 'Stop expanding the rollout' + where + '. Devices that have the release keep it; gates keep being checked.',
      }),
      btn('resume', 'Resume…', {
        title: 'Resume ' + name, confirm: 'Resume', text: 'Continue the paused rollout' + where + '.',
      }),
      btn('rollback', 'Roll back…', {
        title: 'Roll back ' + name, confirm: 'Roll back', danger: true,
        text: 'Halt the release: no new offers, its other stages are canceled, and devices are sent back to the last good release (docs/rollout.md).',
        options: [{ name: 'reissue', label: 'Reissue: re-sign the last good build with the current security counter (when devices cannot go back)' }],
      }),
    ]);
  }

  async act(action, spec) {
    const answer = await askAction({
      ...spec, action,
      act: (reason, opts) => {
        const body = { reason };
        if (opts.skip_step) body.skip_step = true;
        if (opts.reissue) body.reissue = true;
        return postJSON('/api/v1/releases/' + this.id + '/' + action, body);
      },
    });
    if (answer === null) return;
    this.note.hidden = false;
    this.note.textContent = spec.confirm + ': done' + (answer.state ? ' (' + answer.state + (answer.run ? ', run #' + answer.run : '') + ')' : '') + '.';
    if (this.onPoll) this.onPoll();
  }

  // ---- stages and steps ------------------------------------------------------

  renderStages(ro, rollouts, run) {
    const nodes = [];
    nodes.push(h('p', { class: 'release-state' }, 'Release state: ', badge(ro.state),
      ro.rollback_to ? [' · devices sent back to release ', h('a', { href: '#/releases/' + ro.rollback_to }, '#' + ro.rollback_to)] : null));
    for (const r of rollouts) nodes.push(this.stageNode(r));
    // soak and rollout stages of the run that have not started yet
    const seen = new Set(rollouts.map((r) => r.stage));
    for (const st of (run && run.stages) || []) {
      if ((st.kind !== 'soak' && st.kind !== 'rollout') || seen.has(st.name)) continue;
      nodes.push(h('div', { class: 'rollout-stage not-started', 'data-stage': st.name, 'data-state': st.state },
        h('div', { class: 'ro-head' }, h('h3', null, st.name), badge(st.state),
          h('span', { class: 'muted' }, st.kind + ' · not started'))));
    }
    if (nodes.length === 1) nodes.push(h('p', { class: 'empty' }, 'No soak or rollout stage has started for this release.'));
    replaceKeepingFocus(this.stagesBox, nodes);
  }

  stageNode(r) {
    const plan = Array.isArray(r.plan) ? r.plan : [];
    const rings = new Set(plan.map((p) => p.ring)).size;
    const finished = r.state === 'passed';
    const steps = plan.map((p, i) => {
      let cls = 'todo', word = 'to do';
      if (finished || i < r.step) { cls = 'done'; word = 'done'; }
      else if (i === r.step) {
        if (r.state === 'failed' || r.state === 'canceled') { cls = 'stopped'; word = r.state; }
        else { cls = 'current'; word = 'now'; }
      }
      const bar = h('span', { class: 'bar' }, h('span', { class: 'fill' }));
      const fill = bar.firstChild;
      if (cls === 'done') fill.classList.add('full');
      else if (cls === 'current' && r.state === 'holding' && r.step_started_at && r.hold_until > r.step_started_at) {
        fill.dataset.from = String(r.step_started_at);
        fill.dataset.to = String(r.hold_until);
        const f = Math.max(0, Math.min(1, (serverNow() - r.step_started_at) / (r.hold_until - r.step_started_at)));
        fill.style.width = (f * 100).toFixed(1) + '%';
      }
      return h('li', { class: 'step ' + cls, 'data-step': i, 'aria-current': cls === 'current' ? 'step' : null },
        h('span', { class: 'pct' }, pct(p.bp)),
        rings > 1 || p.cohort ? h('span', { class: 'ring' }, (rings > 1 ? 'ring ' + (p.ring + 1) + ': ' : '') + cohortText(p.cohort)) : null,
        h('span', { class: 'hold' }, 'hold ' + fmtDuration(p.hold_ms)),
        bar,
        h('span', { class: 'sr-only' }, ' (' + word + ')'));
    });
    return h('div', { class: 'rollout-stage', 'data-stage': r.stage, 'data-state': r.state, 'data-step': r.step, 'data-rollout': r.id },
      h('div', { class: 'ro-head' }, h('h3', null, r.stage), badge(r.state),
        h('span', { class: 'muted' }, r.kind + ' · step ' + Math.min(r.step + 1, plan.length || 1) + ' of ' + (plan.length || r.steps || 1) +
          ' · exposure ' + pct(r.percent_bp) + (r.approval ? ' · approval required' : ''))),
      h('ol', { class: 'steps', 'aria-label': 'Steps of ' + r.stage }, steps),
      this.holdLine(r),
      r.reason && r.state !== 'holding' ? h('p', { class: 'ro-reason' + (r.state === 'failed' ? ' bad' : '') }, r.reason) : null);
  }

  holdLine(r) {
    const now = serverNow();
    switch (r.state) {
    case 'holding':
      if (r.hold_until > now)
        return h('p', { class: 'hold-line' }, 'Hold ends in ', countdownNode(r.hold_until, 'a moment'), ' (otacd time, at ', fmtTime(r.hold_until), ').');
      return h('p', { class: 'hold-line' }, 'Hold over; the gates are not conclusive yet. Extended for up to ',
        countdownNode(r.extend_until || r.hold_until, 'now'), ', then it pauses for a person.');
    case 'waiting_approval':
      return h('p', { class: 'hold-line attention has-blocked' }, 'Waiting for approval: nothing is exposed until someone promotes it.');
    case 'waiting_window':
      return h('p', { class: 'hold-line' }, 'Waiting for its time window' + (r.window ? ' (' + (r.window.start || '') + '–' + (r.window.end || '') + ')' : '') + '.');
    case 'paused':
      return h('p', { class: 'hold-line attention has-blocked' }, 'Paused: needs a person (promote to continue, or roll back).');
    default:
      return null;
    }
  }

  // ---- fleet ------------------------------------------------------------------

  renderFleet(ro) {
    const f = ro.fleet;
    const nodes = [];
    if (f) {
      const n = (k) => String(f[k] ?? 0);
      nodes.push(h('dl', { class: 'kpis' },
        [['On ' + ro.version, n('devices')], ['Offered', n('offered')], ['Downloads', n('downloads')], ['Installed', n('installs')],
          ['Confirmed', n('confirmed')], ['Reverted', n('reverted')], ['Boot failures', n('boot_failed')],
          ['Reporting', n('reporting')], ['Crashed', n('crashed')]]
          .map(([k, v]) => h('div', { 'data-kpi': k }, h('dt', null, k), h('dd', null, v)))));
    }
    const versions = Object.entries(ro.fleet_versions || {}).sort((a, b) => b[1] - a[1]);
    if (versions.length) {
      const total = versions.reduce((a, [, v]) => a + v, 0) || 1;
      const rows = versions.map(([v, c]) => {
        const fill = h('span', { class: 'fill' });
        fill.style.width = (c / total * 100).toFixed(1) + '%';
        return h('tr', { 'data-version': v, class: v === ro.version ? 'this-version' : null },
          h('td', null, v + (v === ro.version ? ' (this release)' : '')),
          h('td', { class: 'num' }, String(c)),
          h('td', { class: 'num' }, (c / total * 100).toFixed(1) + ' %'),
          h('td', { class: 'bar-cell' }, h('span', { class: 'bar' }, fill)));
      });
      nodes.push(h('h3', null, 'Devices per version (' + ro.product + ')'),
        tableWrap(table(['Version', { text: 'Devices', class: 'num' }, { text: 'Share', class: 'num' }, ''], rows, 'versions'), 'Devices per version'));
    }
    if (!nodes.length) nodes.push(h('p', { class: 'empty' }, 'No fleet data (this otacd has no update server, or no device has checked in).'));
    replaceKeepingFocus(this.fleetBox, nodes);
  }

  // ---- gates ---------------------------------------------------------------------

  renderCharts(rollouts) {
    const names = [];
    for (const r of rollouts) for (const g of r.gate_names || Object.keys(r.gates || {})) if (!names.includes(g)) names.push(g);
    for (const e of this.evals) if (!names.includes(e.gate)) names.push(e.gate);
    if (!names.length) {
      this.chartsBox.replaceChildren(h('p', { class: 'empty' }, 'No gates (yet).'));
      return;
    }
    this.chartsBox.replaceChildren(...names.map((g) => drawGateChart(g, this.evals.filter((e) => e.gate === g), this.specs[g])));
  }

  // The checks where a gate's verdict changed (per stage and step), and the
  // latest check of each: what a person wants to read.  "Show every check"
  // lists the latest HISTORY_ROWS of them all.
  renderVerdicts() {
    const ev = this.evals;
    let rows;
    if (this.showAll) {
      rows = ev.slice(-HISTORY_ROWS);
    } else {
      const prev = new Map(), lastOf = new Map(), keep = new Set();
      for (const e of ev) {
        const k = e.rollout + '/' + e.step + '/' + e.gate;
        if (prev.get(k) !== e.verdict) keep.add(e);
        prev.set(k, e.verdict);
        lastOf.set(e.gate, e);
      }
      for (const e of lastOf.values()) keep.add(e);
      rows = ev.filter((e) => keep.has(e)).slice(-HISTORY_ROWS);
    }
    if (!rows.length) {
      replaceKeepingFocus(this.verdictBox, [h('p', { class: 'empty' }, 'No gate has been checked yet.')]);
      return;
    }
    const trs = rows.reverse().map((e) => {
      const x = e.eval || {};
      return h('tr', { 'data-eval': e.id, class: 'v-' + e.verdict },
        h('td', null, fmtTime(e.at)),
        h('td', null, e.stage),
        h('td', { class: 'num' }, String(e.step + 1)),
        h('td', null, e.gate),
        h('td', null, badge(e.verdict)),
        h('td', { class: 'num' }, fmtValue(x.estimate) + ' [' + fmtValue(typeof x.lo === 'number' ? x.lo : null) + ', ' +
          fmtValue(typeof x.hi === 'number' ? x.hi : null) + ']'),
        h('td', { class: 'num opt' }, x.n === undefined ? '' : String(x.n)),
        h('td', { class: 'opt reason' }, x.reason || ''));
    });
    const toggle = h('button', { type: 'button', class: 'linkish', 'data-key': 'verdict-toggle', onclick: () => {
      this.showAll = !this.showAll;
      this.renderVerdicts();
    } }, this.showAll ? 'Show verdict changes only' : 'Show every check');
    replaceKeepingFocus(this.verdictBox, [
      h('p', { class: 'muted' }, ev.length + ' checks in all; ' + (this.showAll
        ? 'the latest ' + rows.length + ' shown. '
        : 'shown: each change of a verdict and the latest check of each gate. '), toggle),
      tableWrap(table(['At (otacd time)', 'Stage', { text: 'Step', class: 'num' }, 'Gate', 'Verdict',
        { text: 'Estimate [lo, hi]', class: 'num' }, { text: 'Devices', class: 'num opt' }, { text: 'Reason', class: 'opt' }], trs, 'verdicts'), 'Verdict history'),
    ]);
  }

  renderAudit(audit, stageOf) {
    if (!audit.length) {
      replaceKeepingFocus(this.auditBox, [h('p', { class: 'empty' }, 'Nothing recorded yet.')]);
      return;
    }
    const rows = audit.map((a) => h('tr', { 'data-audit': a.id, 'data-action': a.action },
      h('td', null, fmtTime(a.at)),
      h('td', null, a.actor),
      h('td', null, a.action),
      h('td', null, (a.detail && a.detail.stage) || stageOf.get(a.rollout) || ''),
      h('td', { class: 'reason' }, a.reason || '')));
    replaceKeepingFocus(this.auditBox, [tableWrap(table(['At (otacd time)', 'Who', 'Action', 'Stage', 'Reason'], rows, 'audit'), 'Audit log')]);
  }
}

// Whether an event concerns the rollout of release id (ev.detail.release),
// or the run that made it.
export function rolloutEventFor(ev, id, runId) {
  if ((ev.kind || '').startsWith('rollout')) return !ev.detail || ev.detail.release === undefined || ev.detail.release === id || ev.run_id === runId;
  return !!runId && ev.run_id === runId;
}

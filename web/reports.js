// reports.js - a run's test, HIL and static-analysis results on the run
// page, from GET /api/v1/runs/ID/reports (the JUnit, cppcheck and SARIF
// files its jobs uploaded, parsed by the daemon).
//
// Only each job's latest attempt is shown (a retried job's earlier
// reports are history).  Per report: the counts, then what needs reading:
// failed and errored test cases with their messages, findings with
// severity, rule, place and message.  Long lists are cut at LIST_MAX rows
// with the number left out; `otactl show RUN --tests|--findings` prints
// them all.  Every text is a text node (util.js), so a failure message
// holding markup stays text.

import { metricsBlock } from './metricchart.js';
import { h, table, tableWrap } from './util.js';

const LIST_MAX = 100;

function count(n, word) {
  return n + ' ' + word;
}

// "HIL" for reports of hil stages, "Tests" for the others with JUnit.
function testKind(rep, kinds) {
  return kinds[rep.stage] === 'hil' ? 'HIL' : 'Tests';
}

function junitCounts(sum) {
  const parts = [count(sum.passed || 0, 'passed')];
  if (sum.failures) parts.push(count(sum.failures, 'failed'));
  if (sum.errors) parts.push(count(sum.errors, sum.errors === 1 ? 'error' : 'errors'));
  if (sum.skipped) parts.push(count(sum.skipped, 'skipped'));
  return count(sum.tests || 0, sum.tests === 1 ? 'test' : 'tests') + ': ' + parts.join(', ');
}

function severityCounts(sum) {
  const c = sum.counts || {};
  const keys = Object.keys(c).filter((k) => c[k] > 0);
  if (!keys.length) return 'no findings';
  return keys.map((k) => count(c[k], k)).join(', ');
}

function cut(list, n) {
  return list.length > n ? [list.slice(0, n), list.length - n] : [list, 0];
}

function more(left, what) {
  return left ? h('p', { class: 'muted' }, left + ' more ' + what + ' not shown (otactl show RUN ' +
    (what === 'findings' ? '--findings' : '--tests') + ')') : null;
}

function junitBlock(rep, kinds) {
  const sum = rep.summary || {};
  const bad = (rep.tests || []).filter((t) => t.status === 'failed' || t.status === 'error');
  const ok = !sum.failures && !sum.errors;
  const [shown, left] = cut(bad, LIST_MAX);
  const rows = shown.map((t, i) => h('tr', { class: 'row-failed', 'data-case': i },
    h('td', null, t.classname ? t.classname + '.' + (t.name || '') : (t.name || '')),
    h('td', null, t.status),
    h('td', { class: 'msg' }, h('pre', { class: 'case-msg' }, t.message || t.output || ''))));
  return h('div', { class: 'report', 'data-report': rep.id, 'data-format': 'junit' },
    h('h3', null, testKind(rep, kinds) + ' · ' + rep.stage + ' / ' + rep.job_name + ' · ',
      h('span', { class: 'muted' }, rep.name)),
    h('p', { class: ok ? 'report-ok' : 'report-bad' }, junitCounts(sum)),
    rows.length ? tableWrap(table(['Test case', 'Status', 'Message'], rows, 'cases'), 'Failed tests') : null,
    more(left, 'failures'));
}

function findingsBlock(rep) {
  const sum = rep.summary || {};
  const [shown, left] = cut(rep.findings || [], LIST_MAX);
  const rows = shown.map((f, i) => h('tr', { class: 'sev-' + (f.severity || 'none'), 'data-finding': i },
    h('td', null, f.severity || ''),
    h('td', null, h('code', null, f.rule || '')),
    h('td', null, (f.file || '') + (f.line ? ':' + f.line : '')),
    h('td', { class: 'msg' }, f.message || '')));
  return h('div', { class: 'report', 'data-report': rep.id, 'data-format': rep.format },
    h('h3', null, 'Analysis · ' + rep.stage + ' / ' + rep.job_name + ' · ', h('span', { class: 'muted' }, rep.name + ' (' + rep.format + ')')),
    h('p', { class: (sum.counts && sum.counts.error) ? 'report-bad' : 'report-ok' }, severityCounts(sum)),
    rows.length ? tableWrap(table(['Severity', 'Rule', 'Where', 'Message'], rows, 'findings'), 'Findings') : null,
    more(left, 'findings'));
}

// The section's content for reports (the API's answer) of a run whose
// stages are `stages` (for their kinds); metrics: GET /runs/ID/metrics?history=N
// for the metrics reports' trends (may be null).
export function reportsView(reports, stages, metrics) {
  const kinds = {};
  for (const st of stages || []) kinds[st.name] = st.kind;
  const latest = (reports || []).filter((r) => r.latest && r.format !== 'toolchain');
  if (!latest.length) return [h('p', { class: 'empty' }, 'No test, HIL or analysis reports (yet).')];
  return latest.map((r) => (r.format === 'junit' ? junitBlock(r, kinds)
    : (r.format === 'pmccabe' || r.format === 'jscpd' || r.format === 'power') ? metricsBlock(r, metrics)
      : findingsBlock(r)));
}

// metricchart.js - code-quality and power metrics (pmccabe, jscpd, power reports) on the run
// page: each number of a metrics report with a small trend chart of the
// same number over the last runs of the pipeline on the run's ref
// (GET /api/v1/runs/ID/metrics?history=N, oldest first).
//
// A chart is an inline SVG line with a dot per run; the run's own dot is
// larger, and every dot has a tooltip "run #N: VALUE" (a text, so the
// value never depends on reading the line).  Runs without the metric are
// skipped, not drawn as zero.

import { h, s } from './util.js';

const W = 180, H = 36, PAD = 4;

function fmt(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

// points: [{run, value}] oldest first; current: this run's id.
export function trendChart(points, current, label) {
  const svg = s('svg', { class: 'metric-trend', width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img',
    'aria-label': label + ' over the last ' + points.length + ' runs' });
  if (!points.length) return svg;
  const vals = points.map((p) => p.value);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi === lo) { hi += 1; lo = Math.max(0, lo - 1); }
  const x = (i) => points.length === 1 ? W / 2 : PAD + i * (W - 2 * PAD) / (points.length - 1);
  const y = (v) => H - PAD - (v - lo) * (H - 2 * PAD) / (hi - lo);
  svg.append(s('polyline', { fill: 'none', stroke: 'currentColor', 'stroke-width': 1.5,
    points: points.map((p, i) => x(i).toFixed(1) + ',' + y(p.value).toFixed(1)).join(' ') }));
  points.forEach((p, i) => svg.append(s('circle', { cx: x(i).toFixed(1), cy: y(p.value).toFixed(1),
    r: p.run === current ? 3.5 : 2, 'data-run': p.run },
    s('title', null, 'run #' + p.run + ': ' + fmt(p.value)))));
  return svg;
}

// The block of one metrics report: its numbers, each with its trend.
export function metricsBlock(rep, metrics) {
  const nums = (rep.summary && rep.summary.metrics) || {};
  const history = (metrics && metrics.history) || [];
  const rows = Object.keys(nums).map((name) => {
    const key = rep.stage + '.' + name;
    const points = history.filter((e) => e.metrics && typeof e.metrics[key] === 'number')
      .map((e) => ({ run: e.run, value: e.metrics[key] }));
    return h('tr', { 'data-metric': name },
      h('td', null, h('code', null, name)),
      h('td', { class: 'num' }, fmt(nums[name])),
      h('td', null, trendChart(points, metrics ? metrics.run : 0, name)));
  });
  return h('div', { class: 'report', 'data-report': rep.id, 'data-format': rep.format },
    h('h3', null, 'Metrics · ' + rep.stage + ' / ' + rep.job_name + ' · ', h('span', { class: 'muted' }, rep.name + ' (' + rep.format + ')')),
    h('table', { class: 'metrics' }, h('thead', null, h('tr', null, h('th', null, 'Metric'), h('th', null, 'Value'),
      h('th', null, 'Last runs on this ref'))), h('tbody', null, ...rows)));
}

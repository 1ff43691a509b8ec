// gatechart.js - one gate's metric over time as an inline SVG chart.
//
// Input: the gate's stored evaluations (GET /api/v1/releases/ID/gates,
// oldest first), each {rollout, stage, step, at, verdict, eval: {estimate,
// lo, hi, n, reason, ...}}, and the gate's spec from the pipeline
// (rollout.gate_specs: {metric, max, min, max_increase, ...}) when the API
// gives it.  Drawn: the confidence band (lo..hi) as an area, the estimate
// as a line with a dot per check coloured by verdict (the verdict is in
// each dot's tooltip and in the verdict table too, so colour is never the
// only cue), the spec's max/min as a dashed threshold line, and a thin
// vertical rule where a new stage or step starts.
//
// Time on the x axis is otacd time (the daemon's clock, scaled by
// --time-scale), labelled as the offset from the first check.  Bands can be
// very wide while few devices report (0..1 for a proportion): the y range
// follows the estimates and thresholds and the band is clipped to it, so
// the line stays readable.  More than MAX_POINTS checks are thinned to
// evenly spaced ones (the last is always kept).

import { fmtDuration, h, s } from './util.js';

const W = 640, H = 190;
const M = { l: 58, r: 14, t: 14, b: 30 };
const MAX_POINTS = 300;

// A limit from the spec: 0.005, "0.5%", "10%"; null when absent or not a number.
export function specNumber(v) {
  if (typeof v === 'number' && isFinite(v)) return v;
  if (typeof v !== 'string') return null;
  const m = v.trim().match(/^([-+]?\d*\.?\d+(?:e[-+]?\d+)?)\s*(%?)$/i);
  if (!m) return null;
  const n = Number(m[1]);
  return m[2] ? n / 100 : n;
}

function num(v) {
  return typeof v === 'number' && isFinite(v) ? v : null;
}

export function fmtValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v !== 'number') return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 1) return String(Number(v.toPrecision(4)));
  return String(Number(v.toPrecision(3)));
}

function thin(points) {
  if (points.length <= MAX_POINTS) return points;
  const out = [];
  const step = points.length / MAX_POINTS;
  for (let i = 0; i < MAX_POINTS - 1; i++) out.push(points[Math.floor(i * step)]);
  out.push(points[points.length - 1]);
  return out;
}

// The thresholds to draw: [{value, label}].
export function thresholds(spec) {
  const out = [];
  if (!spec) return out;
  const max = specNumber(spec.max), min = specNumber(spec.min);
  if (max !== null) out.push({ value: max, label: 'max ' + fmtValue(max) });
  if (min !== null) out.push({ value: min, label: 'min ' + fmtValue(min) });
  return out;
}

// drawGateChart(name, evals, spec) -> <figure> with the SVG and a caption.
export function drawGateChart(name, evals, spec) {
  const all = evals.filter((g) => g.eval && num(g.eval.estimate) !== null);
  const pts = thin(all);
  const th = thresholds(spec);
  const last = evals.length ? evals[evals.length - 1] : null;
  const metric = (spec && spec.metric) || (last && last.eval && last.eval.metric) || '';
  const svg = s('svg', { class: 'gate-chart', viewBox: `0 0 ${W} ${H}`,
    role: 'img', 'data-gate': name, 'data-points': String(pts.length) });
  const summary = [name + (metric ? ' (' + metric + ')' : '')];
  if (last && last.eval) {
    summary.push('latest ' + fmtValue(last.eval.estimate) + ' [' + fmtValue(num(last.eval.lo)) + ', ' +
      fmtValue(num(last.eval.hi)) + '] with ' + (last.eval.n ?? '?') + ' devices: ' + last.verdict);
  }
  for (const t of th) summary.push(t.label);
  svg.setAttribute('aria-label', summary.join('; '));
  svg.append(s('title', null, summary.join('; ')));

  if (!pts.length) {
    svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'no checks yet'));
    return figure(name, metric, svg, th, all.length);
  }

  // ranges
  const t0 = pts[0].at, t1 = Math.max(pts[pts.length - 1].at, t0 + 1);
  const est = pts.map((p) => p.eval.estimate);
  let lo = Math.min(...est, ...th.map((t) => t.value));
  let hi = Math.max(...est, ...th.map((t) => t.value));
  const bandLo = Math.min(...pts.map((p) => num(p.eval.lo) ?? p.eval.estimate));
  const bandHi = Math.max(...pts.map((p) => num(p.eval.hi) ?? p.eval.estimate));
  const span0 = hi - lo || Math.abs(hi) * 0.2 || 0.01;
  // the band may widen the range, but at most to twice the span above and below
  hi = Math.min(Math.max(hi, bandHi), hi + span0 * 2);
  lo = Math.max(Math.min(lo, bandLo), lo - span0 * 2);
  const pad = (hi - lo) * 0.06 || 0.01;
  hi += pad;
  lo = lo >= 0 && lo - pad < 0 ? 0 : lo - pad;
  const x = (t) => M.l + (t - t0) / (t1 - t0) * (W - M.l - M.r);
  const y = (v) => {
    const c = Math.min(hi, Math.max(lo, v));
    return M.t + (hi - c) / (hi - lo) * (H - M.t - M.b);
  };
  const f = (n) => n.toFixed(1);

  // axes and grid: three y ticks, start and end on x
  const grid = s('g', { class: 'grid' });
  for (const v of [lo, (lo + hi) / 2, hi]) {
    grid.append(s('line', { x1: M.l, x2: W - M.r, y1: f(y(v)), y2: f(y(v)) }),
      s('text', { x: M.l - 6, y: f(y(v) + 4), 'text-anchor': 'end', class: 'tick' }, fmtValue(Number(v.toPrecision(3)))));
  }
  grid.append(s('text', { x: M.l, y: H - 8, class: 'tick' }, '+0'),
    s('text', { x: W - M.r, y: H - 8, 'text-anchor': 'end', class: 'tick' }, '+' + fmtDuration(t1 - t0) + ' (otacd time)'));
  svg.append(grid);

  // stage and step boundaries
  const rules = s('g', { class: 'steps' });
  for (let i = 1; i < all.length; i++) {
    const a = all[i - 1], b = all[i];
    if (a.rollout === b.rollout && a.step === b.step) continue;
    const px = f(x(b.at));
    rules.append(s('line', { x1: px, x2: px, y1: M.t, y2: H - M.b, class: 'step-rule' }),
      s('text', { x: px, y: M.t + 10, class: 'tick step-label', dx: 3 }, b.stage + ' ' + (b.step + 1)));
  }
  svg.append(rules);

  // the band: upper edge left to right, lower edge back
  let d = '';
  pts.forEach((p, i) => { d += (i ? 'L' : 'M') + f(x(p.at)) + ',' + f(y(num(p.eval.hi) ?? p.eval.estimate)); });
  for (let i = pts.length - 1; i >= 0; i--) d += 'L' + f(x(pts[i].at)) + ',' + f(y(num(pts[i].eval.lo) ?? pts[i].eval.estimate));
  svg.append(s('path', { class: 'band', d: d + 'Z' }));

  // thresholds
  for (const t of th) {
    svg.append(s('line', { class: 'threshold', x1: M.l, x2: W - M.r, y1: f(y(t.value)), y2: f(y(t.value)) }),
      s('text', { class: 'threshold-label', x: W - M.r - 4, y: f(y(t.value) - 4), 'text-anchor': 'end' }, t.label));
  }

  // the estimate and one dot per check
  svg.append(s('path', { class: 'estimate', d: pts.map((p, i) => (i ? 'L' : 'M') + f(x(p.at)) + ',' + f(y(p.eval.estimate))).join('') }));
  const dots = s('g', { class: 'points' });
  for (const p of pts) {
    dots.append(s('circle', { class: 'pt v-' + p.verdict, cx: f(x(p.at)), cy: f(y(p.eval.estimate)), r: 2.6 },
      s('title', null, `${p.stage} step ${p.step + 1}: ${fmtValue(p.eval.estimate)} [${fmtValue(num(p.eval.lo))}, ` +
        `${fmtValue(num(p.eval.hi))}] n=${p.eval.n ?? '?'}: ${p.verdict}`)));
  }
  svg.append(dots);
  return figure(name, metric, svg, th, all.length);
}

function figure(name, metric, svg, th, n) {
  const cap = h('figcaption', null, h('strong', null, name), metric ? ' · ' + metric : '',
    th.length ? ' · ' + th.map((t) => t.label).join(', ') : '',
    h('span', { class: 'muted' }, ' · ' + n + (n === 1 ? ' check' : ' checks') + ' · band: confidence sequence (lo–hi)'));
  return h('figure', { class: 'gate', 'data-gate': name }, cap, h('div', { class: 'chart-box' }, svg));
}

// dag.js - a run's stages as an SVG graph, built with DOM calls.
//
// Stages are boxes in columns by DAG depth (a stage with no `needs` is in
// column 0, any other one column right of its deepest need); edges are
// curves from a need to the stage needing it.  Each box lists the stage's
// jobs (one row per matrix variant) with state, attempt and duration, and
// each row links to that job's log.  The table under the graph on the run
// page says the same in text.

import { s, span, stateClass } from './util.js';

const BOX_W = 270;
const COL_GAP = 64;
const ROW_GAP = 22;
const HEAD_H = 32;
const JOB_H = 24;
const PAD = 12;
const CHAR_W = 7.2;       // approximate width of one 12px character

function depths(stages) {
  const byName = new Map(stages.map((st) => [st.name, st]));
  const memo = new Map();
  const depth = (st, seen) => {
    if (memo.has(st.name)) return memo.get(st.name);
    if (seen.has(st.name)) return 0;             // a cycle cannot be stored, but never loop
    seen.add(st.name);
    let d = 0;
    for (const n of st.needs || []) {
      const need = byName.get(n);
      if (need) d = Math.max(d, depth(need, seen) + 1);
    }
    memo.set(st.name, d);
    return d;
  };
  for (const st of stages) depth(st, new Set());
  return memo;
}

function fit(text, width) {
  const max = Math.max(4, Math.floor(width / CHAR_W));
  return text.length > max ? text.slice(0, max - 1) + '…' : text;
}

// The label of a job inside its stage's box: the matrix values for matrix
// jobs ("mps2-an385"), else the job's name.
export function jobLabel(job) {
  const m = job.matrix && Object.values(job.matrix);
  if (m && m.length) return m.join(', ');
  return job.name;
}

export function jobMeta(job) {
  const parts = [job.state];
  if (job.attempt > 1) parts.push('try ' + job.attempt + '/' + job.max_attempts);
  const d = span(job.started_at, job.finished_at);
  if (d) parts.push(d);
  return parts.join(' · ');
}

export function drawDag(stages) {
  const depth = depths(stages);
  const columns = [];
  for (const st of stages) {
    const d = depth.get(st.name) || 0;
    (columns[d] = columns[d] || []).push(st);
  }
  const pos = new Map();
  let height = 0;
  columns.forEach((col, ci) => {
    let y = PAD;
    for (const st of col || []) {
      const h = HEAD_H + Math.max(1, st.jobs.length) * JOB_H + 8;
      pos.set(st.name, { x: PAD + ci * (BOX_W + COL_GAP), y, h });
      y += h + ROW_GAP;
    }
    height = Math.max(height, y - ROW_GAP + PAD);
  });
  const width = PAD * 2 + columns.length * BOX_W + (columns.length - 1) * COL_GAP;

  const svg = s('svg', {
    class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`,
    role: 'group', 'aria-label': 'Stages of this run and what each needs',
  });
  svg.append(s('defs', null,
    s('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));

  // An edge between adjacent columns is one curve.  An edge that skips
  // columns must not run behind the boxes in between: it keeps the
  // source's (or the target's) height if that is clear of them, else it
  // takes a lane under them.
  const colX = (c) => PAD + c * (BOX_W + COL_GAP);
  const edges = s('g', { class: 'edges' });
  const lanes = new Map();
  let bottom = height;
  for (const st of stages) {
    const to = pos.get(st.name);
    for (const n of st.needs || []) {
      const from = pos.get(n);
      if (!from) continue;
      const need = stages.find((x) => x.name === n);
      const x1 = from.x + BOX_W, y1 = from.y + HEAD_H / 2, x2 = to.x - 2, y2 = to.y + HEAD_H / 2;
      const c1 = depth.get(n) || 0, c2 = depth.get(st.name) || 0;
      let d;
      if (c2 - c1 <= 1) {
        const mid = (x1 + x2) / 2;
        d = `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`;
      } else {
        const between = [];
        for (let c = c1 + 1; c < c2; c++) for (const o of columns[c] || []) between.push(pos.get(o.name));
        const clear = (y) => between.every((b) => y < b.y - 4 || y > b.y + b.h + 4);
        let lane;
        if (clear(y1)) lane = y1;
        else if (clear(y2)) lane = y2;
        else {
          const key = c1 + '-' + c2;
          const k = lanes.get(key) || 0;
          lanes.set(key, k + 1);
          lane = Math.max(...between.map((b) => b.y + b.h)) + ROW_GAP / 2 + k * 6;
          bottom = Math.max(bottom, lane + PAD);
        }
        const xa = colX(c1 + 1), xb = colX(c2 - 1) + BOX_W;
        const g1 = (x1 + xa) / 2, g2 = (xb + x2) / 2;
        d = `M${x1},${y1} C${g1},${y1} ${g1},${lane} ${xa},${lane} L${xb},${lane} C${g2},${lane} ${g2},${y2} ${x2},${y2}`;
      }
      edges.append(s('path', {
        class: 'edge ' + stateClass(need && need.state), d,
        'marker-end': 'url(#arrow)', 'data-from': n, 'data-to': st.name,
      }));
    }
  }
  if (bottom > height) {
    svg.setAttribute('height', bottom);
    svg.setAttribute('viewBox', `0 0 ${width} ${bottom}`);
  }
  svg.append(edges);

  for (const st of stages) {
    const p = pos.get(st.name);
    const g = s('g', {
      class: 'stage ' + stateClass(st.state), transform: `translate(${p.x},${p.y})`,
      'data-stage': st.name, 'data-state': st.state,
    });
    g.append(
      s('title', null, st.name + ' (' + (st.kind || 'command') + '): ' + st.state +
        (st.needs && st.needs.length ? '; needs ' + st.needs.join(', ') : '') +
        (st.skip_reason ? '; ' + st.skip_reason : '')),
      s('rect', { class: 'box', width: BOX_W, height: p.h, rx: 6 }),
      s('path', { class: 'head', d: `M0,6 a6,6 0 0 1 6,-6 h${BOX_W - 12} a6,6 0 0 1 6,6 v${HEAD_H - 6} h-${BOX_W} z` }),
      s('text', { class: 'stage-name', x: 10, y: 21 }, fit(st.name, BOX_W - 100)),
      s('text', { class: 'stage-state', x: BOX_W - 10, y: 21, 'text-anchor': 'end' }, st.state),
    );
    st.jobs.forEach((job, i) => {
      const y = HEAD_H + 4 + i * JOB_H;
      const meta = jobMeta(job);
      const labelRoom = BOX_W - 30 - meta.length * CHAR_W * 0.92;
      const a = s('a', {
        href: '#/jobs/' + job.id + '/log', class: 'job ' + stateClass(job.state),
        'data-job': job.id, 'data-key': 'dag-job-' + job.id,
        'aria-label': job.name + ': ' + meta + ' (log)',
      },
      s('title', null, job.name + ': ' + meta),
      s('rect', { class: 'hit', x: 4, y, width: BOX_W - 8, height: JOB_H - 2, rx: 3 }),
      s('circle', { class: 'dot', cx: 14, cy: y + JOB_H / 2 - 1, r: 4.5 }),
      s('text', { class: 'job-name', x: 24, y: y + 16 }, fit(jobLabel(job), labelRoom)),
      s('text', { class: 'job-meta', x: BOX_W - 10, y: y + 16, 'text-anchor': 'end' }, meta));
      g.append(a);
    });
    if (!st.jobs.length)
      g.append(s('text', { class: 'job-meta', x: 10, y: HEAD_H + 20 }, 'no jobs'));
    svg.append(g);
  }
  return svg;
}

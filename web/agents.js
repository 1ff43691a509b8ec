// agents.js - #/agents : the HIL rigs, busy or free, then every agent, its
// labels, the labels it is registered for (it may claim nothing else),
// state (revoked agents stay listed), current job and when otacd last heard from it.  A rig is an
// agent carrying the label `hil` or a `board=NAME` label (docs/stages.md).  "lost" (no word for a minute) has no event
// of its own, so this view also re-reads every 10 s.

import { getJSON } from './api.js';
import { badge, h, replaceKeepingFocus, table, tableWrap, timeAgo } from './util.js';

function isRig(a) {
  return (a.labels || []).some((l) => l === 'hil' || l.startsWith('board='));
}

// One line per rig: its board, busy (with the job) or free, or lost.
function rigsView(agents) {
  const rigs = agents.filter(isRig);
  if (!rigs.length) return h('p', { class: 'muted rigs' }, 'No HIL rigs (agents labelled hil or board=NAME).');
  const busy = rigs.filter((a) => a.state === 'busy').length;
  const free = rigs.filter((a) => a.state === 'idle').length;
  const lost = rigs.filter((a) => a.state === 'lost').length;
  return h('section', { class: 'rigs', 'aria-labelledby': 'rigs-h' },
    h('h2', { id: 'rigs-h' }, 'HIL rigs: ' + busy + ' busy, ' + free + ' free' + (lost ? ', ' + lost + ' lost' : '')),
    h('ul', { class: 'rig-list' }, rigs.map((a) => {
      const board = (a.labels || []).find((l) => l.startsWith('board='));
      return h('li', { 'data-rig': a.name, 'data-state': a.state },
        h('strong', null, board ? board.slice(6) : a.name), ' ', h('span', { class: 'muted' }, a.name), ' ',
        a.state === 'busy' ? badge('busy') : a.state === 'idle' ? badge('free') : badge(a.state),
        a.current_job ? [' ', h('a', { href: '#/jobs/' + a.current_job + '/log' }, 'job ' + a.current_job)] : null);
    })));
}

export class AgentsView {
  constructor(ctx) {
    this.ctx = ctx;
    this.timer = 0;
  }

  async load() {
    this.ctx.title('Agents');
    this.box = h('div');
    this.ctx.main.replaceChildren(h('h1', null, 'Agents'), this.box);
    await this.refresh();
    this.timer = setInterval(() => this.refresh().catch((e) => this.ctx.fail(e)), 10000);
  }

  async refresh() {
    const agents = await getJSON('/api/v1/agents');
    if (!this.ctx.alive) return;
    if (!agents.length) {
      replaceKeepingFocus(this.box, [h('p', { class: 'empty' }, 'No agents have registered. otacd starts local agents itself; register others with otactl agents add NAME --labels … and start otacd-agent --url … --token-file ….')]);
      return;
    }
    const rows = agents.map((a) => h('tr', { class: 'row-' + a.state, 'data-agent': a.name },
      h('td', null, a.name, a.kind && a.kind !== 'registered' ? h('span', { class: 'muted' }, ' (' + a.kind + ')') : null),
      h('td', null, badge(a.state)),
      h('td', null, h('ul', { class: 'chips' }, (a.labels || []).map((l) => h('li', null, l)))),
      h('td', null, a.registered_labels ? h('ul', { class: 'chips' }, a.registered_labels.map((l) => h('li', null, l)))
        : h('span', { class: 'muted' }, a.kind === 'config' ? 'any (config)' : '—')),
      h('td', null, a.current_job ? h('a', { href: '#/jobs/' + a.current_job + '/log', 'data-key': 'agent-job-' + a.id }, 'job ' + a.current_job) : h('span', { class: 'muted' }, '—')),
      h('td', null, timeAgo(a.last_seen))));
    replaceKeepingFocus(this.box, [rigsView(agents),
      tableWrap(table(['Agent', 'State', 'Labels', 'May claim', 'Current job', 'Last seen'], rows, 'agents'), 'Agents')]);
  }

  wants(ev) {
    return /^(agent|job)/.test(ev.kind || '');
  }

  destroy() {
    clearInterval(this.timer);
  }
}

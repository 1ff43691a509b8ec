// agents.js - #/agents : every agent, its labels, state, current job and
// when otacd last heard from it.  "lost" (no word for a minute) has no event
// of its own, so this view also re-reads every 10 s.

import { getJSON } from './api.js';
import { badge, h, replaceKeepingFocus, table, tableWrap, timeAgo } from './util.js';

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
      replaceKeepingFocus(this.box, [h('p', { class: 'empty' }, 'No agents have registered. otacd starts local agents itself; others join with otacd-agent --url … --token ….')]);
      return;
    }
    const rows = agents.map((a) => h('tr', { class: 'row-' + a.state, 'data-agent': a.name },
      h('td', null, a.name, a.local ? h('span', { class: 'muted' }, ' (local)') : null),
      h('td', null, badge(a.state)),
      h('td', null, h('ul', { class: 'chips' }, (a.labels || []).map((l) => h('li', null, l)))),
      h('td', null, a.current_job ? h('a', { href: '#/jobs/' + a.current_job + '/log', 'data-key': 'agent-job-' + a.id }, 'job ' + a.current_job) : h('span', { class: 'muted' }, '—')),
      h('td', null, timeAgo(a.last_seen))));
    replaceKeepingFocus(this.box, [tableWrap(table(['Agent', 'State', 'Labels', 'Current job', 'Last seen'], rows, 'agents'), 'Agents')]);
  }

  wants(ev) {
    return /^(agent|job)/.test(ev.kind || '');
  }

  destroy() {
    clearInterval(this.timer);
  }
}

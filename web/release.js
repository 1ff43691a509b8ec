// release.js - #/releases/ID : a signed release: its rollout (stages and
// steps, fleet, gate charts, verdicts, audit log and actions; rollout.js),
// its manifest (release/manifest.json, fetched as an artifact and shown
// both as tables and as the raw JSON) and its artifacts.

import { getJSON } from './api.js';
import { RolloutPanel, rolloutEventFor } from './rollout.js';
import { artifactTable } from './run.js';
import { facts, fmtBytes, fmtTime, h, replaceKeepingFocus, table, tableWrap } from './util.js';

export class ReleaseView {
  constructor(ctx) {
    this.ctx = ctx;
    this.id = ctx.route.id;
    this.manifestFor = 0;
    this.runId = 0;
    this.rollout = new RolloutPanel(ctx, this.id);
    this.rollout.onPoll = () => this.ctx.refreshSoon();
  }

  async load() {
    this.ctx.title('Release ' + this.id);
    this.head = h('div');
    this.manifestBox = h('div');
    this.artsBox = h('div');
    this.crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Runs'), ' › ', 'release ' + this.id);
    this.ctx.main.replaceChildren(this.crumbs, this.head, this.rollout.box,
      h('section', { 'aria-labelledby': 'man-h' }, h('h2', { id: 'man-h' }, 'Manifest'), this.manifestBox),
      h('section', { 'aria-labelledby': 'rarts-h' }, h('h2', { id: 'rarts-h' }, 'Artifacts'), this.artsBox));
    await this.refresh();
  }

  async refresh() {
    const rel = await getJSON('/api/v1/releases/' + this.id);
    if (!this.ctx.alive) return;
    this.runId = rel.run_id;
    await this.rollout.refresh(rel);
    if (!this.ctx.alive) return;
    this.ctx.title(rel.product + ' ' + rel.version);
    this.crumbs.replaceChildren(h('a', { href: '#/' }, 'Runs'), ' › ',
      h('a', { href: '#/runs/' + rel.run_id }, 'Run #' + rel.run_id), ' › ', 'release ' + rel.version);
    replaceKeepingFocus(this.head, [
      h('h1', null, rel.product + ' ', h('span', { class: 'pl' }, rel.version)),
      facts([
        ['Product', rel.product],
        ['Version', rel.version],
        ['Branch', rel.branch],
        ['Security counter', String(rel.security_counter)],
        ['Signing key id', h('code', { class: 'wrap' }, rel.key_id)],
        ['Run', h('a', { href: '#/runs/' + rel.run_id }, '#' + rel.run_id)],
        ['Created', fmtTime(rel.created_at)],
      ]),
    ]);
    replaceKeepingFocus(this.artsBox, rel.artifacts && rel.artifacts.length
      ? [artifactTable(rel.artifacts, false)] : [h('p', { class: 'empty' }, 'No artifacts.')]);
    // the manifest never changes once released: fetch it once
    if (rel.manifest_artifact && this.manifestFor !== rel.manifest_artifact) {
      this.manifestFor = rel.manifest_artifact;
      try {
        const m = await getJSON('/api/v1/artifacts/' + rel.manifest_artifact);
        if (this.ctx.alive) this.renderManifest(m);
      } catch (e) {
        this.manifestFor = 0;
        this.manifestBox.replaceChildren(h('p', { class: 'empty' }, 'The manifest could not be read: ' + e.message));
      }
    } else if (!rel.manifest_artifact) {
      this.manifestBox.replaceChildren(h('p', { class: 'empty' }, 'This release has no manifest.'));
    }
  }

  renderManifest(m) {
    const git = m.git || {};
    const hw = Array.isArray(m.hardware) ? m.hardware : [];
    const images = Array.isArray(m.images) ? m.images : [];
    const rows = images.map((img) => h('tr', { 'data-image': img.name },
      h('td', null, img.hardware || ''),
      h('td', { class: 'name' }, img.name || ''),
      h('td', { class: 'opt' }, img.type || ''),
      h('td', { class: 'num' }, fmtBytes(img.size)),
      h('td', { class: 'sha' }, h('code', null, img.sha256 || ''))));
    this.manifestBox.replaceChildren(
      facts([
        ['Build version', m.build_version],
        ['Security counter', m.security_counter !== undefined ? String(m.security_counter) : ''],
        ['Minimum bootloader', m.min_bootloader],
        ['Hardware variants', hw.length ? h('ul', { class: 'chips' }, hw.map((x) => h('li', null, String(x)))) : ''],
        ['Built', m.built_at],
        ['Built by', Array.isArray(m.builders) ? m.builders.join(', ') : ''],
        ['Git', [git.repo, git.ref, git.commit].filter(Boolean).join(' · ')],
        ['Key id', m.key_id ? h('code', { class: 'wrap' }, m.key_id) : ''],
      ]),
      h('h3', null, 'Images'),
      images.length
        ? tableWrap(table(['Hardware', 'Image', { text: 'Type', class: 'opt' }, { text: 'Size', class: 'num' }, 'sha256'], rows, 'images'), 'Images')
        : h('p', { class: 'empty' }, 'No images.'),
      h('details', null, h('summary', null, 'manifest.json'), h('pre', { class: 'json' }, JSON.stringify(m, null, 2))));
  }

  wants(ev) {
    return (ev.kind || '').startsWith('release') || ev.kind === 'artifact.expired' ||
      rolloutEventFor(ev, this.id, this.runId);
  }

  destroy() {
    this.rollout.destroy();
  }
}

// release.js - #/releases/ID : a signed release: its rollout (stages and
// steps, fleet, gate charts, verdicts, audit log and actions; rollout.js),
// its verification (GET /api/v1/releases/ID/verification: the chain from
// commit to images, each link with its check, done by the daemon with its
// published keys — `otactl verify ID --key PUB.pem` is the offline check),
// its manifest (release/manifest.json, fetched as an artifact and shown
// both as tables and as the raw JSON) and its artifacts.

import { getJSON } from './api.js';
import { RolloutPanel, rolloutEventFor } from './rollout.js';
import { artifactTable } from './run.js';
import { facts, fmtBytes, fmtTime, h, replaceKeepingFocus, shortId, table, tableWrap } from './util.js';

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
    this.verifyBox = h('div', { class: 'verification' });
    this.artsBox = h('div');
    this.crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '#/' }, 'Runs'), ' › ', 'release ' + this.id);
    this.ctx.main.replaceChildren(this.crumbs, this.head, this.rollout.box,
      h('section', { 'aria-labelledby': 'ver-h' }, h('h2', { id: 'ver-h' }, 'Verification'), this.verifyBox),
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
        if (this.ctx.alive) await this.verify(m);
      } catch (e) {
        this.manifestFor = 0;
        this.manifestBox.replaceChildren(h('p', { class: 'empty' }, 'The manifest could not be read: ' + e.message));
      }
    } else if (!rel.manifest_artifact) {
      this.manifestBox.replaceChildren(h('p', { class: 'empty' }, 'This release has no manifest.'));
    }
  }

  // The daemon checks the release once per visit (it reads every image);
  // "Check again" repeats it.
  async verify(m) {
    this.verifyBox.replaceChildren(h('p', { class: 'muted' }, 'Checking signatures and digests…'));
    let v;
    try {
      v = await getJSON('/api/v1/releases/' + this.id + '/verification');
    } catch (e) {
      this.verifyBox.replaceChildren(h('p', { class: 'report-bad' }, 'The verification could not be run: ' + e.message));
      return;
    }
    if (!this.ctx.alive) return;
    const again = h('button', { type: 'button', class: 'small', 'data-key': 'verify-again' }, 'Check again');
    again.addEventListener('click', () => this.verify(m));
    const checks = v.checks || [];
    const of = (step, name) => checks.filter((c) => c.step === step && (name === undefined || c.name === name));
    const state = (list) => (!list.length ? 'unchecked' : list.every((c) => c.ok) ? 'ok' : 'failed');
    // "info": a link of the chain that is shown, not checked (the build run)
    const mark = (st) => (st === 'info' ? null
      : h('span', { class: 'chk chk-' + st }, st === 'ok' ? '✓ verified' : st === 'failed' ? '✗ FAILED' : '– not checked'));
    const git = m.git || {};
    const images = Array.isArray(m.images) ? m.images : [];
    const link = (st, title, ...detail) => h('li', { 'data-step': title.toLowerCase(), 'data-state': st },
      h('div', { class: 'chain-head' }, h('strong', null, title), ' ', mark(st)), h('div', { class: 'chain-detail' }, ...detail));
    this.verifyBox.replaceChildren(
      h('p', { class: v.ok ? 'report-ok' : 'report-bad', 'data-verified': v.ok ? 'yes' : 'no' },
        v.ok ? 'Verified: every signature and digest checks out with the daemon\'s published keys.'
          : 'Does NOT verify: see the failed checks below.', ' ', again),
      h('ol', { class: 'chain', 'aria-label': 'From commit to images' },
        link(state(of('commit')), 'Commit', git.commit ? h('code', { title: git.commit }, shortId(git.commit, 12)) : 'no repository',
          git.tree ? ' tree ' : '', git.tree ? h('code', { title: git.tree }, shortId(git.tree, 12)) : '',
          git.repo ? ' in ' + git.repo : '', git.ref ? ' (' + git.ref + ')' : ''),
        link('info', 'Build', h('a', { href: '#/runs/' + this.runId }, 'run #' + this.runId),
          Array.isArray(m.builders) && m.builders.length ? ' on ' + m.builders.join(', ') : ''),
        link(state(of('image')), 'Images', h('ul', { class: 'chain-images' }, images.map((img) => {
          const st = state(of('image', img.name));
          return h('li', { 'data-image': img.name, 'data-state': st }, mark(st), ' ', img.name || '', ' ',
            h('code', { title: img.sha256 || '' }, shortId(img.sha256 || '', 16)));
        }))),
        link(state(of('manifest')), 'Manifest', 'security counter ' + m.security_counter + ', signed by key ',
          h('code', { title: m.key_id || '' }, shortId(m.key_id || '', 16))),
        link(state(of('provenance')), 'Provenance', 'SLSA v1, subjects: the images and the manifest')),
      tableWrap(table(['', 'Check'], checks.map((c) => h('tr', { class: c.ok ? 'row-passed' : 'row-failed', 'data-check': c.step },
        h('td', null, c.ok ? 'ok' : 'FAIL'), h('td', null, c.text))), 'checks'), 'Checks'));
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

// test.mjs - the status page in a real browser against the real daemon.
//
// Starts $OTACD_BIN/otacd on loopback (two local agents, a file signing key,
// a viewer token, --time-scale 3600 so an hour of holds takes a second) and
// $OTACD_BIN/otacd-fleetsim (500 simulated devices, 300 with OTACD_SLOW=1), drives Debian's
// headless Chromium with playwright-core, and checks what a person would
// see: runs appearing live, the stage graph, test/HIL/analysis results, logs streaming with colours and
// without markup injection, 100k lines staying responsive, a rollout
// advancing with its gate charts, actions (promote, resume, cancel) from the
// page with an admin token and their audit entries, no actions for a viewer
// and forged requests refused, recovery from a daemon restart, the token
// form, releases, agents, phone layout and keyboard use.  Screenshots of
// every view go to $OTACD_TEST_OUT (default /tmp/otacd-web-shots).
//
//   cd tests/web && npm ci && OTACD_BIN=../../build/bin node test.mjs
//
// Ends with "N passed, M failed"; exits non-zero on any failure.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = path.resolve(process.env.OTACD_BIN || path.join(here, '../../build/bin'));
const OUT = path.resolve(process.env.OTACD_TEST_OUT || '/tmp/otacd-web-shots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// OTACD_SLOW=1 (set by `make asan`): the daemon and the simulator are
// sanitizer builds, several times slower, on a busy machine.  Every wait is
// then SLOW times longer and the fleet smaller; what is checked is the same.
const SLOW = process.env.OTACD_SLOW === '1' ? 3 : 1;
const T = (ms) => ms * SLOW;
const DEADLINE_MS = Number(process.env.OTACD_WEB_DEADLINE_MS || T(240000));
const T0 = Date.now();

const state = fs.mkdtempSync(path.join(os.tmpdir(), 'otacd-web-'));
const VIEWER = crypto.randomBytes(16).toString('hex');
let daemon = null;
const groups = [];       // process groups of every otacd started (it and its children)
let fleet = null;
let browser = null;
let url = '';
let listen = '127.0.0.1:0';
let deviceListen = '127.0.0.1:0';
let deviceURL = '';
const TIME_SCALE = '3600';
// the canary's 10 % must be enough devices for the gates to decide (with 20
// they stay inconclusive); fewer connections for a sanitizer build
const DEVICES = SLOW > 1 ? '300' : '500';
let admin = '';
const results = [];
const problems = [];     // page errors, CSP violations, dialogs: each fails the run at the end
let dialogs = 0;

function log(...a) {
  console.log(`[${((Date.now() - T0) / 1000).toFixed(1)}s]`, ...a);
}

// ---- the daemon ---------------------------------------------------------------

function writeConfig() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  fs.writeFileSync(path.join(state, 'web-key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  fs.writeFileSync(path.join(state, 'web-key.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
  fs.writeFileSync(path.join(state, 'web-config.yml'),
    `keys:\n  demo: { spec: ${path.join(state, 'web-key.pem')} }\n` +
    `tokens:\n  - { name: status-page, role: viewer, token: "${VIEWER}" }\n`);
}

async function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function startDaemon() {
  const urlFile = path.join(state, 'otacd.url');
  fs.rmSync(urlFile, { force: true });
  url = '';
  const err = fs.openSync(path.join(state, 'otacd.log'), 'a');
  // its own process group, so that cleanup() can end everything it started
  daemon = spawn(path.join(BIN, 'otacd'), ['--state-dir', state, '--listen', listen, '--device-listen', deviceListen, '--local-agents', '2',
    '--time-scale', TIME_SCALE, '--config', path.join(state, 'web-config.yml')], { stdio: ['ignore', 'ignore', err], detached: true });
  fs.closeSync(err);
  let exited = null;
  daemon.once('exit', (code, sig) => { exited = code ?? sig; });
  groups.push(daemon.pid);
  // otacd may wait up to 15 s for the state directory's lock after a kill
  const until = Date.now() + T(30000);
  for (;;) {
    if (exited !== null) throw new Error('otacd exited (' + exited + '): ' + tail());
    if (fs.existsSync(urlFile)) {
      const u = fs.readFileSync(urlFile, 'utf8').trim();
      try {
        const r = await fetch(u + '/api/v1/health', { signal: AbortSignal.timeout(5000) });
        if (r.ok) { url = u; break; }
      } catch { /* not yet */ }
    }
    if (Date.now() > until) throw new Error('otacd did not answer on ' + urlFile + ' in ' + T(30000) + ' ms: ' + tail());
    await sleep(50);
  }
  admin = fs.readFileSync(path.join(state, 'admin.token'), 'utf8').trim();
  listen = new URL(url).host;
  // the same ports after a restart, so the page and the fleet find it again
  deviceURL = fs.readFileSync(path.join(state, 'otacd-device.url'), 'utf8').trim();
  deviceListen = new URL(deviceURL).host;
}

// The simulated fleet: devices of product "fw" checking in with otacd's
// built-in update server, verifying images with the test's public key.
function startFleet() {
  const out = fs.openSync(path.join(state, 'fleetsim.log'), 'a');
  fleet = spawn(path.join(BIN, 'otacd-fleetsim'), ['--url', deviceURL, '--devices', DEVICES, '--seed', '7',
    '--key', path.join(state, 'web-key.pub'), '--fleet-key', '@' + path.join(state, 'fleet.key'), '--product', 'fw',
    '--duration', '600', '--quiet'], { stdio: ['ignore', out, out] });
  fs.closeSync(out);
}

async function stopFleet() {
  if (!fleet || fleet.exitCode !== null || fleet.signalCode) return;
  const p = new Promise((r) => fleet.once('exit', r));
  fleet.kill('SIGTERM');
  await Promise.race([p, sleep(12000)]);
  if (fleet.exitCode === null && !fleet.signalCode) fleet.kill('SIGKILL');
}

async function stopDaemon(signal = 'SIGKILL') {
  if (!daemon || daemon.exitCode !== null || daemon.signalCode) return;
  const p = new Promise((r) => daemon.once('exit', r));
  daemon.kill(signal);
  await Promise.race([p, sleep(10000)]);
}

// A browser context whose waits (navigation, locators) default to T(30 s).
async function newContext(opts) {
  const c = await browser.newContext(opts);
  c.setDefaultTimeout(T(30000));
  return c;
}

function tail() {
  try {
    return fs.readFileSync(path.join(state, 'otacd.log'), 'utf8').split('\n').slice(-25).join('\n');
  } catch { return '(no daemon log)'; }
}

async function api(method, p, body) {
  const r = await fetch(url + p, {
    method,
    headers: { Authorization: 'Bearer ' + admin, 'Content-Type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${p}: HTTP ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function trigger(yaml, file, ref) {
  const r = await api('POST', '/api/v1/runs', { pipeline: yaml, file, ref });
  return r.id;
}

async function waitRun(id, ms = T(30000)) {
  const until = Date.now() + ms;
  for (;;) {
    const run = await api('GET', '/api/v1/runs/' + id);
    if (['passed', 'failed', 'canceled', 'skipped'].includes(run.state)) return run;
    if (Date.now() > until) throw new Error(`run ${id} still ${run.state}`);
    await sleep(200);
  }
}

async function waitRelease(runId, ms = T(60000)) {
  const until = Date.now() + ms;
  for (;;) {
    const rel = (await api('GET', '/api/v1/releases')).find((r) => r.run_id === runId);
    if (rel) return rel;
    const run = await api('GET', '/api/v1/runs/' + runId);
    if (['failed', 'canceled'].includes(run.state)) throw new Error(`run ${runId} ${run.state} without a release: ${run.error || ''}`);
    if (Date.now() > until) throw new Error(`no release from run ${runId} (${run.state})`);
    await sleep(200);
  }
}

async function rolloutOf(release) {
  return api('GET', '/api/v1/releases/' + release + '/rollout');
}

function jobOf(run, stage) {
  const st = run.stages.find((s) => s.name === stage);
  if (!st || !st.jobs.length) throw new Error('no stage ' + stage + ' in run ' + run.id);
  return st.jobs[0];
}

// ---- the pipelines --------------------------------------------------------------

const WEB_DEMO = `name: web-demo
stages:
  - name: slow
    steps:
      - run: for i in $(seq 1 20); do echo line $i; sleep 0.2; done
  - name: after
    needs: [slow]
    matrix:
      board: [mps2-an385, mps2-an386]
    steps:
      - run: echo "after slow on \${{ matrix.board }}"
  - name: colours
    steps:
      - run: |
          echo '<script>alert(1)</script>'
          printf '\\033[31mred text\\033[0m plain \\033[1;32mbold green\\033[0m\\n'
  - name: bulk
    steps:
      - run: seq 1 100000 | sed 's/^/row /'
`;

const AFTER_RESTART = `name: after-restart
stages:
  - name: hello
    steps:
      - run: echo back again
`;

const TICKS = `name: ticks
stages:
  - name: tick
    steps:
      - run: for i in $(seq 1 30); do echo tick $i; sleep 0.2; done
`;

// Test, HIL and analysis stages whose reports the run page shows; a
// failure message carries markup, which must stay text.
const CHECKED = `name: checked
stages:
  - name: unit
    kind: test
    steps:
      - run: |
          mkdir -p out
          cat > out/unit.xml <<'EOF'
          <testsuite name="unit"><testcase classname="crc" name="matches"/><testcase classname="crc" name="breaks"><failure message="expected &lt;script&gt;alert(3)&lt;/script&gt;">got 0x29b2</failure></testcase><testcase classname="ring" name="wraps"/></testsuite>
          EOF
    reports: { junit: out/unit.xml }
  - name: lint
    kind: analysis
    thresholds: { error: 5 }
    steps:
      - run: |
          mkdir -p out
          cat > out/cppcheck.xml <<'EOF'
          <?xml version="1.0"?><results version="2"><cppcheck version="2.10"/><errors><error id="arrayIndexOutOfBounds" severity="error" msg="Array 'buf[4]' accessed at index 4"><location file="src/ring.c" line="12" column="3"/></error><error id="unusedVariable" severity="style" msg="Unused variable: n"><location file="src/crc.c" line="40"/></error></errors></results>
          EOF
    reports: { cppcheck: out/cppcheck.xml }
  - name: quality
    kind: analysis
    metrics: { complexity_max: 50 }
    steps:
      - run: |
          mkdir -p out
          printf '3\\t3\\t5\\t1\\t8\\tsrc/a.c(1): f\\n12\\t12\\t20\\t10\\t30\\tsrc/b.c(10): g\\n' > out/pmccabe.txt
    reports: { pmccabe: out/pmccabe.txt }
  - name: rig
    kind: hil
    steps:
      - run: |
          mkdir -p out
          echo '<testsuite name="hil"><testcase classname="uart" name="banner"/><testcase classname="uart" name="crc_frames"/></testsuite>' > out/hil.xml
    reports: { junit: out/hil.xml }
`;

// A release of product "fw" walked through the simulated fleet: a canary of
// two steps (the first holds 20 otacd hours = 20 s, so the page sees it
// advance; the second 30 days, so the test promotes past it), then a
// production stage that waits for approval.  The commit-message-like step
// name carries markup to check escaping in the gate and audit views too.
const FW = `name: fw
stages:
  - name: build
    matrix: { board: [mps2-an385, mps2-an386] }
    steps:
      - run: "printf 'fw 1.1.0 %s' '\${{ matrix.board }}' > app.bin && head -c 3000 /dev/zero >> app.bin"
    artifacts:
      - { path: app.bin, name: 'app-\${{ matrix.board }}.bin', type: application, hardware: '\${{ matrix.board }}' }
  - { name: release, kind: release, needs: [build], version: "1.1.0", security_counter: 1, key: demo }
  - name: canary
    kind: rollout
    needs: [release]
    steps: [ { percent: 10, hold: 20h }, { percent: 30, hold: 30d } ]
    gates: [crash_free, boots]
  - name: production
    kind: rollout
    needs: [canary]
    approval: required
    steps: [ { percent: 100, hold: 30d } ]
    gates: [crash_free, boots]
gates:
  crash_free: { metric: crash_rate, max: 0.3, min_devices: 10 }
  boots: { metric: boot_success_rate, min: 0.7, min_devices: 10 }
`;

// ---- the checks -------------------------------------------------------------------

async function step(name, fn, page) {
  const t = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    log('ok  ', name, `(${Date.now() - t} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    log('FAIL', name + ':', e && e.stack ? e.stack : e);
    if (page) {
      try { await page.screenshot({ path: path.join(OUT, 'FAIL-' + name.replace(/\W+/g, '-') + '.png'), fullPage: true }); } catch { /* closed */ }
    }
  }
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

function watch(page, label) {
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) problems.push(`${label}: CSP violation: ${m.text()}`);
  });
  page.on('dialog', async (d) => {
    dialogs++;
    problems.push(`${label}: a dialog opened: ${d.message()}`);
    await d.dismiss().catch(() => {});
  });
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(OUT, name + '.png'), fullPage: true });
}

async function logLine(page, re, ms = T(10000)) {
  await page.locator('.log-line .lt', { hasText: re }).first().waitFor({ timeout: ms });
}

async function hasLine(page, re) {
  return (await page.locator('.log-line .lt', { hasText: re }).count()) > 0;
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  for (const f of fs.readdirSync(OUT)) if (f.endsWith('.png')) fs.rmSync(path.join(OUT, f));
  assert(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  writeConfig();
  await startDaemon();
  startFleet();
  log('otacd at', url, 'devices at', deviceURL, 'state', state);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run', '--disable-sync', '--disable-dev-shm-usage'],
  });
  const ctx = await newContext({ viewport: { width: 1280, height: 860 }, acceptDownloads: true });
  const page = watch(await ctx.newPage(), 'overview');
  let runA = 0, slowJob = 0, coloursJob = 0, bulkJob = 0;

  await step('token from the address is kept and removed from it', async () => {
    await page.goto(`${url}/#token=${VIEWER}`);
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: T(10000) });
    await page.locator('.runs-box .empty, .runs-box table').first().waitFor();
    assert(!page.url().includes('token='), 'the token is still in the address: ' + page.url());
    assert(await page.evaluate(() => localStorage.getItem('otacd-token')) === VIEWER, 'token not in localStorage');
  }, page);

  await step('overview shows a new run without a reload', async () => {
    await page.evaluate(() => { window.__noReload = 1; });
    runA = await trigger(WEB_DEMO, 'web-demo.yml', 'refs/heads/feature/<i>x</i>');
    const row = page.locator(`tr[data-run-id="${runA}"]`);
    await row.waitFor({ timeout: T(10000) });
    assert(await page.evaluate(() => window.__noReload) === 1, 'the page was reloaded');
    const ref = await row.locator('td.ref').textContent();
    assert(ref === 'feature/<i>x</i>', 'the ref is not shown as text: ' + ref);
    assert(await row.locator('i').count() === 0, 'markup from the ref became an element');
  }, page);

  const run = await api('GET', '/api/v1/runs/' + runA);
  slowJob = jobOf(run, 'slow').id;
  coloursJob = jobOf(run, 'colours').id;
  bulkJob = jobOf(run, 'bulk').id;

  // the log page is opened at once, while the slow job prints
  const logPage = watch(await ctx.newPage(), 'log');
  await step('log streams lines as the job prints them', async () => {
    await logPage.goto(`${url}/#/jobs/${slowJob}/log`);
    await logLine(logPage, /^line 3$/);
    const t3 = Date.now();
    assert(!(await hasLine(logPage, /^line 15$/)), 'line 15 was already there with line 3 (not streaming)');
    await logLine(logPage, /^line 15$/);
    const t15 = Date.now();
    const ended = await logPage.locator('#log-stream').textContent();
    assert(!(await hasLine(logPage, /^line 20$/)) && !/ended/.test(ended), 'the job had ended by line 15: ' + ended);
    // (no wall-clock bound between the two: on a loaded machine the page may
    // see line 3 late; that line 15 was absent then and the job still
    // running at line 15 is what shows the lines arrived as printed)
    log(`line 15 came ${t15 - t3} ms after line 3`);
    await shot(logPage, '03-log-streaming');
    await logLine(logPage, /^line 20$/);
    await logPage.locator('#log-stream', { hasText: 'ended: passed' }).waitFor({ timeout: T(10000) });
    await logPage.locator('.job-head .badge', { hasText: 'passed' }).waitFor({ timeout: T(5000) });
  }, logPage);

  await step('clicking a line number links to that line', async () => {
    await logPage.locator('.log-line#L3 a.ln').click();
    await logPage.waitForFunction((id) => location.hash === `#/jobs/${id}/log/L3`, slowJob);
    await logPage.locator('.log-line.sel#L3').waitFor({ timeout: T(3000) });
  }, logPage);

  await step('run page draws the stage graph and updates it live', async () => {
    await page.bringToFront();
    await page.locator(`tr[data-run-id="${runA}"] a`).first().click();
    await page.locator('svg.dag').waitFor();
    const stages = await page.locator('svg.dag g.stage').count();
    assert(stages === 4, `expected 4 stage boxes, saw ${stages}`);
    const edges = await page.locator('svg.dag path.edge').count();
    assert(edges === 1, `expected 1 edge, saw ${edges}`);
    assert(await page.locator('svg.dag path.edge[data-from="slow"][data-to="after"]').count() === 1, 'no edge slow -> after');
    const after = page.locator('svg.dag g.stage[data-stage="after"]');
    assert(await after.locator('a.job').count() === 2, 'the matrix stage should list 2 jobs');
    const x = async (name) => (await page.locator(`svg.dag g.stage[data-stage="${name}"]`).boundingBox()).x;
    assert(await x('after') > await x('slow'), 'a stage is not right of what it needs');
    // the run page follows the run: "after" passes without a reload, its
    // box updated in place (the same element, not a new graph each time)
    const box = await page.locator('svg.dag g.stage[data-stage="slow"]').elementHandle();
    await page.locator('svg.dag g.stage[data-stage="after"][data-state="passed"]').waitFor({ timeout: T(20000) });
    await page.locator('.run-head .badge', { hasText: 'passed' }).waitFor({ timeout: T(20000) });
    assert(await box.evaluate((e) => e.isConnected), 'the graph was redrawn as new elements, not updated');
    await box.dispose();
    assert(await page.evaluate(() => window.__noReload) === 1, 'the page was reloaded');
    await shot(page, '02-run-demo');
  }, page);

  await step('stage graph links are reachable with the keyboard', async () => {
    await page.evaluate(() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); });
    let found = false;
    for (let i = 0; i < 40 && !found; i++) {
      await page.keyboard.press('Tab');
      found = await page.evaluate(() => !!document.activeElement && document.activeElement.matches('svg.dag a.job'));
    }
    assert(found, 'Tab never reached a job in the graph');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement.querySelector('.hit')).stroke);
    assert(outline && outline !== 'none', 'no visible focus on the graph link');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => /^#\/jobs\/\d+\/log$/.test(location.hash));
    await page.locator('.log').waitFor();
  }, page);

  await step('script in a log is text and ANSI colours are styled spans', async () => {
    await page.goto(`${url}/#/jobs/${coloursJob}/log`);
    await logLine(page, /^<script>alert\(1\)<\/script>$/);
    assert(await page.locator('.log script, main script').count() === 0, 'a <script> element is in the log');
    const red = page.locator('.log .a-fg1', { hasText: 'red text' });
    await red.waitFor();
    assert(await red.evaluate((e) => getComputedStyle(e).color) === 'rgb(255, 123, 114)', 'red text is not red');
    const green = page.locator('.log .a-fg2.a-b', { hasText: 'bold green' });
    await green.waitFor();
    assert(await green.evaluate((e) => getComputedStyle(e).fontWeight) === '700', 'bold green is not bold');
    assert(!(await page.locator('.log').textContent()).includes('\x1b'), 'raw escape codes in the log');
    await page.waitForTimeout(300);
    assert(dialogs === 0, 'a dialog was opened');
    await shot(page, '04-log-colours');
  }, page);

  await step('100k log lines render quickly and stay virtualised', async () => {
    await waitRun(runA);
    await page.evaluate(() => {
      window.__longest = 0;
      new PerformanceObserver((l) => {
        for (const e of l.getEntries()) window.__longest = Math.max(window.__longest, e.duration);
      }).observe({ type: 'longtask', buffered: false });
    });
    // the meter works: a deliberate 150 ms block is seen
    await page.evaluate(() => new Promise((r) => setTimeout(() => {
      const t = performance.now();
      while (performance.now() - t < 150) { /* block */ }
      setTimeout(r, 100);
    }, 0)));
    await page.waitForFunction(() => window.__longest >= 140, null, { timeout: T(2000) });
    await page.evaluate(() => { window.__longest = 0; });
    // the log has the agent's echo of the command first: count from the API
    const text = await (await fetch(`${url}/api/v1/jobs/${bulkJob}/log`, { headers: { Authorization: 'Bearer ' + admin } })).text();
    const lines = text.split('\n');
    if (lines[lines.length - 1] === '') lines.pop();
    assert(lines.length >= 100000, `the bulk log has only ${lines.length} lines`);
    const n50k = lines.indexOf('row 50000') + 1;
    const t = Date.now();
    await page.evaluate((id) => { location.hash = `#/jobs/${id}/log`; }, bulkJob);
    await page.waitForFunction((n) => {
      const l = document.querySelector('.log');
      return l && l.dataset.lines === String(n) && l.dataset.busy === '0';
    }, lines.length, { timeout: T(20000) });
    const took = Date.now() - t;
    const longest = await page.evaluate(() => window.__longest);
    log(`     ${lines.length} lines shown in ${took} ms, longest task ${Math.round(longest)} ms`);
    await logLine(page, /^row 100000$/, T(5000));
    const nodes = await page.locator('.log-line').count();
    assert(nodes < 400, `${nodes} line elements in the DOM (not virtualised)`);
    assert(longest < 1500, `the page was blocked for ${Math.round(longest)} ms`);
    // a line anchor scrolls to and marks its line
    await page.evaluate(([id, n]) => { location.hash = `#/jobs/${id}/log/L${n}`; }, [bulkJob, n50k]);
    await page.locator(`.log-line.sel#L${n50k} .lt`, { hasText: /^row 50000$/ }).waitFor({ timeout: T(5000) });
    assert(await page.locator(`.log-line#L${n50k}`).isVisible(), 'line 50000 is not in view');
    await shot(page, '05-log-100k');
    // opening the address of a line directly works too
    await page.goto(`${url}/#/jobs/${bulkJob}/log/L${n50k + 49990}`);
    await page.locator(`.log-line.sel#L${n50k + 49990} .lt`, { hasText: /^row 99990$/ }).waitFor({ timeout: T(20000) });
  }, page);

  let relRun = 0;
  await step('release page shows the manifest and downloads an image', async () => {
    const yaml = fs.readFileSync(path.join(here, '../../pipelines/hello-release.yml'), 'utf8');
    relRun = await trigger(yaml, 'hello-release.yml', 'refs/tags/v0.1.7');
    // the run goes on into its soak and canary stages: wait for the release only
    const rel = await waitRelease(relRun);
    const detail = await api('GET', '/api/v1/releases/' + rel.id);
    await page.goto(`${url}/#/`);
    await page.locator(`tr[data-release-id="${rel.id}"] a`).first().click();
    await page.locator('.chips li', { hasText: 'mps2-an385' }).waitFor();
    assert(await page.locator('.chips li', { hasText: 'mps2-an386' }).count() === 1, 'hardware variant mps2-an386 missing');
    const img = detail.artifacts.find((a) => a.hardware === 'mps2-an385');
    await page.locator('table.images td.sha', { hasText: img.sha256 }).waitFor();
    assert((await page.locator('main').textContent()).includes(rel.key_id), 'key id not shown');
    const [dl] = await Promise.all([
      page.waitForEvent('download'),
      page.locator(`table.artifacts button[data-artifact="${img.id}"]`).click(),
    ]);
    const file = await dl.path();
    const sha = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    assert(sha === img.sha256, 'downloaded bytes have sha256 ' + sha);
    assert(dl.suggestedFilename() === path.basename(img.name), 'download named ' + dl.suggestedFilename());
    // verification: the chain from commit to images, every link checked
    await page.locator('.verification p[data-verified="yes"]').waitFor({ timeout: T(15000) });
    assert(await page.locator(`ol.chain > li[data-step="build"] .chk`).count() === 0, "the build run is shown as checked");
    for (const link of ['images', 'manifest', 'provenance'])
      assert(await page.locator(`ol.chain > li[data-step="${link}"][data-state="ok"]`).count() === 1, link + ' is not shown verified');
    const manifest = await api('GET', '/api/v1/artifacts/' + detail.manifest_artifact);
    const verified = await page.locator('ol.chain ul.chain-images li[data-state="ok"]').count();
    assert(manifest.images.length >= 2 && verified === manifest.images.length,
      `${verified} of the manifest's ${manifest.images.length} images shown verified`);
    assert(await page.locator('table.checks tr.row-failed').count() === 0, 'a check failed on a good release');
    await page.locator('details summary', { hasText: 'manifest.json' }).click();
    await shot(page, '09-release');
    // its run: edges that skip a column (build -> release) are drawn too
    await page.goto(`${url}/#/runs/${relRun}`);
    await page.locator('svg.dag path.edge[data-from="build"][data-to="release"]').waitFor();
    assert(await page.locator('svg.dag path.edge[data-from="release"][data-to="staging"]').count() === 1, 'no edge release -> staging');
    await shot(page, '02-run-release');
  }, page);


  await step('overview screenshot', async () => {
    await page.goto(`${url}/#/`);
    await page.locator(`tr[data-run-id="${relRun}"]`).waitFor();
    await shot(page, '01-overview');
  }, page);

  await step('overview filters and pages through older runs', async () => {
    await page.goto(`${url}/#/?pipeline=hello`);
    await page.locator(`tr[data-run-id="${runA}"]`).waitFor({ state: 'detached' });
    await page.locator(`tr[data-run-id="${relRun}"]`).waitFor();
    assert(await page.locator('tr.run-row').count() === 1, 'the pipeline filter let other runs through');
    assert(await page.locator('form.filters input[name="pipeline"]').inputValue() === 'hello', 'filter not shown in the form');
    // the form writes the address
    await page.locator('form.filters input[name="pipeline"]').fill('');
    await page.locator('form.filters select[name="state"]').selectOption('passed');
    await page.locator('form.filters button[type="submit"]').click();
    await page.waitForFunction(() => location.hash === '#/?state=passed');
    await page.locator(`tr[data-run-id="${runA}"]`).waitFor();
    // pages of one run: newest first, "older" follows next_before
    await page.goto(`${url}/#/?limit=1`);
    await page.locator(`tr[data-run-id="${runA}"]`).waitFor({ state: 'detached' });
    await page.locator(`tr[data-run-id="${relRun}"]`).waitFor();
    await page.locator('nav.pager a', { hasText: 'Older' }).click();
    await page.locator(`tr[data-run-id="${runA}"]`).waitFor();
    assert(await page.locator('tr.run-row').count() === 1, 'a page of 1 shows more rows');
    await page.locator('nav.pager a', { hasText: 'Newest' }).click();
    await page.locator(`tr[data-run-id="${relRun}"]`).waitFor();
  }, page);

  await step('agents page lists the agents and shows a rig busy, then free', async () => {
    // a HIL rig: an agent of its own (registered, with its own token) with the board's labels
    const reg = await api('POST', '/api/v1/agents', { name: 'rig-an385', labels: ['hil', 'board=mps2-an385'] });
    const rigLog = fs.openSync(path.join(state, 'rig.log'), 'a');
    const rig = spawn(path.join(BIN, 'otacd-agent'), ['--url', url, '--name', 'rig-an385', '--labels', 'hil,board=mps2-an385',
      '--workdir', path.join(state, 'rig-work')], { stdio: ['ignore', rigLog, rigLog], detached: true,
      env: { ...process.env, OTACD_AGENT_TOKEN: reg.token } });
    fs.closeSync(rigLog);
    groups.push(rig.pid);
    await page.goto(`${url}/#/agents`);
    await page.locator('tr[data-agent="local-1"]').waitFor();
    await page.locator('tr[data-agent="local-2"]').waitFor();
    assert(await page.locator('tr[data-agent="local-1"] .chips li', { hasText: 'local' }).count() === 1, 'labels missing');
    await page.locator('.rigs li[data-rig="rig-an385"][data-state="idle"]', { hasText: 'free' }).waitFor({ timeout: T(15000) });
    assert(await page.locator('.rigs li[data-rig="local-1"]').count() === 0, 'a local agent is listed as a rig');
    const id = await trigger(`name: on-rig
stages:
  - name: hil
    agent: { labels: [hil, board=mps2-an385] }
    steps: [ { run: 'sleep 3' } ]
`, 'on-rig.yml', 'refs/heads/main');
    const busy = page.locator('.rigs li[data-rig="rig-an385"][data-state="busy"]');
    await busy.waitFor({ timeout: T(15000) });
    assert((await page.locator('#rigs-h').textContent()).startsWith('HIL rigs: 1 busy, 0 free'), 'rig counts: ' + await page.locator('#rigs-h').textContent());
    const job = jobOf(await api('GET', '/api/v1/runs/' + id), 'hil').id;
    assert(await busy.locator(`a[href="#/jobs/${job}/log"]`).count() === 1, 'the busy rig does not link its job');
    await shot(page, '10-agents');
    await waitRun(id);
    await page.locator('.rigs li[data-rig="rig-an385"][data-state="idle"]').waitFor({ timeout: T(15000) });
    // the rig leaves, so that the later steps' jobs run on the local agents
    try { process.kill(-rig.pid, 'SIGTERM'); } catch { /* gone */ }
  }, page);

  // ---- rollouts ----------------------------------------------------------------
  let fwRun = 0, fwRel = 0;
  const opPage = watch(await (await newContext({ viewport: { width: 1280, height: 900 } })).newPage(), 'operator');
  await step('a rollout advances on the release page without a reload', async () => {
    fwRun = await trigger(FW, 'fw.yml', 'refs/heads/main');
    fwRel = (await waitRelease(fwRun)).id;
    await page.goto(`${url}/#/releases/${fwRel}`);
    await page.locator('.rollout-stage[data-stage="canary"]').waitFor({ timeout: T(20000) });
    await page.evaluate(() => { window.__noReload = 3; });
    const ro = (await rolloutOf(fwRel)).rollouts[0];
    assert(ro && ro.step === 0, 'the canary is already past its first step: ' + JSON.stringify(ro));
    // the current step is marked and its hold counts down in otacd time
    await page.locator('.rollout-stage[data-stage="canary"] li.step.current[data-step="0"]').waitFor();
    const cd = page.locator('.rollout-stage[data-stage="canary"] .countdown').first();
    const c1 = await cd.textContent();
    await page.waitForFunction(([sel, was]) => {
      const el = document.querySelector(sel);
      return el && el.textContent !== was;
    }, ['.rollout-stage[data-stage="canary"] .countdown', c1], { timeout: T(5000) });
    await shot(page, '14-rollout-step1');
    // devices take it, gates pass after the hold: the page moves to step 2 by itself
    await page.locator('.rollout-stage[data-stage="canary"][data-step="1"] li.step.current[data-step="1"]').waitFor({ timeout: T(90000) });
    await page.locator('.rollout-stage[data-stage="canary"] li.step.done[data-step="0"]').waitFor();
    assert(await page.evaluate(() => window.__noReload) === 3, 'the page was reloaded');
    // fleet counters from the devices' reports
    await page.waitForFunction(() => {
      const dd = document.querySelector('[data-kpi="Offered"] dd');
      return dd && Number(dd.textContent) > 0;
    }, null, { timeout: T(20000) });
    assert(await page.locator('table.versions tr[data-version="1.1.0"]').count() === 1, 'no devices-per-version row for 1.1.0');
  }, page);

  await step('gate charts draw the metric, its band and threshold', async () => {
    for (const g of ['crash_free', 'boots']) {
      const chart = page.locator(`svg.gate-chart[data-gate="${g}"]`);
      await chart.waitFor();
      await page.waitForFunction((name) => document.querySelectorAll(`svg.gate-chart[data-gate="${name}"] circle.pt`).length > 0, g, { timeout: T(10000) });
      assert(await chart.locator('path.band').count() === 1, g + ': no confidence band');
      assert(await chart.locator('path.estimate').count() === 1, g + ': no estimate line');
      assert(await chart.locator('line.threshold').count() === 1, g + ': no threshold line');
    }
    assert(await page.locator('svg.gate-chart[data-gate="crash_free"] .threshold-label', { hasText: 'max 0.3' }).count() === 1, 'crash_free threshold label');
    assert(await page.locator('table.verdicts tbody tr').count() > 0, 'the verdict history is empty');
    assert(await page.locator('table.verdicts .badge[data-state="pass"]').count() > 0, 'no passing verdict in the history');
    await shot(page, '15-rollout-gates');
  }, page);

  await step('a viewer sees no action buttons and forged actions are refused', async () => {
    assert(await page.locator('.actions button').count() === 0, 'the viewer sees action buttons');
    const codes = await page.evaluate(async ([rel, viewer]) => {
      const post = async (hdrs) => (await fetch(`/api/v1/releases/${rel}/promote`, { method: 'POST',
        headers: { 'Content-Type': 'application/json', ...hdrs }, body: JSON.stringify({ reason: 'forged', skip_step: true }) })).status;
      return [await post({ Authorization: 'Bearer ' + viewer }), await post({}),
        await post({ Authorization: 'Bearer not-a-token-at-all' })];
    }, [fwRel, VIEWER]);
    assert(codes[0] === 403, 'viewer promote answered ' + codes[0]);
    assert(codes[1] === 401, 'anonymous promote answered ' + codes[1]);
    assert(codes[2] === 401, 'bad-token promote answered ' + codes[2]);
    const ro = (await rolloutOf(fwRel)).rollouts[0];
    assert(ro.step === 1 && ro.state === 'holding', 'a refused request changed the rollout: ' + ro.state + ' step ' + ro.step);
    const audit = await api('GET', '/api/v1/audit?release=' + fwRel);
    assert(!audit.some((a) => a.reason === 'forged'), 'a refused request is in the audit log');
  }, page);

  await step('an operator promotes from the page and the audit log shows it', async () => {
    await opPage.goto(`${url}/#token=${admin}`);
    await opPage.locator('#conn[data-state="live"]').waitFor({ timeout: T(10000) });
    await opPage.goto(`${url}/#/releases/${fwRel}`);
    const promote = opPage.locator('.actions button[data-action="promote"]');
    await promote.waitFor({ timeout: T(10000) });
    // a refused action shows otacd's reason in the dialog (nothing is paused)
    await opPage.locator('.actions button[data-action="resume"]').click();
    let dlg = opPage.locator('dialog.action-dialog[open]');
    await dlg.waitFor();
    await dlg.locator('textarea').fill('try resume');
    await dlg.locator('button[data-confirm]').click();
    await dlg.locator('.dialog-error', { hasText: '409' }).waitFor({ timeout: T(5000) });
    await shot(opPage, '16-dialog-error');
    await opPage.keyboard.press('Escape');
    await dlg.waitFor({ state: 'detached' });
    // focus comes back as the dialog closes; a slow (sanitized) page may take a moment
    const refocused = await opPage.waitForFunction(
      () => document.activeElement && document.activeElement.dataset.action === 'resume', null, { timeout: T(3000) })
      .then(() => true, () => false);
    assert(refocused, 'focus did not return to the button that opened the dialog');
    // keyboard: focus stays inside the dialog; an empty reason is refused by the page
    await promote.focus();
    await opPage.keyboard.press('Enter');
    dlg = opPage.locator('dialog.action-dialog[open]');
    await dlg.waitFor();
    assert(await opPage.evaluate(() => document.activeElement && document.activeElement.tagName) === 'TEXTAREA', 'focus is not in the reason field');
    for (let i = 0; i < 8; i++) {
      await opPage.keyboard.press('Tab');
      assert(await opPage.evaluate(() => !!document.activeElement && !!document.activeElement.closest('dialog[open]')), 'Tab left the dialog');
    }
    await dlg.locator('button[data-confirm]').click();
    await dlg.locator('.dialog-error', { hasText: 'reason is required' }).waitFor();
    const reason = 'canary looks fine <script>alert(2)</script>';
    await dlg.locator('textarea').fill(reason);
    await dlg.locator('input[name="skip_step"]').check();
    await shot(opPage, '17-dialog-promote');
    await dlg.locator('button[data-confirm]').click();
    await dlg.waitFor({ state: 'detached', timeout: T(10000) });
    // the canary passes; production waits for approval, highlighted
    await opPage.locator('.rollout-stage[data-stage="production"][data-state="waiting_approval"]').waitFor({ timeout: T(20000) });
    const row = opPage.locator('table.audit tr[data-action="promote"]', { hasText: 'canary looks fine' });
    await row.waitFor({ timeout: T(10000) });
    assert((await row.locator('td.reason').textContent()) === reason, 'the reason is not shown as text');
    assert(await opPage.locator('table.audit script').count() === 0, 'markup from a reason became an element');
    const audit = await api('GET', '/api/v1/audit?release=' + fwRel);
    const entry = audit.find((a) => a.action === 'promote' && a.reason === reason);
    assert(entry, 'the promote is not in the audit log: ' + JSON.stringify(audit.slice(0, 3)));
    assert((await row.locator('td').nth(1).textContent()) === entry.actor, 'the actor shown differs from the API');
    await shot(opPage, '18-rollout-promoted');
  }, opPage);

  await step('overview shows the rollout and highlights what waits for approval', async () => {
    await page.goto(`${url}/#/`);
    const row = page.locator('table.rollouts tr.needs-person[data-release-id="' + fwRel + '"][data-state="waiting_approval"]');
    await row.waitFor({ timeout: T(10000) });
    await page.locator('.rolling-now .attention', { hasText: 'waiting for approval' }).waitFor();
    await shot(page, '01-overview-rollouts');
    // approve from the operator's page; the viewer's overview follows without a reload
    await page.evaluate(() => { window.__noReload = 4; });
    await opPage.locator('.actions button[data-action="promote"]').click();
    const dlg = opPage.locator('dialog.action-dialog[open]');
    await dlg.locator('textarea').fill('approved for production');
    await dlg.locator('button[data-confirm]').click();
    await dlg.waitFor({ state: 'detached', timeout: T(10000) });
    await page.locator('table.rollouts tr[data-release-id="' + fwRel + '"][data-state="holding"]', { hasText: 'production' }).waitFor({ timeout: T(15000) });
    assert(await page.locator('table.rollouts tr.needs-person[data-release-id="' + fwRel + '"]').count() === 0, 'still highlighted after approval');
    assert(await page.evaluate(() => window.__noReload) === 4, 'the page was reloaded');
    await opPage.locator('table.audit tr[data-action="promote"]', { hasText: 'approved for production' }).waitFor({ timeout: T(10000) });
  }, page);

  await step('run page shows test, HIL and analysis results', async () => {
    const id = await trigger(CHECKED, 'checked.yml', 'refs/heads/main');
    const run = await waitRun(id);
    assert(run.state === 'failed', 'the failing unit test should fail the run, it is ' + run.state);
    await page.goto(`${url}/#/runs/${id}`);
    const unit = page.locator('.report[data-format="junit"]', { hasText: 'unit' }).first();
    await unit.waitFor({ timeout: T(10000) });
    assert((await unit.locator('.report-bad').textContent()) === '3 tests: 2 passed, 1 failed', 'unit counts: ' + await unit.locator('.report-bad').textContent());
    const failed = unit.locator('table.cases tr[data-case]');
    assert(await failed.count() === 1, 'one failed case expected');
    assert((await failed.locator('td').first().textContent()) === 'crc.breaks', 'the failed case is not named');
    assert((await failed.locator('pre.case-msg').textContent()).includes('expected <script>alert(3)</script>'), 'the failure message is not shown as text');
    assert(await page.locator('.reports script').count() === 0, 'markup from a test message became an element');
    const hil = page.locator('.report[data-format="junit"]', { hasText: 'HIL' });
    assert((await hil.locator('.report-ok').textContent()) === '2 tests: 2 passed', 'the HIL results are not shown');
    const lint = page.locator('.report[data-format="cppcheck"]');
    assert((await lint.locator('.report-bad').textContent()) === '1 error, 1 style', 'finding counts: ' + await lint.locator('.report-bad').textContent());
    const first = lint.locator('table.findings tr[data-finding="0"] td');
    assert((await first.nth(1).textContent()) === 'arrayIndexOutOfBounds' && (await first.nth(2).textContent()) === 'src/ring.c:12',
      'the finding row does not name the rule and place');
    // code metrics: the numbers, each with its trend over the ref's runs
    const q = page.locator('.report[data-format="pmccabe"]');
    assert((await q.locator('tr[data-metric="complexity_max"] td.num').textContent()) === '12', 'complexity_max is not shown');
    assert(await q.locator('tr[data-metric="complexity_max"] svg.metric-trend circle[data-run="' + id + '"]').count() === 1,
      'the trend has no point for this run');
    await shot(page, '20-run-reports');
    // commits link to their repository's page only for web addresses
    const links = await page.evaluate(async () => {
      const { commitUrl } = await import('/run.js');
      return [commitUrl('https://github.com/acme/fw.git', 'abc123'), commitUrl('https://gitea.example/acme/fw/', 'abc123'),
        commitUrl('/srv/git/fw.git', 'abc123'), commitUrl('git@github.com:acme/fw.git', 'abc123')];
    });
    assert(JSON.stringify(links) === JSON.stringify(['https://github.com/acme/fw/commit/abc123',
      'https://gitea.example/acme/fw/commit/abc123', null, null]), 'commit links: ' + JSON.stringify(links));
  }, page);

  await step('an operator cancels a run from the run page', async () => {
    const id = await trigger(TICKS.replace('seq 1 30', 'seq 1 300'), 'ticks.yml', 'refs/heads/cancel-me');
    await page.goto(`${url}/#/runs/${id}`);
    await page.locator('.run-head').waitFor();
    assert(await page.locator('button[data-action="cancel"]').count() === 0, 'the viewer sees a cancel button');
    await opPage.goto(`${url}/#/runs/${id}`);
    await opPage.locator('button[data-action="cancel"]').click();
    const dlg = opPage.locator('dialog.action-dialog[open]');
    await dlg.locator('textarea').fill('not needed');
    await dlg.locator('button[data-confirm]').click();
    await dlg.waitFor({ state: 'detached', timeout: T(10000) });
    await opPage.locator('.run-head .badge', { hasText: 'canceled' }).waitFor({ timeout: T(15000) });
    assert(await opPage.locator('button[data-action="cancel"]').count() === 0, 'cancel still offered for a canceled run');
    // the reason is audited with the token's name
    const audit = await api('GET', '/api/v1/audit');
    const entry = audit.find((a) => a.action === 'cancel' && a.detail && a.detail.run === id);
    assert(entry && entry.reason === 'not needed', 'the cancel is not in the audit log: ' + JSON.stringify(audit.slice(0, 3)));
  }, opPage);


  await step('daemon restart: reconnecting, then live again', async () => {
    const ticks = await trigger(TICKS, 'ticks.yml', 'refs/heads/main');
    const tickJob = jobOf(await api('GET', '/api/v1/runs/' + ticks), 'tick').id;
    await logPage.goto(`${url}/#/jobs/${tickJob}/log`);
    await logLine(logPage, /^tick 3$/);
    await page.goto(`${url}/#/`);
    await page.locator(`tr[data-run-id="${ticks}"]`).waitFor();
    await page.evaluate(() => { window.__noReload = 2; });
    await stopDaemon('SIGKILL');
    await page.locator('#conn[data-state="down"]', { hasText: 'reconnecting' }).waitFor({ timeout: T(10000) });
    // the other tab has no stream of its own: it hears the state from this one
    await logPage.locator('#conn[data-state="down"]', { hasText: 'reconnecting' }).waitFor({ timeout: T(5000) });
    await logPage.locator('#log-stream', { hasText: 'reconnecting' }).waitFor({ timeout: T(10000) });
    await shot(page, '06-reconnecting');
    await startDaemon();
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: T(15000) });
    await logPage.locator('#conn[data-state="live"]').waitFor({ timeout: T(5000) });
    const b = await trigger(AFTER_RESTART, 'after-restart.yml', 'refs/heads/main');
    await page.locator(`tr[data-run-id="${b}"]`).waitFor({ timeout: T(10000) });
    assert(await page.evaluate(() => window.__noReload) === 2, 'the page was reloaded');
    await page.locator(`tr[data-run-id="${b}"] .badge`, { hasText: 'passed' }).waitFor({ timeout: T(15000) });
    await shot(page, '07-recovered');
    // the local agent outlived the daemon and was adopted: the job goes on
    // in its first attempt (docs/architecture.md, crash safety), and the log
    // page follows it to its end
    await logLine(logPage, /^tick 30$/, T(30000));
    await logPage.locator('#log-stream', { hasText: 'ended: passed' }).waitFor({ timeout: T(10000) });
    const job = await api('GET', '/api/v1/jobs/' + tickJob);
    assert(job.attempt === 1, 'the job was run again (attempt ' + job.attempt + ') although its agent was adopted');
    // one attempt's output, each tick once: nothing was run twice
    const r = await fetch(`${url}/api/v1/jobs/${tickJob}/log?offset=0`, { headers: { Authorization: 'Bearer ' + admin } });
    const text = await r.text();
    assert(r.ok && (text.match(/^tick 1$/gm) || []).length === 1 && (text.match(/^tick 30$/gm) || []).length === 1,
      'the log does not show one run of the step: ' + text.slice(0, 200));
  }, page);

  await step('network errors are shown, not swallowed', async () => {
    await page.goto(`${url}/#/runs/999999`);
    await page.locator('#errors', { hasText: '404' }).waitFor({ timeout: T(5000) });
  }, page);

  await step('without a token the page asks for one', async () => {
    const anon = await newContext({ viewport: { width: 1280, height: 860 } });
    const p = watch(await anon.newPage(), 'anonymous');
    await p.goto(`${url}/`);
    await p.locator('#token-form').waitFor({ timeout: T(10000) });
    await shot(p, '08-token-form');
    await p.locator('#token-input').fill(VIEWER);
    await p.locator('#token-form button[type="submit"]').click();
    await p.locator(`tr[data-run-id="${runA}"]`).waitFor({ timeout: T(10000) });
    await p.locator('#conn[data-state="live"]').waitFor({ timeout: T(10000) });
    // a wrong token is refused with the same form
    await p.goto(`${url}/#token=not-a-valid-token-at-all`);
    await p.reload();
    await p.locator('#token-form', { hasText: 'refused' }).waitFor({ timeout: T(10000) });
    await anon.close();
  });

  await step('phone layout: no sideways scrolling, readable views', async () => {
    const phone = await newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const p = watch(await phone.newPage(), 'phone');
    await p.goto(`${url}/#token=${VIEWER}`);
    await p.locator(`tr[data-run-id="${runA}"]`).waitFor({ timeout: T(10000) });
    const overflow = async () => p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(await overflow() <= 1, `overview is ${await overflow()} px wider than the phone`);
    await shot(p, '11-phone-overview');
    await p.goto(`${url}/#/runs/${runA}`);
    await p.locator('svg.dag').waitFor();
    assert(await overflow() <= 1, `run page is ${await overflow()} px wider than the phone`);
    await shot(p, '12-phone-run');
    await p.goto(`${url}/#/jobs/${coloursJob}/log`);
    await logLine(p, /bold green/);
    assert(await overflow() <= 1, `log page is ${await overflow()} px wider than the phone`);
    await shot(p, '13-phone-log');
    if (fwRel) {
      await p.goto(`${url}/#/releases/${fwRel}`);
      await p.locator('svg.gate-chart circle.pt').first().waitFor({ timeout: T(10000) });
      assert(await overflow() <= 1, `release page is ${await overflow()} px wider than the phone`);
      await shot(p, '19-phone-rollout');
    }
    await phone.close();
  });

  await step('no page errors, CSP violations or dialogs', async () => {
    assert(problems.length === 0, problems.join('\n'));
  });
}

async function cleanup() {
  try { if (browser) await browser.close(); } catch { /* gone */ }
  await stopFleet();
  await stopDaemon('SIGTERM');
  await stopDaemon('SIGKILL');
  // whatever otacd started and left behind (agents, their jobs) ends too
  for (const g of groups) {
    try { process.kill(-g, 'SIGKILL'); } catch { /* none left */ }
  }
}

const watchdog = setTimeout(async () => {
  log(`FAIL: the test did not finish in ${DEADLINE_MS} ms`);
  results.push({ name: 'deadline', ok: false });
  await cleanup();
  report();
}, DEADLINE_MS);

// Stopped from outside (a timeout, ^C): end the daemon, its children and
// the fleet anyway.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.once(sig, async () => {
    log('stopped by', sig);
    results.push({ name: 'stopped by ' + sig, ok: false });
    await cleanup();
    report();
  });
}

function report() {
  clearTimeout(watchdog);
  const failed = results.filter((r) => !r.ok).length;
  const passed = results.length - failed;
  if (failed) {
    log('daemon log (last lines):\n' + tail());
    log('state kept in', state);
  } else {
    fs.rmSync(state, { recursive: true, force: true });
  }
  log('screenshots in', OUT);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

try {
  await main();
} catch (e) {
  log('FAIL: setup:', e && e.stack ? e.stack : e);
  results.push({ name: 'setup', ok: false });
}
await cleanup();
report();

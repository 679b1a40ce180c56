// The dashboard in headless Chromium, driven by Playwright (playwright-core,
// Debian's chromium), with axe-core checking each view. Started by
// tests/tests/dashboard.rs, which runs the daemon, the registry and the
// base update; the two talk over stdin/stdout lines:
//   this script prints  `STEP fleet-1.0.0`  when the fleet shows 1.0.0;
//   the Rust side moves the base and answers `GO` on stdin;
//   at the end this script prints `RESULT {json}` (the checks it made).
// Environment: REBASED_URL, REBASED_TOKEN, REBASED_IMAGE, SHOTS_DIR.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { chromium } = require('playwright-core');

const URL = process.env.REBASED_URL;
const TOKEN = process.env.REBASED_TOKEN;
const IMAGE = process.env.REBASED_IMAGE || 'app';
const SHOTS = process.env.SHOTS_DIR || 'dashboard-shots';
const AXE = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
const WAIT = 120000;

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const result = { checks: {}, console_errors: [], expected_401_logs: [], axe: {}, shots: [] };

const lines = readline.createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (l) => { const w = waiting.shift(); if (w) w(l.trim()); });
function nextLine() { return new Promise((resolve) => waiting.push(resolve)); }

function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = `${label}: ${m.text()}`;
    // The browser logs every 401 answer as a failed resource load; the
    // token checks provoke exactly those, and nothing else may log.
    if (/status of 401/.test(m.text())) result.expected_401_logs.push(text);
    else result.console_errors.push(text);
  });
  page.on('pageerror', (e) => result.console_errors.push(`${label}: uncaught ${e.message}`));
}

async function shot(page, name) {
  const file = path.join(SHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  result.shots.push(file);
}

async function axe(page, view) {
  await page.evaluate(AXE);
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
  });
  result.axe[view] = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  result.axe[`${view} (minor or moderate)`] = violations.filter((v) => v.impact !== 'serious' && v.impact !== 'critical').map((v) => v.id);
}

async function view(page, hash, ready, name) {
  await page.goto(`${URL}/#/${hash}`);
  await page.locator(ready).first().waitFor({ timeout: WAIT });
  await axe(page, name);
  await shot(page, name);
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS, headless: true });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    watch(page, 'main');

    // Fleet at 1.0.0.
    await page.goto(`${URL}/`);
    const row = page.locator(`tr[data-image="${IMAGE}"]`);
    await row.locator('td.version', { hasText: '1.0.0' }).waitFor({ timeout: WAIT });
    result.checks.fleet_shows_1_0_0 = true;
    await axe(page, 'fleet');
    await shot(page, 'fleet');
    const loads = [];
    page.on('load', () => loads.push(Date.now()));

    // The base moves (the Rust side pushes it and asks for a check);
    // the row turns to 1.0.1 without a reload.
    console.log('STEP fleet-1.0.0');
    const go = await nextLine();
    if (go !== 'GO') throw new Error(`expected GO, got ${go}`);
    await row.locator('td.version', { hasText: '1.0.1' }).waitFor({ timeout: WAIT });
    result.checks.fleet_turns_1_0_1_without_reload = loads.length === 0;
    result.checks.live_status = await page.locator('#live').textContent();
    await shot(page, 'fleet-1.0.1');

    // Dark scheme: the same checks.
    await page.emulateMedia({ colorScheme: 'dark' });
    await axe(page, 'fleet (dark)');
    await shot(page, 'fleet-dark');
    await page.emulateMedia({ colorScheme: 'light' });

    // The image page: 1.0.0 superseded by 1.0.1, both base digests.
    await page.goto(`${URL}/#/image/${IMAGE}`);
    const v100 = page.locator('li[data-version="1.0.0"]');
    await v100.waitFor({ timeout: WAIT });
    result.checks.superseded_text = (await v100.locator('.superseded').textContent()).trim();
    const digests = await v100.locator('.supersession code[title^="sha256:"]').evaluateAll((els) => els.map((e) => e.getAttribute('title')));
    result.checks.supersession_digests = digests;
    result.checks.timeline_versions = await page.locator('li[data-version]').evaluateAll((els) => els.map((e) => e.getAttribute('data-version')));
    await axe(page, 'image');
    await shot(page, 'image');

    // A wrong token is refused and the page says so (a fresh tab: no token).
    const other = await browser.newContext();
    const p2 = await other.newPage();
    watch(p2, 'wrong-token');
    await p2.goto(`${URL}/#/image/${IMAGE}`);
    await p2.locator('button[data-key="rebuild"]').click();
    await p2.locator('#token-dialog').waitFor({ state: 'visible', timeout: WAIT });
    result.checks.token_form_label = await p2.locator('label[for="token-input"]').textContent();
    await p2.fill('#token-input', 'not-the-token');
    await p2.locator('#token-submit').click();
    await p2.locator('#token-error', { hasText: 'Wrong token' }).waitFor({ timeout: WAIT });
    result.checks.wrong_token_message = await p2.locator('#token-error').textContent();
    await axe(p2, 'token dialog');
    await shot(p2, 'token-wrong');
    await p2.locator('#token-cancel').click();
    await p2.locator('#notice', { hasText: 'wrong' }).waitFor({ timeout: WAIT });
    result.checks.wrong_token_notice = await p2.locator('#notice').textContent();
    result.checks.no_cookies = (await other.cookies()).length === 0;
    await other.close();

    // Rollback to 1.0.0 with the token: the confirmation names the tags.
    await page.selectOption('#rollback-to', '1.0.0');
    await page.locator('button[data-key="rollback"]').click();
    await page.locator('#confirm-dialog').waitFor({ state: 'visible', timeout: WAIT });
    result.checks.confirm_text = await page.locator('#confirm-text').textContent();
    await shot(page, 'rollback-confirm');
    await page.locator('#confirm-ok').click();
    await page.locator('#token-dialog').waitFor({ state: 'visible', timeout: WAIT });
    await page.fill('#token-input', TOKEN);
    await page.locator('#token-submit').click();
    await page.locator('h1 .badge.s-held').waitFor({ timeout: WAIT });
    result.checks.held_shown = true;
    result.checks.token_in_session_storage = await page.evaluate(() => sessionStorage.getItem('rebased.api-token'));
    result.checks.no_cookies_main = (await context.cookies()).length === 0;
    await page.locator('button[data-key="resume"]').waitFor({ timeout: WAIT });
    await shot(page, 'image-held');

    // The other views.
    await view(page, 'jobs', 'td .badge', 'jobs');
    const firstJob = await page.locator('th a[href^="#/job/"]').first().getAttribute('href');
    await view(page, firstJob.slice(2), '#job-log', 'job');
    result.checks.job_log_chars = (await page.locator('#job-log').textContent()).length;
    await view(page, 'bases', 'tbody tr', 'bases');
    await view(page, 'graph', 'svg.graph a', 'graph');
    result.checks.graph_nodes = await page.locator('svg.graph a').count();
    result.checks.graph_edges = await page.locator('svg.graph path.edge').count();
    const x = async (n) => Number(await page.locator(`svg.graph a[aria-label^="${n}:"] rect`).getAttribute('x'));
    if (process.env.REBASED_CHILD) {
      result.checks.graph_child_right_of_app = (await x(process.env.REBASED_CHILD)) > (await x(IMAGE));
    }

    // Keyboard: the nav links are reached with Tab and open their view.
    await page.goto(`${URL}/#/fleet`);
    await page.locator(`tr[data-image="${IMAGE}"]`).waitFor({ timeout: WAIT });
    // From the skip link, the first stop of the page, Tab goes on
    // through the brand and the nav.
    await page.focus('a.skip');
    let reached = null;
    for (let i = 0; i < 8 && !reached; i += 1) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => (document.activeElement && document.activeElement.getAttribute('data-nav')) || null);
      if (reached !== 'jobs') reached = null;
    }
    if (reached) {
      await page.keyboard.press('Enter');
      await page.locator('h1', { hasText: 'Jobs' }).waitFor({ timeout: WAIT });
    }
    result.checks.keyboard_reaches_jobs = reached === 'jobs';

    await context.close();

    // The event stream, until its route is in this daemon (issue 17): a
    // stand-in answers /v1/events with one event and ends the response,
    // as a dropped connection does; the page must read the view again on
    // the message and reconnect with the last event's id.
    const ctx3 = await browser.newContext();
    await ctx3.route('**/openapi.json', async (route) => {
      const response = await route.fetch();
      const doc = await response.json();
      doc.paths['/v1/events'] = doc.paths['/v1/events'] || { get: {} };
      await route.fulfill({ response, json: doc });
    });
    const streams = [];
    let reconnected;
    const again = new Promise((resolve) => { reconnected = resolve; });
    await ctx3.route('**/v1/events*', async (route) => {
      const req = route.request();
      const headers = await req.allHeaders();
      streams.push({ url: req.url(), last_event_id: headers['last-event-id'] || null });
      if (streams.length >= 2) reconnected();
      const seq = 40 + streams.length;
      await route.fulfill({
        status: 200,
        headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' },
        body: `retry: 300\nid: ${seq}\nevent: published\ndata: {"seq":${seq},"type":"published","time":"2026-12-01T00:00:00Z","image":"${IMAGE}"}\n\n`,
      });
    });
    // What the page's EventSource saw, for the report.
    await ctx3.addInitScript(() => {
      const Base = window.EventSource;
      window.seenEvents = [];
      window.EventSource = class extends Base {
        constructor(url) {
          super(url);
          this.addEventListener('open', () => window.seenEvents.push('open'));
          this.addEventListener('published', (e) => window.seenEvents.push(`published ${e.lastEventId}`));
          this.addEventListener('error', () => window.seenEvents.push(`error ${this.readyState}`));
        }
      };
    });
    const p3 = await ctx3.newPage();
    watch(p3, 'events');
    const reads = [];
    p3.on('request', (r) => { if (r.url().includes('/v1/images?')) reads.push(r.url()); });
    await p3.goto(`${URL}/#/fleet`);
    await Promise.race([again, new Promise((resolve) => setTimeout(resolve, 20000))]);
    await p3.waitForTimeout(300);
    result.checks.event_streams = streams;
    result.checks.events_seen = await p3.evaluate(() => window.seenEvents);
    result.checks.fleet_reads_with_events = reads.length;
    await ctx3.close();
  } finally {
    await browser.close();
  }
}

main().then(() => {
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(0);
}, (e) => {
  result.error = String(e && e.stack ? e.stack : e);
  console.log(`RESULT ${JSON.stringify(result)}`);
  process.exit(1);
});

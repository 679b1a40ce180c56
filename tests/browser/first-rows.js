// The fleet page's time to its first rows in headless Chromium, for the
// benchmark harness (crates/bench, scenario `dashboard`). Each run is a new
// browser context (no cache); prints `RESULT {json}`.
// Environment: REBASED_URL, RUNS (default 5).
'use strict';

const { chromium } = require('playwright-core');

const URL = process.env.REBASED_URL;
const RUNS = Number(process.env.RUNS || 5);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function main() {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS, headless: true });
  const runs = [];
  try {
    for (let i = 0; i < RUNS; i += 1) {
      const context = await browser.newContext();
      const page = await context.newPage();
      const errors = [];
      page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
      const t0 = Date.now();
      await page.goto(`${URL}/#/fleet`, { waitUntil: 'commit' });
      // The page's own clock: from the navigation's start to the moment a
      // row is in the document (a MutationObserver sees it as it lands).
      const inPage = await page.evaluate(() => new Promise((resolve) => {
        const done = () => resolve(performance.now());
        if (document.querySelector('tr[data-image]')) { done(); return; }
        new MutationObserver((_, obs) => {
          if (document.querySelector('tr[data-image]')) { obs.disconnect(); done(); }
        }).observe(document, { childList: true, subtree: true });
      }));
      const wall = Date.now() - t0;
      const rows = await page.locator('tr[data-image]').count();
      runs.push({ first_rows_ms: Math.round(inPage * 10) / 10, wall_ms: wall, rows, console_errors: errors });
      await context.close();
    }
  } finally {
    await browser.close();
  }
  return runs;
}

main().then((runs) => {
  console.log(`RESULT ${JSON.stringify({ runs })}`);
}, (e) => {
  console.log(`RESULT ${JSON.stringify({ error: String(e && e.stack ? e.stack : e) })}`);
  process.exit(1);
});

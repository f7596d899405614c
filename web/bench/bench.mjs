// Web UI benchmark, in headless Chromium against a real `omnigent start` (tests/harness.mjs), and, with
// `--python <venv>/bin/omnigent` (pip install omnigent==0.19.1, Python 3.12; not a CI dependency), the
// Python omnigent's own web UI against its own server (`omnigent server --port P`), measured the same way in
// the same run:
// - first load of `/`: the JS+CSS the page loaded until its session list showed, gzipped (level 9) and as
//   transferred;
// - navigation → session list rendered (51 sessions): navigation start → the newest title in the DOM;
// - a 2,000-item session opened: navigation start → its last message in the DOM;
// - ours only: POST of a message → first streamed token painted (echo harness), Send press → the first
//   assistant text in the DOM, painted (next animation frame); and the app's own marks.
// Each timed figure is the median of RUNS runs (default 5). Run: `npm run bench [-- --python PATH]` in web/.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { launch, Omnigent } from '../tests/harness.mjs';

const RUNS = Number(process.env.RUNS ?? 5);
const python = process.argv.includes('--python') ? process.argv[process.argv.indexOf('--python') + 1] : null;
const median = (xs) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : NaN);
const ms = (xs) => `${median(xs).toFixed(0)} ms`;
const LIST_TEXT = 'two thousand items';
const LAST_TEXT = 'answer number 999';
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`;

async function post(url, path, body) {
  const r = await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`POST ${path}: ${r.status} ${await r.text()}`);
  return r.json();
}

/** 50 sessions and one of 2,000 items on the server at `url`; returns the long session's id. */
async function seed(url, agentId) {
  for (let i = 0; i < 50; i++) await post(url, '/v1/sessions', { agent_id: agentId, title: `bench ${i}` });
  const items = [];
  for (let i = 0; i < 1000; i++) {
    items.push({ type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: `question ${i}: what about item ${i}?` }] } });
    items.push({ type: 'message', data: { role: 'assistant', agent: 'bench', content: [{ type: 'output_text', text: `answer number ${i}` }] } });
  }
  const long = await post(url, '/v1/sessions', { agent_id: agentId, title: 'two thousand items', initial_items: items });
  // The list's newest is the long session; the titles are what both UIs show.
  return long.id;
}

/** The figures both UIs get, measured the same way. `sessionPath` is the UI's route to a session. */
async function measure(browser, url, longId, sessionPath) {
  const out = { bundleGz: 0, transferred: 0, files: 0, list: [], open: [] };
  for (let r = 0; r < RUNS; r++) {
    const context = await browser.newContext({ baseURL: url });
    // When each text first enters the DOM, recorded in the page itself (a mutation observer installed before
    // the app's own script), so the figure does not include the test driver's polling.
    await context.addInitScript((needles) => {
      window.__seen = {};
      new MutationObserver(() => {
        const text = document.body?.textContent ?? '';
        for (const n of needles) if (!(n in window.__seen) && text.includes(n)) window.__seen[n] = performance.now();
      }).observe(document, { childList: true, subtree: true, characterData: true });
    }, [LIST_TEXT, LAST_TEXT]);
    const page = await context.newPage();
    const loads = [];
    let firstLoad = r === 0;
    if (firstLoad) {
      page.on('response', (resp) => {
        const type = resp.request().resourceType();
        if (!firstLoad) return;
        if (type !== 'script' && type !== 'stylesheet') return;
        loads.push(
          (async () => {
            const body = await resp.body();
            const sizes = await resp.request().sizes();
            out.bundleGz += gzipSync(body, { level: 9 }).length;
            out.transferred += sizes.responseBodySize;
            out.files += 1;
          })().catch(() => {}),
        );
      });
    }
    await page.goto('/');
    await page.waitForFunction((n) => window.__seen?.[n] !== undefined, LIST_TEXT, { timeout: 60_000 });
    out.list.push(await page.evaluate((n) => window.__seen[n], LIST_TEXT));
    firstLoad = false;
    await Promise.all(loads);
    await page.goto('about:blank');
    await page.goto(sessionPath(longId));
    await page.waitForFunction((n) => window.__seen?.[n] !== undefined, LAST_TEXT, { timeout: 60_000 });
    out.open.push(await page.evaluate((n) => window.__seen[n], LAST_TEXT));
    await context.close();
  }
  return out;
}

const browser = await launch();
const omni = await Omnigent.start();
const rows = [];
try {
  const longId = await seed(omni.url, omni.agents.echo);
  const ours = await measure(browser, omni.url, longId, (id) => `/sessions/${id}`);

  // Ours only: the app's marks, and POST → first token painted.
  const echo = await omni.session('echo', 'first token');
  const context = await browser.newContext({ baseURL: omni.url });
  const page = await context.newPage();
  const marks = { list: [], open: [], token: [] };
  for (let r = 0; r < RUNS; r++) {
    await page.goto('about:blank');
    await page.goto('/');
    await page.waitForFunction(() => performance.getEntriesByName('omnigent:sessions-rendered').length > 0);
    marks.list.push(await page.evaluate(() => performance.getEntriesByName('omnigent:sessions-rendered')[0].startTime));
    await page.goto('about:blank');
    await page.goto(`/sessions/${longId}`);
    await page.waitForFunction(() => performance.getEntriesByName('omnigent:transcript-rendered').length > 0);
    marks.open.push(await page.evaluate(() => performance.getEntriesByName('omnigent:transcript-rendered')[0].startTime));
    await page.goto(`/sessions/${echo.id}`);
    await page.locator('section[data-connection=live]').waitFor();
    await page.waitForFunction(() => document.getElementById('message')?.disabled === false);
    await page.getByLabel('Message').fill(`bench run ${r} with a few words`);
    marks.token.push(
      await page.evaluate(
        () =>
          new Promise((ok) => {
            const t = document.querySelector('[data-testid=transcript]');
            const before = t.querySelectorAll('article.msg[data-role=assistant]').length;
            const seen = new MutationObserver(() => {
              const msgs = t.querySelectorAll('article.msg[data-role=assistant]');
              if (msgs.length > before && msgs[msgs.length - 1].querySelector('.md')?.textContent) {
                seen.disconnect();
                requestAnimationFrame(() => ok(performance.now() - start));
              }
            });
            seen.observe(t, { childList: true, subtree: true, characterData: true });
            const start = performance.now();
            document.querySelector('.composer button[type=submit]').click();
          }),
      ),
    );
    await page.waitForFunction(() => document.querySelector('section.session')?.dataset.status === 'idle');
  }
  await context.close();

  let theirs = null;
  if (python) {
    const home = mkdtempSync(join(tmpdir(), 'bench-py-omnigent-'));
    const port = omni.port + 1;
    const proc = spawn(python, ['server', '--port', String(port)], {
      env: { ...process.env, HOME: home, OMNIGENT_HOME: home },
      stdio: 'ignore',
      detached: true,
    });
    const url = `http://127.0.0.1:${port}`;
    try {
      for (let ok = false; !ok; ) {
        ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
        if (!ok) await new Promise((r) => setTimeout(r, 100));
      }
      const agents = await (await fetch(`${url}/v1/agents?limit=100`)).json();
      const pyLong = await seed(url, agents.data[0].id);
      theirs = await measure(browser, url, pyLong, (id) => `/c/${id}`);
    } finally {
      process.kill(-proc.pid, 'SIGTERM');
      await new Promise((r) => proc.once('exit', r));
      rmSync(home, { recursive: true, force: true });
    }
  }

  rows.push(['first load of /: JS+CSS gzipped (files)', `${kib(ours.bundleGz)} (${ours.files})`, theirs && `${kib(theirs.bundleGz)} (${theirs.files})`]);
  rows.push(['first load of /: JS+CSS as transferred', kib(ours.transferred), theirs && kib(theirs.transferred)]);
  rows.push(['navigation → session list rendered (51 sessions)', ms(ours.list), theirs && ms(theirs.list)]);
  rows.push(['2,000-item session: navigation → last message in the DOM', ms(ours.open), theirs && ms(theirs.open)]);
  rows.push(['POST → first streamed token painted (echo)', ms(marks.token), null]);
  rows.push(["app's mark: session list rendered", ms(marks.list), null]);
  rows.push(["app's mark: 2,000-item transcript rendered (newest 150)", ms(marks.open), null]);
  console.log(`| measure (median of ${RUNS}) | omnigent-rs | Python omnigent 0.19.1 |`);
  console.log('|---|---|---|');
  for (const [k, a, b] of rows) console.log(`| ${k} | ${a} | ${b ?? (python ? 'n/a' : 'not run')} |`);
} finally {
  await browser.close();
  await omni.stop();
}

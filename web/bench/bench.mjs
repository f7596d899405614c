// Web UI benchmark, in headless Chromium against a real `omnigent start` (tests/harness.mjs), and, with
// `--python <venv>/bin/omnigent` (pip install omnigent==0.19.1, Python 3.12; not a CI dependency), the
// Python omnigent's own web UI against its own server (`omnigent server --port P`), measured the same way in
// the same run:
// - first load of `/`: the JS+CSS the page loaded until its session list showed, gzipped (level 9) and as
//   transferred;
// - navigation → session list rendered (51 sessions): navigation start → the newest title in the DOM;
// - a 2,000-item session opened: navigation start → its last message in the DOM;
// - Send pressed → the first streamed token painted (next animation frame), for an agent uploaded as a bundle
//   (`openai-agents` harness) whose `base_url` is a fake Responses API on loopback (fake-responses.mjs), on a
//   host of each server (ours: the `omnigent start` host; Python: `omnigent host --server`); ours also with the
//   echo harness; and the app's own marks.
// Each timed figure is the median of RUNS runs (default 5). Run: `npm run bench [-- --python PATH]` in web/.
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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

/** Starts fake-responses.mjs on a free port; resolves to `{ url, proc }` once it prints its URL. */
function fakeResponses() {
  const proc = spawn(process.execPath, [join(import.meta.dirname, 'fake-responses.mjs'), '0'], { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((ok, fail) => {
    let err = '';
    proc.stderr.on('data', (c) => {
      err += c;
      const m = err.match(/on (http:\/\/\S+)/);
      if (m) ok({ url: m[1], proc });
    });
    proc.once('exit', (code) => fail(new Error(`fake-responses exited ${code}: ${err}`)));
  });
}

/** A session on `hostId` of the server at `url` whose agent is a bundle (config.yaml alone) for the
 *  `openai-agents` harness with `base_url` = the fake; uploaded as multipart like `omnigent run ./agent`. */
async function bundledSession(url, hostId, fakeUrl, workspace) {
  const dir = mkdtempSync(join(tmpdir(), 'bench-agent-'));
  try {
    writeFileSync(
      join(dir, 'config.yaml'),
      ['spec_version: 1', 'name: bench-responder', 'instructions: You answer briefly.', 'executor:', '  type: omnigent',
        '  model: fake-model', '  config:', '    harness: openai-agents', '  auth:', '    type: api_key', '    api_key: sk-bench',
        `    base_url: ${fakeUrl}`, 'os_env:', '  type: caller_process', '  cwd: "."', '  sandbox:', '    type: none', ''].join('\n'),
    );
    execFileSync('tar', ['czf', join(dir, 'bundle.tar.gz'), '-C', dir, 'config.yaml']);
    mkdirSync(workspace, { recursive: true });
    const form = new FormData();
    // A plain field (not a file part): the Python server reads `metadata` as a form field.
    form.append('metadata', JSON.stringify({ host_id: hostId, workspace, host_type: 'external' }));
    form.append('bundle', new Blob([readFileSync(join(dir, 'bundle.tar.gz'))], { type: 'application/gzip' }), 'bundle.tar.gz');
    const r = await fetch(`${url}/v1/sessions`, { method: 'POST', body: form });
    if (!r.ok) throw new Error(`multipart POST /v1/sessions: ${r.status} ${await r.text()}`);
    const body = await r.json();
    return body.session_id ?? body.id;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Send pressed → the first token of the fake's answer (`a-N` for the message `q-N`) in the DOM, painted; RUNS
 *  times in one page, each after the session is idle again (read from the server). */
async function firstToken(browser, url, sessionPath, id, composer, send) {
  const context = await browser.newContext({ baseURL: url });
  const page = await context.newPage();
  await page.goto(sessionPath(id));
  await page.locator(composer).waitFor();
  const times = [];
  for (let r = 1; r <= RUNS; r++) {
    await page.waitForFunction((sel) => document.querySelector(sel) && !document.querySelector(sel).disabled, composer);
    await page.locator(composer).fill(`q-${r} please answer`);
    times.push(
      await page.evaluate(
        ([needle, send]) =>
          new Promise((ok) => {
            const seen = new MutationObserver(() => {
              if ((document.body.textContent ?? '').includes(needle)) {
                seen.disconnect();
                requestAnimationFrame(() => ok(performance.now() - start));
              }
            });
            seen.observe(document.body, { childList: true, subtree: true, characterData: true });
            const start = performance.now();
            document.querySelector(send).click();
          }),
        [`a-${r}`, send],
      ),
    );
    for (let idle = false; !idle; ) {
      const s = await (await fetch(`${url}/v1/sessions/${id}`)).json();
      idle = s.status === 'idle';
      if (!idle) await new Promise((ok) => setTimeout(ok, 50));
    }
  }
  await context.close();
  return times;
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
const fake = await fakeResponses();
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
  const oursAgent = await firstToken(
    browser, omni.url, (id) => `/sessions/${id}`,
    await bundledSession(omni.url, omni.hostId, fake.url, join(omni.home, 'ws-bench-agent')),
    '#message', '.composer button[type=submit]',
  );

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
    let host = null;
    try {
      for (let ok = false; !ok; ) {
        ok = await fetch(`${url}/health`).then((r) => r.ok, () => false);
        if (!ok) await new Promise((r) => setTimeout(r, 100));
      }
      const agents = await (await fetch(`${url}/v1/agents?limit=100`)).json();
      const pyLong = await seed(url, agents.data[0].id);
      theirs = await measure(browser, url, pyLong, (id) => `/c/${id}`);
      // A Python host on the same machine, for the bundled agent's turns.
      host = spawn(python, ['host', '--server', url, '--no-open', '--non-interactive'], {
        env: { ...process.env, HOME: home, OMNIGENT_HOME: home },
        stdio: 'ignore',
        detached: true,
      });
      let hostId = null;
      while (!hostId) {
        const hosts = await (await fetch(`${url}/v1/hosts`)).json();
        hostId = hosts.hosts?.find((h) => h.status === 'online')?.host_id ?? null;
        if (!hostId) await new Promise((ok) => setTimeout(ok, 200));
      }
      const id = await bundledSession(url, hostId, fake.url, join(home, 'ws-bench-agent'));
      theirs.token = await firstToken(browser, url, (id) => `/c/${id}`, id, 'textarea[aria-label="Message the agent"]', 'form.chat-composer-form button[type=submit]');
    } finally {
      if (host) {
        process.kill(-host.pid, 'SIGTERM');
        await new Promise((r) => host.once('exit', r));
      }
      process.kill(-proc.pid, 'SIGTERM');
      await new Promise((r) => proc.once('exit', r));
      rmSync(home, { recursive: true, force: true });
    }
  }

  rows.push(['first load of /: JS+CSS gzipped (files)', `${kib(ours.bundleGz)} (${ours.files})`, theirs && `${kib(theirs.bundleGz)} (${theirs.files})`]);
  rows.push(['first load of /: JS+CSS as transferred', kib(ours.transferred), theirs && kib(theirs.transferred)]);
  rows.push(['navigation → session list rendered (51 sessions)', ms(ours.list), theirs && ms(theirs.list)]);
  rows.push(['2,000-item session: navigation → last message in the DOM', ms(ours.open), theirs && ms(theirs.open)]);
  rows.push(['Send → first streamed token painted (bundled openai-agents agent, fake Responses API)', ms(oursAgent), theirs && ms(theirs.token)]);
  rows.push(['Send → first streamed token painted (echo harness)', ms(marks.token), null]);
  rows.push(["app's mark: session list rendered", ms(marks.list), null]);
  rows.push(["app's mark: 2,000-item transcript rendered (newest 150)", ms(marks.open), null]);
  console.log(`| measure (median of ${RUNS}) | omnigent-rs | Python omnigent 0.19.1 |`);
  console.log('|---|---|---|');
  for (const [k, a, b] of rows) console.log(`| ${k} | ${a} | ${b ?? (python ? 'n/a' : 'not run')} |`);
} finally {
  await browser.close();
  await omni.stop();
  fake.proc.kill();
}

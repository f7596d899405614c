// Web UI benchmark, in headless Chromium against a real `omnigent start` (tests/harness.mjs):
// - the first load of / : JS+CSS (and index.html) as transferred, gzipped;
// - navigation → session list rendered (50 sessions), from the navigation start to the list's first paint;
// - POST of a message → first streamed token painted (echo harness), from the Send press to the first
//   assistant text in the DOM, painted (next animation frame);
// - a 2,000-item session opened: navigation start → its newest entries painted, and → all 2,000 loaded.
// Each timed figure is the median of RUNS runs. Run: `npm run bench` in web/ (after `cargo build`).
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { launch, Omnigent } from '../tests/harness.mjs';

const RUNS = Number(process.env.RUNS ?? 7);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (ms) => `${ms.toFixed(1)} ms`;

const omni = await Omnigent.start();
const browser = await launch();
try {
  // Bundle: what index.html loads, gzipped as served (the .gz the build made).
  const dist = resolve(import.meta.dirname, '../dist');
  const html = readFileSync(resolve(dist, 'index.html'), 'utf8');
  const assets = [...html.matchAll(/(?:src|href)="\/(assets\/[^"]+\.(?:js|css))"/g)].map((m) => m[1]);
  const gz = (f) => readFileSync(resolve(dist, `${f}.gz`)).length;
  const bundle = assets.reduce((n, f) => n + gz(f), 0);
  const brotli = assets.reduce((n, f) => n + readFileSync(resolve(dist, `${f}.br`)).length, 0);

  for (let i = 0; i < 50; i++) await omni.api('POST', '/v1/sessions', { agent_id: omni.agents.echo, title: `bench ${i}` });
  const items = [];
  for (let i = 0; i < 1000; i++) {
    items.push({ type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: `question ${i}: what about **item ${i}**?` }] } });
    items.push({ type: 'message', data: { role: 'assistant', content: [{ type: 'output_text', text: `Answer ${i}, with \`code\` and a list:\n- one\n- two` }] } });
  }
  const long = await omni.api('POST', '/v1/sessions', { agent_id: omni.agents.echo, title: 'two thousand items', initial_items: items });
  const echo = await omni.session('echo', 'first token');

  const context = await browser.newContext({ baseURL: omni.url });
  const page = await context.newPage();
  const list = [];
  const open = [];
  const token = [];
  const all = [];
  for (let r = 0; r < RUNS; r++) {
    await page.goto('about:blank');
    await page.goto('/');
    await page.waitForFunction(() => performance.getEntriesByName('omnigent:sessions-rendered').length > 0);
    list.push(await page.evaluate(() => performance.getEntriesByName('omnigent:sessions-rendered')[0].startTime));

    await page.goto('about:blank');
    await page.goto(`/sessions/${long.id}`);
    await page.waitForFunction(() => performance.getEntriesByName('omnigent:transcript-rendered').length > 0);
    const rendered = await page.evaluate(
      () =>
        new Promise((ok) =>
          requestAnimationFrame(() => ok(performance.getEntriesByName('omnigent:transcript-rendered')[0].startTime)),
        ),
    );
    open.push(rendered);
    // The newest entries are painted first; the whole transcript is loaded behind them (the rest shows as
    // the reader scrolls up).
    await page.getByText('(1850 not shown)').waitFor();
    all.push(await page.evaluate(() => performance.now()));
    const count = await page.locator('article.msg').count();
    if (count !== 150) throw new Error(`the long session paints ${count} messages, not the newest 150`);

    await page.goto(`/sessions/${echo.id}`);
    await page.locator('section[data-connection=live]').waitFor();
    await page.getByLabel('Message').fill(`bench run ${r} with a few words`);
    token.push(
      await page.evaluate(
        (n) =>
          new Promise((ok) => {
            const t = document.querySelector('[data-testid=transcript]');
            const before = t.querySelectorAll('article.msg[data-role=assistant]').length;
            const start = performance.now();
            const seen = new MutationObserver(() => {
              const msgs = t.querySelectorAll('article.msg[data-role=assistant]');
              if (msgs.length > before && msgs[msgs.length - 1].querySelector('.md')?.textContent) {
                seen.disconnect();
                requestAnimationFrame(() => ok(performance.now() - start));
              }
            });
            seen.observe(t, { childList: true, subtree: true, characterData: true });
            document.querySelector('.composer button[type=submit]').click();
            void n;
          }),
        r,
      ),
    );
    await page.waitForFunction(() => document.querySelector('section.session')?.dataset.status === 'idle');
  }
  const figures = {
    'bundle (JS+CSS, gzip)': `${(bundle / 1024).toFixed(1)} KiB (brotli ${(brotli / 1024).toFixed(1)} KiB; ${assets.join(', ')})`,
    'navigation → session list rendered (50 sessions)': fmt(median(list)),
    'POST → first token painted (echo)': fmt(median(token)),
    '2,000-item session opened (newest 150 painted)': fmt(median(open)),
    '2,000-item session: all items loaded': fmt(median(all)),
  };
  for (const [k, v] of Object.entries(figures)) console.log(`${k}: ${v}`);
  console.log(`(median of ${RUNS} runs; list ${list.map((x) => x.toFixed(0)).join(' ')}; token ${token.map((x) => x.toFixed(0)).join(' ')}; open ${open.map((x) => x.toFixed(0)).join(' ')})`);
} finally {
  await browser.close();
  await omni.stop();
}

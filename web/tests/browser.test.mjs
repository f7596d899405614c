// Browser tests of the embedded web UI: Debian's Chromium (playwright-core, no downloaded browser) against a
// real `omnigent start` in a temp home (harness.mjs). Screenshots of each main screen, desktop and phone, go
// to target/web-artifacts/. Run: `npm run test:browser` in web/ (scripts/test runs it after cargo test).
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { launch, Omnigent, openPage, WAIT } from './harness.mjs';

const ARTIFACTS = resolve(import.meta.dirname, '../../target/web-artifacts');
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

let omni;
let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  omni = await Omnigent.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await omni?.stop();
});

const page = (options = {}) => openPage(browser, omni.url, options);

/** No script error and no CSP refusal happened on the page; then close it. */
async function done(p) {
  assert.deepEqual(p.errors, []);
  await p.context().close();
}

const shot = (p, name) => p.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: false });

/** The transcript as the page shows it: role and text of each message, in order. */
const transcript = (p) =>
  p.$$eval('[data-testid=transcript] article.msg', (els) =>
    els.map((e) => `${e.dataset.role}|${e.dataset.status}|${e.querySelector('.md')?.textContent ?? ''}`),
  );

/** Wait until the assistant's last message is complete and holds `text`. */
const answered = (p, text) =>
  p.waitForFunction(
    (t) => {
      const els = [...document.querySelectorAll('article.msg[data-role=assistant]')];
      const last = els[els.length - 1];
      return last?.dataset.status === 'completed' && last.textContent.includes(t);
    },
    text,
    { timeout: WAIT },
  );

test('the UI is served at / with its cache, encoding and security headers; API paths keep their JSON 404', async () => {
  const index = await fetch(`${omni.url}/`, { headers: { 'accept-encoding': 'br, gzip' } });
  assert.equal(index.status, 200);
  assert.equal(index.headers.get('cache-control'), 'no-cache');
  assert.equal(index.headers.get('x-frame-options'), 'DENY');
  const csp = index.headers.get('content-security-policy');
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  const html = await index.text();
  const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)[1];
  for (const [accept, encoding] of [
    ['br', 'br'],
    ['gzip', 'gzip'],
    ['identity', null],
  ]) {
    const r = await fetch(omni.url + asset, { headers: { 'accept-encoding': accept } });
    assert.equal(r.status, 200);
    assert.equal(r.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    assert.match(r.headers.get('content-type'), /javascript/);
    // fetch decodes the body itself; the header says what crossed the wire.
    assert.equal(r.headers.get('content-encoding'), encoding, accept);
    await r.arrayBuffer();
  }
  const client = await fetch(`${omni.url}/sessions/0123456789abcdef0123456789abcdef`);
  assert.equal(client.status, 200);
  assert.match(await client.text(), /<div id="app">/);
  for (const path of ['/v1/nope', '/health/x', '/api/nope', '/assets/missing.js']) {
    const r = await fetch(omni.url + path);
    assert.equal(r.status, 404, path);
    assert.equal((await r.json()).error.code, 'not_found', path);
  }
  const post = await fetch(`${omni.url}/sessions/x`, { method: 'POST' });
  assert.equal(post.status, 404);
});

test('a session made on the New session screen streams the echo answer, and the transcript survives a reload', async () => {
  const p = await page();
  await p.goto('/');
  await p.getByRole('heading', { name: 'Sessions' }).waitFor();
  // A session created elsewhere (the API) appears without a reload.
  const other = await omni.session('echo', 'made through the API');
  await p.getByText('made through the API').waitFor({ timeout: 3000 });
  await shot(p, 'sessions-desktop');

  await p.getByRole('navigation').getByRole('link', { name: 'New session' }).click();
  await p.getByRole('heading', { name: 'New session' }).waitFor();
  await p.getByLabel('Go to folder').fill(omni.home);
  await p.getByRole('button', { name: 'Open', exact: true }).click();
  await p.getByTestId('cwd').getByText(omni.home, { exact: true }).waitFor();
  await p.getByLabel('New folder name').fill('project');
  await p.getByRole('button', { name: 'Create folder' }).click();
  await p.getByTestId('cwd').getByText(join(omni.home, 'project'), { exact: true }).waitFor();
  await p.getByRole('button', { name: 'Use this folder' }).click();
  await p.getByTestId('workspace').getByText(join(omni.home, 'project')).waitFor();
  await p.getByLabel('Agent').selectOption({ label: 'echo' });
  await p.getByLabel('Title').fill('browser echo');
  await shot(p, 'new-session-desktop');
  await p.getByRole('button', { name: 'Create session' }).click();
  await p.waitForURL(/\/sessions\/[0-9a-f]{32}$/);
  const sessionUrl = p.url();

  const box = p.getByLabel('Message');
  // The composer is disabled (saying why) until the new session's runner is online.
  await p.waitForFunction(() => document.getElementById('message')?.disabled === false);
  await box.focus();
  await p.keyboard.type('hello **from** the browser');
  await p.keyboard.press('Shift+Enter');
  await p.keyboard.type('second line');
  await p.keyboard.press('Enter');
  // The optimistic message shows at once, before the answer.
  await p.locator('article.msg[data-role=user]').first().waitFor();
  await answered(p, 'second line');
  assert.equal(await box.inputValue(), '');
  const expected = [
    'user|completed|hello from the browser\nsecond line',
    'assistant|completed|hello from the browser\nsecond line',
  ];
  assert.deepEqual(await transcript(p), expected);
  // Markdown: **from** is bold, in both messages.
  assert.equal(await p.locator('article.msg strong', { hasText: 'from' }).count(), 2);
  await shot(p, 'session-desktop');

  await p.reload();
  await p.locator('article.msg[data-role=assistant][data-status=completed]').waitFor();
  assert.deepEqual(await transcript(p), expected);
  assert.equal(p.url(), sessionUrl);

  await p.goto('/hosts');
  await p.getByText('echo: ready').waitFor();
  await shot(p, 'hosts-desktop');
  await done(p);
  void other;
});

test('two browsers on one session see the same events in the same order', async () => {
  const { id } = await omni.session('echo', 'two viewers');
  const a = await page();
  const b = await page();
  await a.goto(`/sessions/${id}`);
  await b.goto(`/sessions/${id}`);
  for (const p of [a, b]) await p.locator('section[data-connection=live]').waitFor();
  await a.getByLabel('Message').fill('alpha from A');
  await a.getByLabel('Message').press('Enter');
  await answered(b, 'alpha from A');
  await b.getByLabel('Message').fill('beta from B');
  await b.getByRole('button', { name: 'Send' }).click();
  await answered(a, 'beta from B');
  await answered(b, 'beta from B');
  const seenByA = await transcript(a);
  assert.deepEqual(seenByA, [
    'user|completed|alpha from A',
    'assistant|completed|alpha from A',
    'user|completed|beta from B',
    'assistant|completed|beta from B',
  ]);
  assert.deepEqual(await transcript(b), seenByA);
  // Presence comes with the live-client routes (`session.presence`); a server with them also answers
  // GET /v1/harnesses, so check presence when it does.
  const live = (await fetch(`${omni.url}/v1/harnesses`)).status !== 404;
  if (live) {
    for (const p of [a, b]) await p.getByTestId('presence').getByText('2 watching').waitFor();
  }
  await done(a);
  await done(b);
});

test('the server killed mid-stream: the page says it is reconnecting, then shows every message exactly once', async () => {
  const { id, workspace } = await omni.session('exec', 'server restart');
  const p = await page();
  await p.goto(`/sessions/${id}`);
  await p.locator('section[data-connection=live]').waitFor();
  // Every connection state the page goes through, recorded as it changes.
  await p.evaluate(() => {
    const section = document.querySelector('section.session');
    window.__states = [section.dataset.connection];
    new MutationObserver(() => window.__states.push(section.dataset.connection)).observe(section, {
      attributes: true,
      attributeFilter: ['data-connection'],
    });
  });
  await p.getByLabel('Message').fill('slow one');
  await p.getByLabel('Message').press('Enter');
  await p.locator('article.msg[data-role=assistant]', { hasText: 'first part' }).waitFor();

  process.kill(await omni.serverPid(), 'SIGKILL');
  await p.getByTestId('reconnecting').waitFor();
  await shot(p, 'session-reconnecting-desktop');
  // The daemon restarts the server; the page reconnects by itself with Last-Event-ID.
  await p.waitForFunction(() => window.__states.at(-1) === 'live' && window.__states.includes('reconnecting'), null, {
    timeout: WAIT,
  });
  writeFileSync(join(workspace, 'go'), '');
  await answered(p, 'second part');
  const shown = await transcript(p);
  assert.deepEqual(shown, ['user|completed|slow one', 'assistant|completed|first part\nsecond part'], String(shown));
  await p.reload();
  await answered(p, 'second part');
  assert.deepEqual(await transcript(p), shown);
  await done(p);
});

test('Stop interrupts a long turn', async () => {
  const { id } = await omni.session('exec', 'long turn');
  const p = await page();
  await p.goto(`/sessions/${id}`);
  await p.locator('section[data-connection=live]').waitFor();
  await p.getByLabel('Message').fill('long turn please');
  await p.getByLabel('Message').press('Enter');
  await p.locator('article.msg[data-role=assistant]', { hasText: 'started' }).waitFor();
  await p.locator('section[data-status=running]').waitFor();
  const stop = p.getByRole('button', { name: 'Stop' });
  assert.equal(await stop.isEnabled(), true);
  await stop.click();
  await p.locator('section[data-status=idle]').waitFor();
  assert.equal(await stop.isEnabled(), false);
  // The partial answer stays, marked as stopped; the session takes the next message.
  await p.locator('article.msg[data-role=assistant]', { hasText: 'started' }).waitFor();
  await p.getByLabel('Message').fill('after the stop');
  await p.getByLabel('Message').press('Enter');
  await answered(p, 'exec says: after the stop');
  await done(p);
});

test('HTML and javascript: links from a user or a model render inert', async () => {
  const { id } = await omni.session('echo', 'xss');
  const p = await page();
  const dialogs = [];
  p.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await p.goto(`/sessions/${id}`);
  await p.locator('section[data-connection=live]').waitFor();
  const attack =
    '<img src=x onerror="window.__xss=1;alert(1)"> <script>window.__xss=2</script> ' +
    '[click me](javascript:window.__xss=3) [data](data:text/html,<b>x</b>) <a href="javascript:alert(4)">raw</a>';
  await p.getByLabel('Message').fill(attack);
  await p.getByLabel('Message').press('Enter');
  await answered(p, 'click me');
  const t = p.getByTestId('transcript');
  assert.equal(await t.locator('img, script, iframe').count(), 0);
  assert.equal(await t.locator('a').count(), 0, 'no link: their schemes are not http(s) or mailto');
  await t.getByText('[click me](javascript:window.__xss=3)').first().click();
  assert.equal(await p.evaluate(() => window.__xss), undefined);
  assert.deepEqual(dialogs, []);
  // The source shows as text, in the user's message and in the echoed answer.
  assert.equal(await t.getByText('<img src=x onerror=', { exact: false }).count(), 2);
  // A safe link stays a link, opening elsewhere without the opener.
  await p.getByLabel('Message').fill('see [the docs](https://example.com/docs)');
  await p.getByLabel('Message').press('Enter');
  await answered(p, 'the docs');
  const link = t.locator('a', { hasText: 'the docs' }).last();
  assert.equal(await link.getAttribute('href'), 'https://example.com/docs');
  assert.match(await link.getAttribute('rel'), /noopener/);
  await done(p);
});

test('a phone viewport has no horizontal scroll and 44px touch targets; dark mode renders', async () => {
  const { id } = await omni.session('echo', 'a rather long session title that must wrap on a phone screen');
  const wide = 'averyveryveryverylongwordwithoutanyspacesthatmustnotwidenthepage'.repeat(3);
  await omni.api('POST', `/v1/sessions/${id}/events`, {
    type: 'message',
    data: { role: 'user', content: [{ type: 'input_text', text: `${wide}\n\n\`\`\`\n${wide} code\n\`\`\`` }] },
  });
  for (const scheme of ['light', 'dark']) {
    const p = await page({ ...PHONE, colorScheme: scheme });
    for (const [path, name, ready] of [
      ['/', 'sessions', '[data-testid=session-list]'],
      ['/new', 'new-session', '[data-testid=cwd]'],
      [`/sessions/${id}`, 'session', 'article.msg[data-role=assistant][data-status=completed]'],
      ['/hosts', 'hosts', '.card'],
    ]) {
      await p.goto(path);
      await p.locator(ready).first().waitFor();
      const { scroll, width } = await p.evaluate(() => ({
        scroll: document.documentElement.scrollWidth,
        width: window.innerWidth,
      }));
      assert.ok(scroll <= width, `${path}: scrollWidth ${scroll} > ${width}`);
      const small = await p.$$eval('button, nav a, .session-row, input, select, textarea, summary', (els) =>
        els
          .filter((e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')
          .map((e) => [e.tagName, e.textContent.trim().slice(0, 30), Math.round(e.getBoundingClientRect().height)])
          .filter(([tag, , h]) => h < 44 && !(tag === 'INPUT' && h >= 22)),
      );
      assert.deepEqual(small, [], `${path}: touch targets under 44px`);
      await shot(p, `${name}-phone${scheme === 'dark' ? '-dark' : ''}`);
    }
    await done(p);
  }
});

test('a 2,000-item transcript opens on its newest messages and shows all of them when scrolled up', async () => {
  const items = [];
  for (let i = 0; i < 1000; i++) {
    items.push({ type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: `question ${i}` }] } });
    items.push({ type: 'message', data: { role: 'assistant', content: [{ type: 'output_text', text: `answer ${i}` }] } });
  }
  const long = await omni.api('POST', '/v1/sessions', { agent_id: omni.agents.echo, title: 'long', initial_items: items });
  const p = await page();
  await p.goto(`/sessions/${long.id}`);
  await p.getByText('answer 999', { exact: true }).waitFor();
  await p.getByText('(1850 not shown)').waitFor();
  // Scrolling to the top brings the earlier ones, a window at a time, until all 2,000 are there.
  await p.waitForFunction(
    () => {
      const t = document.querySelector('[data-testid=transcript]');
      t.scrollTop = 0;
      return !document.querySelector('[data-testid=earlier]');
    },
    null,
    { timeout: WAIT, polling: 100 },
  );
  const shown = await p.$$eval('article.msg .md', (els) => els.map((e) => e.textContent));
  assert.equal(shown.length, 2000);
  assert.deepEqual(shown.slice(0, 3), ['question 0', 'answer 0', 'question 1']);
  assert.equal(shown[1999], 'answer 999');
  await done(p);
});

test('keyboard only: the skip link, the navigation and the composer work without a mouse', async () => {
  const { id } = await omni.session('echo', 'keyboard');
  const p = await page();
  await p.goto('/');
  await p.getByRole('heading', { name: 'Sessions' }).waitFor();
  const focused = () => p.evaluate(() => document.activeElement?.textContent?.trim());
  await p.keyboard.press('Tab');
  assert.equal(await focused(), 'Skip to content');
  for (const name of ['omnigent', 'Sessions', 'New session']) {
    await p.keyboard.press('Tab');
    assert.equal(await focused(), name);
  }
  await p.keyboard.press('Enter');
  await p.getByRole('heading', { name: 'New session' }).waitFor();
  await p.goto(`/sessions/${id}`);
  await p.waitForFunction(() => document.getElementById('message')?.disabled === false);
  // From the page's start, Tab reaches the composer: type, Enter sends.
  for (let i = 0; i < 20 && (await p.evaluate(() => document.activeElement?.id)) !== 'message'; i++) {
    await p.keyboard.press('Tab');
  }
  assert.equal(await p.evaluate(() => document.activeElement?.id), 'message');
  await p.keyboard.type('typed without a mouse');
  await p.keyboard.press('Enter');
  await answered(p, 'typed without a mouse');
  await done(p);
});

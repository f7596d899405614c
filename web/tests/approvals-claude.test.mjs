// Approvals in the browser with a real agent (issue 15 item 6): a real `omnigent start` whose host runs the
// session on the `claude-sdk` harness, i.e. the real Claude Code CLI (testkit/agent-clis), talking to a
// scripted fake Messages API on loopback (fake-anthropic.mjs). Claude Code asks before a Bash command; the
// question shows on the desktop and the phone; the phone approves and the command really runs in the
// workspace; on the next turn the desktop denies and it does not. Run: `npm run test:browser` in web/.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { FakeAnthropic, text, toolUse } from './fake-anthropic.mjs';
import { launch, Omnigent, openPage } from './harness.mjs';

const ARTIFACTS = resolve(import.meta.dirname, '../../target/web-artifacts');
const CLAUDE = resolve(import.meta.dirname, '../../target/agent-clis/node_modules/.bin/claude');
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

// `sh -c` so that Claude Code's default `acceptEdits` mode does not allow it by itself.
const bash = (file) => ({ command: `sh -c "touch ${file}"`, description: `Make ${file}` });

let omni;
let browser;
let vendor;

before(async () => {
  assert.ok(existsSync(CLAUDE), `Claude Code is not installed at ${CLAUDE}: run testkit/agent-clis/install`);
  mkdirSync(ARTIFACTS, { recursive: true });
  vendor = await FakeAnthropic.start([
    toolUse('msg_1', 'toolu_1', 'Bash', bash('approved.txt')),
    text('msg_2', 'Made approved.txt.'),
    toolUse('msg_3', 'toolu_2', 'Bash', bash('denied.txt')),
    text('msg_4', 'Left denied.txt alone.'),
  ]);
  const agentHome = mkdtempSync(join(tmpdir(), 'omnigent-claude-home-'));
  mkdirSync(join(agentHome, '.claude'));
  omni = await Omnigent.start({
    env: {
      HOME: agentHome,
      CLAUDE_CONFIG_DIR: join(agentHome, '.claude'),
      OMNIGENT_CLAUDE_PATH: CLAUDE,
      ANTHROPIC_BASE_URL: vendor.url,
      ANTHROPIC_API_KEY: 'test',
      OMNIGENT_MODEL: 'claude-sonnet-4-5',
    },
  });
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await omni?.stop();
  vendor?.close();
});

const page = (options = {}) => openPage(browser, omni.url, options);

const cards = (p) => p.locator('[data-testid=approval]');

test('Claude Code asks; the phone approves and the command runs; the desktop denies the next and it does not', async () => {
  const session = await omni.session('claude-sdk', 'claude approvals');
  const desk = await page();
  const phone = await page(PHONE);
  for (const p of [desk, phone]) {
    await p.goto(`/sessions/${session.id}`);
    await p.locator('section[data-connection=live]').waitFor();
  }

  // Turn 1: the agent asks before `touch approved.txt`; both devices show the card; the phone approves.
  await desk.getByLabel('Message').fill('make approved.txt');
  await desk.getByLabel('Message').press('Enter');
  for (const p of [desk, phone]) {
    const card = cards(p).first();
    await card.waitFor();
    assert.equal(await card.getAttribute('data-state'), 'pending');
    assert.match(await card.textContent(), /touch approved\.txt/);
    assert.equal(await card.locator('code').first().textContent(), 'Bash');
    await p.locator('.badge', { hasText: 'waiting for approval' }).waitFor();
  }
  assert.equal(existsSync(join(session.workspace, 'approved.txt')), false, 'the command ran before the answer');
  await phone.screenshot({ path: join(ARTIFACTS, 'approval-claude-phone.png') });
  await cards(phone).first().getByRole('button', { name: 'Approve' }).click();
  await cards(phone).first().locator('[data-testid=outcome]', { hasText: 'Approved by you' }).waitFor();
  await cards(desk).first().locator('[data-testid=outcome]', { hasText: 'Approved by another device' }).waitFor();
  await desk.locator('article[data-role=assistant]', { hasText: 'Made approved.txt.' }).waitFor();
  assert.equal(existsSync(join(session.workspace, 'approved.txt')), true, 'the approved command did not run');
  await desk.locator('details.entry.tool', { hasText: 'Bash' }).first().waitFor();

  // Turn 2: the next command is denied from the desktop; the agent hears it and the file is never made.
  await desk.getByLabel('Message').fill('make denied.txt');
  await desk.getByLabel('Message').press('Enter');
  const second = (p) => cards(p).nth(1);
  for (const p of [desk, phone]) await second(p).waitFor();
  assert.match(await second(desk).textContent(), /touch denied\.txt/);
  await second(desk).getByRole('button', { name: 'Deny' }).click();
  await second(desk).locator('[data-testid=outcome]', { hasText: 'Denied by you' }).waitFor();
  await second(phone).locator('[data-testid=outcome]', { hasText: 'Denied by another device' }).waitFor();
  await phone.locator('article[data-role=assistant]', { hasText: 'Left denied.txt alone.' }).waitFor();
  assert.equal(existsSync(join(session.workspace, 'denied.txt')), false, 'the denied command ran');
  const told = JSON.stringify(vendor.requests[3].messages).toLowerCase();
  assert.match(told, /denied/);
  await desk.screenshot({ path: join(ARTIFACTS, 'approval-claude-desktop.png') });
  for (const p of [desk, phone]) {
    assert.deepEqual(p.errors, []);
    await p.context().close();
  }
});

// Approvals in the browser (issue 15 item 6): a real `omnigent start` (harness.mjs), a scripted runner bound
// to the session (fake-runner.mjs: it asks before a tool runs, as an agent CLI's permission prompt does), and
// two Chromium pages (desktop and phone). The question shows on both as a card, either device answers, the
// first answer wins and both cards say who won; a page opened while a question is pending shows it from the
// snapshot. Screenshots go to target/web-artifacts/. Run: `npm run test:browser` in web/.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { FakeRunner } from './fake-runner.mjs';
import { launch, Omnigent, openPage } from './harness.mjs';

const ARTIFACTS = resolve(import.meta.dirname, '../../target/web-artifacts');
const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

let omni;
let browser;
let runner;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  omni = await Omnigent.start();
  browser = await launch();
  runner = await FakeRunner.connect(omni.url, 'runner_web_approvals');
});

after(async () => {
  runner?.close();
  await browser?.close();
  await omni?.stop();
});

const page = (options = {}) => openPage(browser, omni.url, options);

async function done(p) {
  assert.deepEqual(p.errors, []);
  await p.context().close();
}

const question = (id, command) => ({
  type: 'response.elicitation_request',
  elicitation_id: id,
  method: 'elicitation/create',
  params: {
    mode: 'form',
    message: `Allow Bash: \`${command}\`?`,
    phase: 'pre_tool_use',
    policy_name: 'claude-code',
    content_preview: JSON.stringify({ command }),
    tool_name: 'Bash',
  },
});

const card = (p, id) => p.locator(`[data-testid=approval][data-id=${id}]`);

test('a question shows on every device, the first answer wins, and a late page sees what is pending', async () => {
  const session = await omni.api('POST', '/v1/sessions', { agent_id: omni.agents.echo, title: 'approvals' });
  await omni.api('PATCH', `/v1/sessions/${session.id}`, { runner_id: runner.runnerId });
  const desk = await page();
  const phone = await page(PHONE);
  for (const p of [desk, phone]) {
    await p.goto(`/sessions/${session.id}`);
    await p.locator('section[data-connection=live]').waitFor();
  }

  // A turn starts, and the agent asks before it runs a command.
  await desk.getByLabel('Message').fill('clean the build');
  await desk.getByLabel('Message').press('Enter');
  await runner.posted((e) => e.type === 'message');
  runner.push({ type: 'session.status', status: 'running', response_id: 'resp_1' });
  runner.push(question('elicit_rm', 'rm -rf build'));
  runner.push({ type: 'session.status', status: 'waiting' });
  for (const p of [desk, phone]) {
    const c = card(p, 'elicit_rm');
    await c.waitFor();
    assert.equal(await c.getAttribute('data-state'), 'pending');
    assert.match(await c.textContent(), /Allow Bash: `rm -rf build`\?/);
    assert.match(await c.locator('pre.preview').textContent(), /"command": "rm -rf build"/);
    assert.equal(await c.locator('code').textContent(), 'Bash');
    await p.locator('.badge', { hasText: 'waiting for approval' }).waitFor();
    assert.equal(await c.getByRole('button', { name: 'Approve' }).isEnabled(), true);
  }
  await desk.screenshot({ path: join(ARTIFACTS, 'approval-desktop.png') });
  await phone.screenshot({ path: join(ARTIFACTS, 'approval-phone.png') });

  // The phone denies first: the runner gets the answer, both cards say who won.
  await card(phone, 'elicit_rm').getByRole('button', { name: 'Deny' }).click();
  const forwarded = await runner.posted((e) => e.type === 'approval');
  assert.deepEqual(forwarded, { type: 'approval', data: { elicitation_id: 'elicit_rm', action: 'decline' } });
  await card(phone, 'elicit_rm').locator('[data-testid=outcome]', { hasText: 'Denied by you' }).waitFor();
  await card(desk, 'elicit_rm').locator('[data-testid=outcome]', { hasText: 'Denied by another device' }).waitFor();
  assert.equal(await card(desk, 'elicit_rm').getByRole('button').count(), 0);
  await phone.screenshot({ path: join(ARTIFACTS, 'approval-phone-answered.png') });

  // A second question; a page opened after it was asked shows it from the snapshot, and approves it.
  runner.push(question('elicit_ls', 'ls -la'));
  await card(desk, 'elicit_ls').waitFor();
  const late = await page();
  await late.goto(`/sessions/${session.id}`);
  await card(late, 'elicit_ls').waitFor();
  await card(late, 'elicit_ls').getByRole('button', { name: 'Approve' }).click();
  await runner.posted((e) => e.type === 'approval' && e.data.elicitation_id === 'elicit_ls');
  await card(late, 'elicit_ls').locator('[data-testid=outcome]', { hasText: 'Approved by you' }).waitFor();
  await card(desk, 'elicit_ls').locator('[data-testid=outcome]', { hasText: 'Approved by another device' }).waitFor();

  // A question the turn leaves unanswered expires on every card.
  runner.push(question('elicit_make', 'make'));
  await card(phone, 'elicit_make').waitFor();
  runner.push({ type: 'response.completed', response: { id: 'resp_1' } });
  runner.push({ type: 'session.status', status: 'idle' });
  await card(phone, 'elicit_make').locator('[data-testid=outcome]', { hasText: 'Expired' }).waitFor();
  for (const p of [desk, phone, late]) await done(p);
});

// LAN co-driving in a real browser (issue 13, Tests): a network namespace joined to this one by a veth pair
// on a private /30 only this test uses (10.213.N.1 here, .2 inside; nothing leaves the machine), Debian's
// Chromium launched inside it through a wrapper (`ip netns exec NS chromium "$@"`), against a real
// `omnigent start --lan`. The owner acts on loopback (the CLI, the API); the browsers are other machines.
// Needs root and iproute2: without them the test fails saying so. Run: `npm run test:browser:lan` in web/.
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { BIN, CHROMIUM, launch, Omnigent, WAIT } from './harness.mjs';

const run = promisify(execFile);
const ARTIFACTS = resolve(import.meta.dirname, '../../target/web-artifacts');

function ip(...args) {
  try {
    execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    throw new Error(`ip ${args.join(' ')} failed (these tests need root and iproute2): ${e.stderr ?? e.message}`);
  }
}

/** The namespace, the veth pair and the /30; `remove()` undoes all of it. */
function makeNetns() {
  const tag = `${process.pid % 100000}w`;
  const octet = 1 + ((process.pid * 13 + 101) % 250);
  const n = { name: `omweb${tag}`, hostIf: `owh${tag}`, nsIf: `own${tag}`, hostIp: `10.213.${octet}.1`, nsIp: `10.213.${octet}.2` };
  for (const args of [['netns', 'del', n.name], ['link', 'del', n.hostIf]]) {
    try {
      execFileSync('ip', args, { stdio: 'ignore' });
    } catch {
      // Not left over.
    }
  }
  ip('netns', 'add', n.name);
  ip('link', 'add', n.hostIf, 'type', 'veth', 'peer', 'name', n.nsIf);
  ip('link', 'set', n.nsIf, 'netns', n.name);
  ip('addr', 'add', `${n.hostIp}/30`, 'dev', n.hostIf);
  ip('link', 'set', n.hostIf, 'up');
  ip('netns', 'exec', n.name, 'ip', 'addr', 'add', `${n.nsIp}/30`, 'dev', n.nsIf);
  ip('netns', 'exec', n.name, 'ip', 'link', 'set', n.nsIf, 'up');
  ip('netns', 'exec', n.name, 'ip', 'link', 'set', 'lo', 'up');
  n.remove = () => {
    for (const args of [['netns', 'del', n.name], ['link', 'del', n.hostIf]]) {
      try {
        execFileSync('ip', args, { stdio: 'ignore' });
      } catch {
        // Already gone.
      }
    }
  };
  return n;
}

let ns;
let omni;
let browser;
const secrets = [];

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  ns = makeNetns();
  omni = await Omnigent.start({ lan: true });
  const wrapper = join(omni.home, 'chromium-in-netns.sh');
  writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${ns.name} ${CHROMIUM} "$@"\n`);
  chmodSync(wrapper, 0o755);
  browser = await launch(wrapper);
});

after(async () => {
  await browser?.close();
  await omni?.stop();
  ns?.remove();
});

/** `omnigent share --json` as the owner; the URL on the namespace link. */
async function share(role, sessionId) {
  const args = ['share', '--role', role, '--json'];
  if (sessionId) args.push('--session', sessionId);
  const { stdout } = await run(BIN, args, { env: omni.env, timeout: WAIT });
  assert.ok(!stdout.includes('omd_'), 'no token in share --json');
  const code = JSON.parse(stdout);
  secrets.push(code.code);
  const url = code.urls.find((u) => u.startsWith(`http://${ns.hostIp}:`));
  assert.ok(url, `a pairing URL on ${ns.hostIp}: ${code.urls}`);
  return { ...code, url };
}

async function newPage() {
  const context = await browser.newContext();
  context.setDefaultTimeout(WAIT);
  const p = await context.newPage();
  p.errors = [];
  p.on('pageerror', (e) => p.errors.push(e));
  return p;
}

/** Open the pairing URL, name the device, confirm; lands on the session. The role text the page showed. */
async function pair(p, url, name, sessionId) {
  await p.goto(url);
  await p.waitForSelector('[data-testid=pair-role]');
  // The code left the address bar (and the history entry was replaced) before the page showed anything.
  assert.ok(!p.url().includes('code='), p.url());
  const role = await p.textContent('[data-testid=pair-role]');
  if (name === 'viewer-phone') await p.screenshot({ path: join(ARTIFACTS, 'pair-viewer.png') });
  await p.fill('#device-name', name);
  await p.click('button[type=submit]');
  await p.waitForURL(`**/sessions/${sessionId}`);
  assert.ok(!p.url().includes('code='));
  const cookies = await p.context().cookies();
  const c = cookies.find((k) => k.name.includes('omnigent_device'));
  assert.ok(c?.httpOnly, 'an HttpOnly device cookie');
  secrets.push(c.value);
  assert.equal(await p.evaluate(() => location.hash), '');
  return role;
}

test('a viewer pairs through the QR URL, watches the driver co-drive, cannot send, and is cut off when revoked', async () => {
  const s = await omni.session('echo', 'lan co-drive');

  // An unpaired browser on the LAN gets the "not paired" screen.
  const stranger = await newPage();
  await stranger.goto(`http://${ns.hostIp}:${omni.port}/sessions/${s.id}`);
  await stranger.waitForSelector('[data-testid=unpaired]');
  assert.match(await stranger.textContent('[data-testid=unpaired]'), /omnigent share/);
  await stranger.context().close();

  const viewerCode = await share('viewer', s.id);
  const viewer = await newPage();
  const role = await pair(viewer, viewerCode.url, 'viewer-phone', s.id);
  assert.match(role, /watch sessions\./);

  // The viewer's composer is disabled, and says why.
  await viewer.waitForSelector('#composer-reason');
  assert.match(await viewer.textContent('#composer-reason'), /viewer/);
  assert.equal(await viewer.isDisabled('#message'), true);

  const driverCode = await share('driver', s.id);
  const driver = await newPage();
  await pair(driver, driverCode.url, 'driver-laptop', s.id);

  // Presence names both devices and who can drive.
  await viewer.waitForFunction(() => {
    const names = [...document.querySelectorAll('[data-testid=watcher]')].map((e) => e.textContent);
    return names.some((n) => n.includes('driver-laptop') && n.includes('✎')) && names.some((n) => n.includes('viewer-phone'));
  });

  // The driver sends; the viewer sees the message and the streamed answer.
  await driver.waitForSelector('#message:not([disabled])');
  await driver.fill('#message', 'hello from the driver');
  await driver.press('#message', 'Enter');
  await viewer.waitForFunction(() => {
    const msgs = [...document.querySelectorAll('article.msg')];
    const user = msgs.some((m) => m.dataset.role === 'user' && m.textContent.includes('hello from the driver'));
    const answer = msgs.some(
      (m) => m.dataset.role === 'assistant' && m.dataset.status === 'completed' && m.textContent.includes('hello from the driver'),
    );
    return user && answer;
  });
  await viewer.screenshot({ path: join(ARTIFACTS, 'lan-viewer.png') });

  // A send from the viewer anyway (past the disabled composer) is refused by the server, saying why.
  const refused = await viewer.evaluate(async (id) => {
    const r = await fetch(`/v1/sessions/${id}/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: 'sneaky' }] } }),
    });
    return { status: r.status, body: await r.json() };
  }, s.id);
  assert.equal(refused.status, 403);
  assert.match(refused.body.error.message, /driver/);
  const items = await omni.api('GET', `/v1/sessions/${s.id}/items?order=asc`);
  assert.ok(!JSON.stringify(items).includes('sneaky'), 'the refused message is not stored');

  // Revoking the viewer cuts its open stream: the page shows the not-paired screen.
  const { stdout } = await run(BIN, ['devices', '--json'], { env: omni.env, timeout: WAIT });
  const device = JSON.parse(stdout).data.find((d) => d.name === 'viewer-phone');
  assert.ok(device, stdout);
  const t0 = Date.now();
  await run(BIN, ['devices', 'revoke', device.id], { env: omni.env, timeout: WAIT });
  await viewer.waitForSelector('[data-testid=unpaired]', { timeout: 5000 });
  assert.ok(Date.now() - t0 < 5000);
  // The driver is still there.
  assert.equal(await driver.isDisabled('#message'), false);

  assert.deepEqual(viewer.errors, []);
  assert.deepEqual(driver.errors, []);
  await viewer.context().close();
  await driver.context().close();
});

test('after the run, no token and no pairing code is in any log file', async () => {
  assert.ok(secrets.length >= 4, `collected ${secrets.length} secrets`);
  const files = [];
  const walk = (dir) => {
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && !/\.db(-wal|-shm)?$/.test(name)) files.push(p);
    }
  };
  walk(omni.home);
  assert.ok(files.some((f) => f.endsWith('.log')), `log files: ${files}`);
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    for (const secret of secrets) assert.ok(!text.includes(secret), `a secret is in ${f}`);
  }
});

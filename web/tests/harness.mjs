// A real `omnigent start` (daemon, server, this machine as a host) in a temp OMNIGENT_HOME on a free port,
// and Debian's Chromium driven by playwright-core: what the browser tests and the benchmark run against.
// The binary is $OMNIGENT_BIN, else ../target/debug/omnigent (built by `cargo build` / `cargo test`).
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const run = promisify(execFile);
export const BIN = process.env.OMNIGENT_BIN ?? resolve(import.meta.dirname, '../../target/debug/omnigent');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** Bound on every wait for a signal; hitting it fails the test instead of hanging it. */
export const WAIT = 30_000;

/** The exec harness's agent: the prompt is its last argument, and the new message that prompt's last line (the
 * conversation so far comes before it from the second turn on). `slow…` waits for a file `go` in the
 * workspace between two lines; `long…` prints one line and sleeps (a turn only Stop ends); else one line. */
const AGENT = `#!/bin/sh
for last; do :; done
last=$(printf '%s\n' "$last" | tail -n 1)
case "$last" in
  slow*) echo "first part"; while [ ! -e go ]; do sleep 0.05; done; echo "second part" ;;
  long*) echo "started"; exec sleep 120 ;;
  *) echo "exec says: $last" ;;
esac
`;

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

export class Omnigent {
  /** `lan`: `omnigent start --lan` (the server also listens on every interface; loopback stays the owner).
   * `env`: more variables for the daemon (and, through its allowlist, its runners). */
  static async start({ lan = false, env = {} } = {}) {
    const o = new Omnigent();
    o.home = mkdtempSync(join(tmpdir(), 'omnigent-web-'));
    o.port = await freePort();
    if (o.port === 6767) o.port = await freePort();
    writeFileSync(join(o.home, 'agent.sh'), AGENT);
    o.env = {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      OMNIGENT_HOME: o.home,
      OMNIGENT_SERVER_PORT: String(o.port),
      OMNIGENT_EXEC_COMMAND: `/bin/sh ${join(o.home, 'agent.sh')}`,
      RUST_LOG: 'info,sqlx=warn',
      ...env,
    };
    const started = await o.json(lan ? ['start', '--lan', '--json'] : ['start', '--json']);
    o.url = started.server.url;
    const status = await o.json(['status', '--json']);
    o.hostId = status.config.host_id;
    const agents = await o.api('GET', '/v1/agents');
    o.agents = Object.fromEntries(agents.data.map((a) => [a.harness, a.id]));
    return o;
  }

  async json(args) {
    const { stdout } = await run(BIN, args, { env: this.env, timeout: WAIT });
    return JSON.parse(stdout);
  }

  async stop() {
    await run(BIN, ['stop'], { env: this.env, timeout: WAIT }).catch(() => {});
    rmSync(this.home, { recursive: true, force: true });
  }

  async serverPid() {
    return (await this.json(['status', '--json'])).server.pid;
  }

  async api(method, path, body) {
    const resp = await fetch(this.url + path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await resp.text();
    if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** Wait until this machine's host tunnel is connected to the server (after a server restart it redials). */
  async hostOnline() {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const host = await this.api('GET', `/v1/hosts/${this.hostId}`).catch(() => null);
      if (host?.status === 'online') return;
      if (Date.now() > deadline) throw new Error(`host ${this.hostId} not online within ${WAIT} ms`);
      await new Promise((ok) => setTimeout(ok, 50));
    }
  }

  /** A session of `harness` on this host (once it is online), its workspace a new temp dir under the home. */
  async session(harness, title, extra = {}) {
    await this.hostOnline();
    const workspace = mkdtempSync(join(this.home, 'ws-'));
    const s = await this.api('POST', '/v1/sessions', {
      agent_id: this.agents[harness],
      host_id: this.hostId,
      workspace,
      title,
      ...extra,
    });
    return { id: s.id, workspace };
  }
}

/** A new page of its own browser context on `baseURL` (`options`: a device, say), with every wait bounded by
 * WAIT; `page.errors` collects its script errors and CSP refusals (an inline script or style, something from
 * elsewhere), which a test asserts empty. */
export async function openPage(browser, baseURL, options = {}) {
  const context = await browser.newContext({ baseURL, ...options });
  context.setDefaultTimeout(WAIT);
  const p = await context.newPage();
  const errors = [];
  p.on('pageerror', (e) => errors.push(e));
  p.on('console', (m) => m.text().includes('Content Security Policy') && errors.push(m.text()));
  p.errors = errors;
  return p;
}

/** `executablePath`: another Chromium start command (the LAN tests wrap it in `ip netns exec`). */
export function launch(executablePath = CHROMIUM) {
  return chromium.launch({
    executablePath,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

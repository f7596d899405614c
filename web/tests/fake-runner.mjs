// A scripted runner for the browser tests: a real runner tunnel client (WebSocket, the frames of
// proto::runner_frames) that answers the server's requests as `omnigent runner` does and streams exactly the
// events a test pushes, so the UI can be shown what only an agent CLI does (ask before a tool runs) without
// one. It dials from loopback under a plain runner id (no binding token needed there).
import { ws as WebSocket } from 'playwright-core/lib/utilsBundle';
import { WAIT } from './harness.mjs';

export class FakeRunner {
  /** Dial `serverUrl` as runner `runnerId`; resolves once the server lists it online (the tunnel is registered). */
  static async connect(serverUrl, runnerId) {
    const r = new FakeRunner();
    r.runnerId = runnerId;
    r.seen = [];
    r.waiters = [];
    r.stream = null;
    const url = `${serverUrl.replace(/^http/, 'ws')}/v1/runners/${runnerId}/tunnel`;
    r.socket = new WebSocket(url, { headers: { origin: 'omnigent://internal' } });
    r.socket.on('message', (data) => {
      const frame = JSON.parse(String(data));
      if (frame.kind === 'ping') r.send({ kind: 'pong', ts: frame.ts });
      else if (frame.kind === 'request') r.request(frame);
    });
    await new Promise((ok, fail) => {
      r.socket.once('error', fail);
      r.socket.once('open', ok);
    });
    r.send({ kind: 'hello', runner_version: 'fake', frame_protocol_version: 1, harnesses: ['echo'], envs: [], telemetry_opt_out: true });
    const deadline = Date.now() + WAIT;
    for (;;) {
      const status = await fetch(`${serverUrl}/v1/runners/${runnerId}/status`).then((x) => x.json());
      if (status.online) return r;
      if (Date.now() > deadline) throw new Error(`runner ${runnerId} not registered within ${WAIT} ms`);
      await new Promise((ok) => setTimeout(ok, 20));
    }
  }

  send(frame) {
    this.socket.send(JSON.stringify(frame));
  }

  answer(id, status, body) {
    this.send({ kind: 'response.head', id, status, headers: [['content-type', 'application/json']] });
    this.send({ kind: 'response.body', id, body: JSON.stringify(body), encoding: 'utf-8' });
    this.send({ kind: 'response.end', id });
  }

  request({ id, method, path, body }) {
    const json = body ? JSON.parse(body) : null;
    if (method === 'GET' && path.endsWith('/stream')) {
      this.send({ kind: 'response.head', id, status: 200, headers: [['content-type', 'text/event-stream']] });
      this.stream = id;
      this.push({ type: 'session.heartbeat' });
    } else if (method === 'POST' && path === '/v1/sessions') {
      this.answer(id, 201, {});
    } else if (method === 'GET') {
      this.answer(id, 200, { status: 'idle' });
    } else if (method === 'POST' && path.endsWith('/events')) {
      this.note(json);
      this.answer(id, 202, { status: 'accepted' });
    } else {
      this.answer(id, 404, { code: 'not_found' });
    }
  }

  /** One event on the session's stream, as the runner's SSE writes it. */
  push(event) {
    if (this.stream === null) throw new Error('the server has not opened the session stream yet');
    this.send({ kind: 'response.body', id: this.stream, body: `data: ${JSON.stringify(event)}\n\n`, encoding: 'utf-8' });
  }

  note(event) {
    this.seen.push(event);
    for (const w of this.waiters.splice(0)) w();
  }

  /** The first event the server posted to this runner that `match` accepts (waiting for it). */
  async posted(match) {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const found = this.seen.find(match);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the runner got no matching event within ${WAIT} ms: ${JSON.stringify(this.seen)}`);
      await new Promise((ok) => {
        const t = setTimeout(ok, left);
        this.waiters.push(() => {
          clearTimeout(t);
          ok();
        });
      });
    }
  }

  close() {
    this.socket.close();
  }
}

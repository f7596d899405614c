// The session stream (`GET /v1/sessions/{id}/stream`) read with fetch, so a reconnect can send
// `Last-Event-ID` (our server resumes from it; reference §2.1 and server/src/http/stream.rs). The stream is
// reopened after any loss (network, server restart, `[DONE]` at shutdown) with a short capped backoff, until
// closed or the session is gone (404).

import { markUnpaired } from './auth';
export interface StreamHandlers {
  /** The cursor to resume from, read at every (re)connect. */
  lastEventId: () => number | null;
  onEvent: (id: number | null, event: Record<string, any>) => void;
  /** `live` once the ready heartbeat arrived; `reconnecting` while it is down; `gone` on 404. */
  onState: (state: 'live' | 'reconnecting' | 'gone', reconnected: boolean) => void;
}

export function openStream(sessionId: string, h: StreamHandlers): () => void {
  const stop = new AbortController();
  let opens = 0;
  const run = async () => {
    let delay = 100;
    while (!stop.signal.aborted) {
      try {
        const headers: Record<string, string> = { accept: 'text/event-stream' };
        const last = h.lastEventId();
        if (last !== null) headers['last-event-id'] = String(last);
        const resp = await fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/stream?presence=true`, {
          headers,
          signal: stop.signal,
          cache: 'no-store',
        });
        if (resp.status === 401) {
          // Not paired, or revoked: the app shows the pairing screen; retrying would not help.
          markUnpaired();
          h.onState('reconnecting', false);
          return;
        }
        if (resp.status === 404) {
          h.onState('gone', false);
          return;
        }
        if (!resp.ok || !resp.body) throw new Error(`stream answered ${resp.status}`);
        let first = true;
        await readSse(resp.body, (id, data) => {
          if (first) {
            first = false;
            delay = 100;
            h.onState('live', opens++ > 0);
          }
          h.onEvent(id, data);
        });
      } catch {
        if (stop.signal.aborted) return;
      }
      if (stop.signal.aborted) return;
      h.onState('reconnecting', false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2000);
    }
  };
  void run();
  return () => stop.abort();
}

/** Parse an SSE body, calling `onEvent` per JSON event; returns at `[DONE]` or the end of the body. */
export async function readSse(
  body: ReadableStream<Uint8Array>,
  onEvent: (id: number | null, data: Record<string, any>) => void,
): Promise<void> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let cut: number;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let id: number | null = null;
      const data: string[] = [];
      for (const line of frame.split('\n')) {
        if (line.startsWith('id:')) id = Number(line.slice(3).trim());
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length === 0) continue;
      const text = data.join('\n');
      if (text === '[DONE]') {
        await reader.cancel().catch(() => {});
        return;
      }
      try {
        onEvent(Number.isFinite(id) ? id : null, JSON.parse(text));
      } catch {
        // A frame that is not JSON is skipped, like an unknown event.
      }
    }
  }
}

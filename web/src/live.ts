// Live session list: `WS /v1/sessions/updates` (reference §1.2: `watch` → `snapshot`, then `changed` /
// `removed`, `heartbeat` when idle; new sessions pushed), and, while that socket is refused or down (a server
// without the route), a poll of the list every second. `onRows` gets whole rows to merge; `onRemoved` ids.
import type { SessionRow } from './api';

export interface LiveHandlers {
  watched: () => string[];
  onRows: (rows: SessionRow[]) => void;
  onRemoved: (ids: string[]) => void;
  /** Called every second while the socket is down: refetch the list. */
  poll: () => Promise<void>;
}

const POLL_MS = 1000;
const RETRY_WS_MS = 10_000;
const MAX_WATCHED = 500;

export function watchSessions(h: LiveHandlers): { rewatch: () => void; close: () => void } {
  let closed = false;
  let ws: WebSocket | null = null;
  let open = false;
  let pollTimer: ReturnType<typeof setTimeout> | undefined;
  let retryTimer: ReturnType<typeof setTimeout> | undefined;

  const send = () => {
    if (ws && open) ws.send(JSON.stringify({ type: 'watch', session_ids: h.watched().slice(0, MAX_WATCHED) }));
  };
  const poll = async () => {
    if (closed || open) return;
    await h.poll().catch(() => {});
    if (!closed && !open) pollTimer = setTimeout(poll, POLL_MS);
  };
  const connect = () => {
    if (closed) return;
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/sessions/updates`;
    try {
      ws = new WebSocket(url);
    } catch {
      ws = null;
      retryTimer = setTimeout(connect, RETRY_WS_MS);
      return;
    }
    ws.onopen = () => {
      open = true;
      clearTimeout(pollTimer);
      send();
    };
    ws.onmessage = (m) => {
      let msg: any;
      try {
        msg = JSON.parse(String(m.data));
      } catch {
        return;
      }
      if ((msg.type === 'snapshot' || msg.type === 'changed') && Array.isArray(msg.items)) h.onRows(msg.items);
      else if (msg.type === 'removed' && Array.isArray(msg.ids)) h.onRemoved(msg.ids);
    };
    ws.onclose = () => {
      const was = open;
      open = false;
      ws = null;
      if (closed) return;
      clearTimeout(pollTimer);
      void poll();
      retryTimer = setTimeout(connect, was ? POLL_MS : RETRY_WS_MS);
    };
  };
  // The caller loads the list itself first; polling starts only if the socket is refused.
  connect();
  return {
    rewatch: send,
    close: () => {
      closed = true;
      clearTimeout(pollTimer);
      clearTimeout(retryTimer);
      ws?.close();
    },
  };
}

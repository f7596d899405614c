// One session at /sessions/{id}: the transcript from its items, then the live stream (reducer.ts), the
// composer, Stop, status, liveness, presence, the reconnecting state, and the agent's questions (approval
// cards: Approve / Deny for a driver, the first answer from any device wins).
import { Component } from 'preact';
import { useEffect, useLayoutEffect, useReducer, useRef, useState } from 'preact/hooks';
import { allItems, ApiError, api, type List, post, type SessionRow } from '../api';
import { canDrive, useAuth } from '../auth';
import { Markdown } from '../markdown';
import { type Approval, type Entry, entries, initialState, reduce, type WireItem } from '../reducer';
import { StatusBadge } from '../status';
import { openStream } from '../stream';

/** The snapshot's fields this screen reads beyond the list row. */
interface Snapshot extends SessionRow {
  pending_elicitations?: Record<string, any>[];
}

interface Liveness {
  session?: { runner_online?: boolean; host_online?: boolean | null };
}

let localIds = 0;

/** Entries rendered at first, and added each time the reader scrolls to the top (long transcripts stay fast). */
const WINDOW = 150;

export function SessionView({ id }: { id: string }) {
  const [state, dispatch] = useReducer(reduce, undefined, () => initialState());
  const auth = useAuth();
  const viewer = auth.role !== null && !canDrive(auth.role);
  const [meta, setMeta] = useState<SessionRow | null>(null);
  const [missing, setMissing] = useState<string | null>(null);
  const [runnerOnline, setRunnerOnline] = useState<boolean | null>(null);
  const [loaded, setLoaded] = useState(false);
  const last = useRef<number | null>(null);
  const scroller = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);

  // A layout effect, so the requests start at once rather than after the first paint.
  useLayoutEffect(() => {
    let alive = true;
    const loadMeta = () =>
      api<Snapshot>(`/v1/sessions/${encodeURIComponent(id)}?include_items=false`)
        .then((m) => {
          if (!alive) return;
          setMeta(m);
          dispatch({ type: 'status', status: m.status });
          // Questions asked before this page opened (their request events are not replayed).
          if (Array.isArray(m.pending_elicitations)) dispatch({ type: 'pending', requests: m.pending_elicitations });
          if (m.runner_online !== null) setRunnerOnline(m.runner_online);
        })
        .catch((e) => {
          if (alive && e instanceof ApiError && e.status === 404) setMissing('This session does not exist (or was deleted).');
        });
    // The newest items first (what the screen shows), then the whole transcript, merged by id.
    const loadItems = async () => {
      try {
        const recent = await api<List<WireItem>>(
          `/v1/sessions/${encodeURIComponent(id)}/items?order=desc&limit=${WINDOW}`,
        );
        if (!alive) return;
        dispatch({ type: 'items', items: [...recent.data].reverse() });
        setLoaded(true);
        if (!recent.has_more) return;
        const items = await allItems<WireItem>(id);
        if (alive) dispatch({ type: 'items', items });
      } catch {
        // Retried at the next (re)connect of the stream.
      }
    };
    void loadMeta();
    void loadItems();
    const close = openStream(id, {
      lastEventId: () => last.current,
      onEvent: (eventId, event) => {
        if (eventId !== null && (event.type === 'session.heartbeat' || last.current === null || eventId > last.current)) {
          last.current = eventId;
        }
        dispatch({ type: 'event', id: eventId, event });
      },
      onState: (s) => {
        dispatch({ type: 'connection', connection: s });
        if (s === 'gone') setMissing('This session does not exist (or was deleted).');
        // Once the stream is (back) up, what was stored meanwhile comes from the items (deduped by id).
        if (s === 'live') {
          void loadItems();
          void loadMeta();
        }
      },
    });
    const health = async () => {
      try {
        const h = await api<Liveness>(`/health?session_id=${encodeURIComponent(id)}`);
        if (alive && typeof h.session?.runner_online === 'boolean') setRunnerOnline(h.session.runner_online);
      } catch {
        // The stream's state says the server is unreachable.
      }
    };
    const timer = setInterval(health, 2000);
    void health();
    return () => {
      alive = false;
      close();
      clearInterval(timer);
    };
  }, [id]);

  const list = entries(state);
  const [shown, setShown] = useState(WINDOW);
  const visible = list.length > shown ? list.slice(list.length - shown) : list;
  const earlier = list.length - visible.length;
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && pinned.current) el.scrollTop = el.scrollHeight;
  }, [list.length, list[list.length - 1]]);

  // Showing earlier entries keeps what the reader looks at in place.
  const heightBefore = useRef<number | null>(null);
  const showEarlier = () => {
    heightBefore.current = scroller.current?.scrollHeight ?? null;
    setShown((n) => n + WINDOW);
  };
  useLayoutEffect(() => {
    const el = scroller.current;
    if (el && heightBefore.current !== null) el.scrollTop += el.scrollHeight - heightBefore.current;
    heightBefore.current = null;
  }, [shown]);
  const sentinel = useRef<HTMLButtonElement>(null);
  useEffect(() => {
    const el = sentinel.current;
    if (!el || !scroller.current) return;
    const seen = new IntersectionObserver((hits) => hits.some((h) => h.isIntersecting) && showEarlier(), {
      root: scroller.current,
      rootMargin: '400px 0px 0px 0px',
    });
    seen.observe(el);
    return () => seen.disconnect();
  }, [earlier > 0, shown]);

  // First paint of the stored transcript, for the benchmark (web/bench).
  useLayoutEffect(() => {
    if (loaded) performance.mark('omnigent:transcript-rendered');
  }, [loaded]);

  const onScroll = () => {
    const el = scroller.current;
    if (el) pinned.current = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
  };

  const send = async (text: string) => {
    const localId = String(++localIds);
    pinned.current = true;
    dispatch({ type: 'sent', localId, text });
    try {
      const r = await post<{ item_id?: string }>(`/v1/sessions/${encodeURIComponent(id)}/events`, {
        type: 'message',
        data: { role: 'user', content: [{ type: 'input_text', text }] },
      });
      if (r?.item_id) dispatch({ type: 'accepted', localId, itemId: r.item_id });
    } catch (e) {
      dispatch({ type: 'send_failed', localId, error: (e as Error).message });
    }
  };

  const [stopping, setStopping] = useState(false);
  const stop = async () => {
    setStopping(true);
    try {
      await post(`/v1/sessions/${encodeURIComponent(id)}/events`, { type: 'interrupt', data: {} });
    } catch (e) {
      dispatch({ type: 'error', error: `Stop failed: ${(e as Error).message}` });
    } finally {
      setStopping(false);
    }
  };

  const answer = async (card: Approval, action: 'accept' | 'decline') => {
    dispatch({ type: 'answering', elicitationId: card.elicitationId, action });
    try {
      await post(
        `/v1/sessions/${encodeURIComponent(id)}/elicitations/${encodeURIComponent(card.elicitationId)}/resolve`,
        { action },
      );
    } catch (e) {
      const lost = e instanceof ApiError && e.status === 409;
      dispatch({ type: 'answer_failed', elicitationId: card.elicitationId, error: (e as Error).message, lost });
    }
  };

  if (missing) {
    return (
      <section class="page">
        <h1>Session not found</h1>
        <p>
          {missing} <a href="/">Back to the sessions</a>.
        </p>
      </section>
    );
  }

  const running = state.status === 'running' || state.status === 'waiting' || state.status === 'launching';
  const reason = viewer
    ? `You are watching as a ${auth.role}: only a driver can send messages. Ask the owner for a driver code (\`omnigent share --role driver\`).`
    : state.connection === 'gone'
      ? 'This session is gone.'
      : state.connection !== 'live'
        ? 'Reconnecting to the server…'
        : runnerOnline === false
          ? 'The session’s runner is offline; waiting for it to connect.'
          : null;
  const answerReason = viewer
    ? `You are watching as a ${auth.role}: only a driver can answer. Ask the owner for a driver code (\`omnigent share --role driver\`).`
    : state.connection !== 'live'
      ? 'Reconnecting to the server…'
      : null;
  const watching = state.viewers ?? [];
  const viewers = watching.length;
  const named = watching.filter((v) => v.device_name);

  return (
    <section class="session" aria-labelledby="session-title" data-status={state.status} data-connection={state.connection}>
      <header class="session-head">
        <div class="session-title">
          <h1 id="session-title">{meta?.title || 'Untitled session'}</h1>
          <p class="row-meta">
            <StatusBadge status={state.status} />
            <span>{meta?.agent_name ?? ''}</span>
            <span class={runnerOnline ? 'online' : 'offline'} data-testid="runner">
              {runnerOnline === null ? 'runner …' : runnerOnline ? 'runner online' : 'runner offline'}
            </span>
            {viewers > 0 && named.length === 0 && (
              <span data-testid="presence" title="Who is watching this session">
                {viewers === 1 ? 'only you watching' : `${viewers} watching`}
              </span>
            )}
            {named.length > 0 && (
              <span data-testid="presence" title="Who is watching this session (✎ can drive)">
                <span>{viewers === 1 ? 'only you watching' : `${viewers} watching`}</span>:{' '}
                {named.map((v, i) => (
                  <span key={v.connection_id ?? i} data-testid="watcher" data-role={v.role}>
                    {i > 0 ? ', ' : ''}
                    {v.device_name}
                    {canDrive(v.role) ? ' ✎' : ' (watching only)'}
                  </span>
                ))}
              </span>
            )}
            {meta?.workspace && <code class="ws">{meta.workspace}</code>}
          </p>
        </div>
        <button type="button" class="danger" onClick={stop} disabled={!running || stopping || viewer}>
          Stop
        </button>
      </header>
      {state.connection === 'reconnecting' && (
        <p class="banner warn" role="status" data-testid="reconnecting">
          Connection lost: reconnecting…
        </p>
      )}
      {state.connection === 'live' && runnerOnline === false && (
        <p class="banner warn" role="status">
          Runner disconnected: waiting for it to reconnect…
        </p>
      )}
      <div class="transcript" ref={scroller} onScroll={onScroll} data-testid="transcript" aria-live="polite" aria-busy={!loaded}>
        {!loaded && list.length === 0 && <p class="muted">Loading…</p>}
        {loaded && list.length === 0 && <p class="muted">No messages yet. Say something below.</p>}
        {earlier > 0 && (
          <button type="button" class="earlier" ref={sentinel} onClick={showEarlier} data-testid="earlier">
            Show {Math.min(earlier, WINDOW)} earlier messages ({earlier} not shown)
          </button>
        )}
        {visible.map((e) =>
          e.kind === 'approval' ? (
            <ApprovalCard key={e.id} card={e} onAnswer={answer} reason={answerReason} />
          ) : (
            <EntryView key={e.id} entry={e} />
          ),
        )}
        {state.error && (
          <p class="entry error" role="alert">
            {state.error}
          </p>
        )}
      </div>
      <Composer onSend={send} reason={reason} />
    </section>
  );
}

/** One transcript entry; re-renders only when its entry changed (long transcripts stay fast). */
class EntryView extends Component<{ entry: Entry }> {
  shouldComponentUpdate(next: { entry: Entry }) {
    return next.entry !== this.props.entry;
  }

  render({ entry }: { entry: Entry }) {
    switch (entry.kind) {
      case 'message':
        return (
          <article class={`entry msg ${entry.role}`} data-role={entry.role} data-status={entry.status} data-id={entry.id}>
            <div class="who">
              {entry.role === 'user' ? 'You' : entry.role}
              {entry.status === 'pending' && <span class="muted"> · sending</span>}
              {entry.status === 'in_progress' && <span class="muted"> · streaming</span>}
              {entry.status === 'incomplete' && <span class="muted"> · stopped</span>}
            </div>
            <Markdown text={entry.text} />
          </article>
        );
      case 'tool':
        return (
          <details class="entry tool" data-id={entry.id}>
            <summary>
              Tool call: <code>{entry.name}</code>
              {entry.output === undefined ? ' (running)' : ''}
            </summary>
            {entry.arguments && (
              <>
                <div class="label">Arguments</div>
                <pre>{pretty(entry.arguments)}</pre>
              </>
            )}
            {entry.output !== undefined && (
              <>
                <div class="label">Output</div>
                <pre>{entry.output}</pre>
              </>
            )}
          </details>
        );
      case 'reasoning':
        return (
          <details class="entry tool">
            <summary>Reasoning</summary>
            <pre>{entry.text}</pre>
          </details>
        );
      case 'error':
        return (
          <p class="entry error" role="alert">
            {entry.text}
          </p>
        );
      case 'approval':
        // Rendered by ApprovalCard (it needs the answer callback).
        return null;
      default:
        return <p class="entry muted">{entry.text}</p>;
    }
  }
}

const OUTCOME_TEXT = { accept: 'Approved', decline: 'Denied', cancel: 'Dismissed', unanswered: 'Expired' } as const;

/** A question of the agent: what it wants to run, Approve / Deny while pending, then who answered how. */
function ApprovalCard({
  card,
  onAnswer,
  reason,
}: {
  card: Approval;
  onAnswer: (card: Approval, action: 'accept' | 'decline') => void;
  reason: string | null;
}) {
  const state = card.outcome ?? 'pending';
  const mine = card.answering !== undefined && !card.lost && card.outcome === card.answering;
  const who =
    card.outcome === null ? null : card.outcome === 'unanswered' ? 'nobody answered in time' : mine ? 'by you' : 'by another device';
  const busy = card.answering !== undefined && card.outcome === null;
  return (
    <section class="entry approval" data-testid="approval" data-state={state} data-id={card.elicitationId} aria-label="Approval">
      <div class="who">
        {card.outcome === null ? 'Approval needed' : 'Approval'}
        {card.asker ? ` · ${card.asker}` : ''}
        {card.tool && (
          <>
            {' · '}
            <code>{card.tool}</code>
          </>
        )}
      </div>
      <p class="question">{card.message}</p>
      {card.preview && <pre class="preview">{pretty(card.preview)}</pre>}
      {card.outcome === null ? (
        <div class="actions">
          <button type="button" class="primary" disabled={reason !== null || busy} onClick={() => onAnswer(card, 'accept')}>
            Approve
          </button>
          <button type="button" class="danger" disabled={reason !== null || busy} onClick={() => onAnswer(card, 'decline')}>
            Deny
          </button>
          {reason && <p class="muted reason">{reason}</p>}
          {card.error && (
            <p class="error" role="alert">
              Not answered: {card.error}
            </p>
          )}
        </div>
      ) : (
        <p class="outcome" data-testid="outcome" role="status">
          {OUTCOME_TEXT[card.outcome]} {who}
          {card.lost ? ' (another device answered first)' : ''}
        </p>
      )}
    </section>
  );
}

function pretty(args: string): string {
  try {
    return JSON.stringify(JSON.parse(args), null, 2);
  } catch {
    return args;
  }
}

function Composer({ onSend, reason }: { onSend: (text: string) => void; reason: string | null }) {
  const [text, setText] = useState('');
  const submit = () => {
    const t = text.trim();
    if (!t || reason) return;
    onSend(t);
    setText('');
  };
  return (
    <form
      class="composer"
      onSubmit={(e) => {
        e.preventDefault();
        submit();
      }}
    >
      <label for="message" class="visually-hidden">
        Message
      </label>
      <textarea
        id="message"
        name="message"
        rows={2}
        placeholder={reason ?? 'Message (Enter sends, Shift+Enter for a new line)'}
        value={text}
        disabled={reason !== null}
        aria-describedby={reason ? 'composer-reason' : undefined}
        onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
        onKeyDown={(e) => {
          if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
            e.preventDefault();
            submit();
          }
        }}
      />
      <button type="submit" class="primary" disabled={reason !== null || text.trim() === ''}>
        Send
      </button>
      {reason && (
        <p id="composer-reason" class="muted reason">
          {reason}
        </p>
      )}
    </form>
  );
}

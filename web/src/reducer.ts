// The session screen's state, as a pure reducer over the three things that change it: the stored items
// (`GET …/items`), the events of the SSE stream (`GET …/stream`), and what this page sent. Applying the same
// item or event twice changes nothing, so a reconnect that replays events, or a refetch of the items after
// one, never shows a message twice (dedupe by event id, item id, and delta index).

/** A conversation item as `GET /v1/sessions/{id}/items` returns it (the item's fields beside its envelope). */
export interface WireItem {
  id: string;
  type: string;
  status?: string;
  response_id?: string | null;
  role?: string;
  content?: { type: string; text?: string }[];
  name?: string;
  arguments?: string;
  call_id?: string;
  output?: unknown;
  error?: { code?: string; message?: string } | null;
  summary?: { text?: string }[];
  [key: string]: unknown;
}

export interface Message {
  kind: 'message';
  id: string;
  role: string;
  text: string;
  /** `in_progress` while streaming, `completed`, `incomplete` (interrupted), or `pending` (sent, not stored yet). */
  status: string;
  /** Highest `index` of the deltas applied (streaming only). */
  index?: number;
  /** For a pending message: the page's own id, and the item id once the POST answered. */
  localId?: string;
  itemId?: string;
}

export interface ToolCall {
  kind: 'tool';
  id: string;
  callId: string;
  name: string;
  arguments: string;
  output?: string;
}

export interface Note {
  kind: 'error' | 'reasoning' | 'other';
  id: string;
  text: string;
}

/** How an approval ended: the answer (`accept`, `decline`, `cancel`) or `unanswered` (the asker stopped waiting). */
export type Outcome = 'accept' | 'decline' | 'cancel' | 'unanswered';

/** A question the agent asked before it uses a tool (`response.elicitation_request`, issue 15 item 6). */
export interface Approval {
  kind: 'approval';
  /** `approval:` and the elicitation id. */
  id: string;
  elicitationId: string;
  message: string;
  tool: string | null;
  /** The tool's input (cut by the asker). */
  preview: string | null;
  /** Who asks (`claude-code`, `codex`). */
  asker: string | null;
  /** Null while pending. */
  outcome: Outcome | null;
  /** What this page answered, while its POST is under way or after it (to tell "you" from another device). */
  answering?: 'accept' | 'decline' | 'cancel';
  /** Another device answered first (this page's answer got 409). */
  lost?: boolean;
  /** This page's answer failed for another reason. */
  error?: string;
}

export type Entry = Message | ToolCall | Note | Approval;

export type Connection = 'connecting' | 'live' | 'reconnecting' | 'gone';

/** One watcher: a user (the Python server's `viewers`) or an open stream (our server's `connections`). */
export interface Viewer {
  user_id?: string;
  connection_id?: string;
  /** Ours (issue 13): the paired device of this connection and its role. */
  device_id?: string;
  device_name?: string;
  role?: string;
  joined_at?: number | string;
  idle?: boolean;
}

export interface SessionState {
  /** Entry ids in display order. */
  order: string[];
  entries: Record<string, Entry>;
  /** The `id:` of the last stream event applied (what `Last-Event-ID` resumes from). */
  lastEventId: number | null;
  status: string;
  connection: Connection;
  viewers: Viewer[] | null;
  /** The last turn error (`response.error`, `response.failed`, a failed status), cleared by the next turn. */
  error: string | null;
}

export type Action =
  | { type: 'items'; items: WireItem[] }
  | { type: 'event'; id: number | null; event: Record<string, any> }
  | { type: 'sent'; localId: string; text: string }
  | { type: 'accepted'; localId: string; itemId: string }
  | { type: 'send_failed'; localId: string; error: string }
  | { type: 'connection'; connection: Connection }
  | { type: 'status'; status: string }
  /** The snapshot's `pending_elicitations` (the request events), on (re)load. */
  | { type: 'pending'; requests: Record<string, any>[] }
  | { type: 'answering'; elicitationId: string; action: 'accept' | 'decline' | 'cancel' }
  | { type: 'answer_failed'; elicitationId: string; error: string; lost: boolean }
  | { type: 'error'; error: string };

export function initialState(status = 'idle'): SessionState {
  return {
    order: [],
    entries: {},
    lastEventId: null,
    status,
    connection: 'connecting',
    viewers: null,
    error: null,
  };
}

/** The text of a message's content parts. */
export function contentText(content: WireItem['content']): string {
  if (!Array.isArray(content)) return '';
  return content.map((part) => (typeof part?.text === 'string' ? part.text : '')).join('');
}

function stringify(value: unknown): string {
  if (typeof value === 'string') return value;
  if (value === undefined || value === null) return '';
  return JSON.stringify(value, null, 2);
}

function errorText(error: unknown): string {
  if (!error || typeof error !== 'object') return stringify(error) || 'error';
  const e = error as { code?: string; message?: string };
  return [e.code, e.message].filter(Boolean).join(': ') || stringify(error);
}

/** An item as an entry; a `function_call_output` is folded into its call instead (null here). */
function itemEntry(item: WireItem): Entry | null {
  switch (item.type) {
    case 'message':
      return {
        kind: 'message',
        id: item.id,
        role: item.role ?? 'assistant',
        text: contentText(item.content),
        status: item.status ?? 'completed',
      };
    case 'function_call':
      return {
        kind: 'tool',
        id: item.id,
        callId: item.call_id ?? item.id,
        name: item.name ?? 'tool',
        arguments: item.arguments ?? '',
      };
    case 'function_call_output':
      return null;
    case 'error':
      return { kind: 'error', id: item.id, text: errorText(item.error) };
    case 'reasoning':
      return {
        kind: 'reasoning',
        id: item.id,
        text: (item.summary ?? []).map((s) => s?.text ?? '').join('\n') || stringify(item.content),
      };
    default:
      return { kind: 'other', id: item.id, text: `${item.type}` };
  }
}

/** Working copy of the state: copies `order`/`entries` once, on first write. */
class Draft {
  order: string[];
  entries: Record<string, Entry>;
  private copied = false;

  constructor(readonly base: SessionState) {
    this.order = base.order;
    this.entries = base.entries;
  }

  private own() {
    if (!this.copied) {
      this.order = [...this.order];
      this.entries = { ...this.entries };
      this.copied = true;
    }
  }

  set(entry: Entry) {
    this.own();
    if (!(entry.id in this.entries)) this.order.push(entry.id);
    this.entries[entry.id] = entry;
  }

  /** Put `entry` where the entry `oldId` was (a pending message becoming its stored item). */
  replace(oldId: string, entry: Entry) {
    this.own();
    delete this.entries[oldId];
    if (entry.id in this.entries) {
      this.order = this.order.filter((id) => id !== oldId);
    } else {
      this.order = this.order.map((id) => (id === oldId ? entry.id : id));
    }
    this.entries[entry.id] = entry;
  }

  reorder(order: string[]) {
    this.own();
    this.order = order;
  }

  remove(id: string) {
    this.own();
    delete this.entries[id];
    this.order = this.order.filter((x) => x !== id);
  }

  toolByCall(callId: string): ToolCall | undefined {
    for (let i = this.order.length - 1; i >= 0; i--) {
      const e = this.entries[this.order[i]];
      if (e?.kind === 'tool' && e.callId === callId) return e;
    }
    return undefined;
  }

  /** The pending message a stored user item `itemId` with `text` stands for: same item id, else the first with the same text. */
  pendingFor(itemId: string, text: string): Message | undefined {
    let byText: Message | undefined;
    for (const id of this.order) {
      const e = this.entries[id];
      if (e?.kind !== 'message' || e.status !== 'pending') continue;
      if (e.itemId === itemId) return e;
      if (!byText && !e.itemId && e.text === text) byText = e;
    }
    return byText;
  }

  /** Apply one stored item: new, replacing a streaming or pending one, or folded into its tool call. */
  item(item: WireItem) {
    if (item.type === 'function_call_output') {
      const call = item.call_id ? this.toolByCall(item.call_id) : undefined;
      const output = stringify(item.output);
      if (call) {
        if (call.output !== output) this.set({ ...call, output });
      } else if (!(item.id in this.entries)) {
        this.set({ kind: 'tool', id: item.id, callId: item.call_id ?? item.id, name: 'tool output', arguments: '', output });
      }
      return;
    }
    const entry = itemEntry(item);
    if (!entry) return;
    if (entry.kind === 'message' && entry.role === 'user' && !(entry.id in this.entries)) {
      const pending = this.pendingFor(entry.id, entry.text);
      if (pending) {
        this.replace(pending.id, entry);
        return;
      }
    }
    const existing = this.entries[entry.id];
    if (existing && sameEntry(existing, entry)) return;
    if (existing?.kind === 'tool' && entry.kind === 'tool') {
      this.set({ ...entry, output: existing.output });
      return;
    }
    this.set(entry);
  }
}

/** The card of a `response.elicitation_request` event, or null when it names no id. */
export function approvalOf(ev: Record<string, any>): Approval | null {
  const eid = ev?.elicitation_id;
  if (typeof eid !== 'string' || !eid) return null;
  const p = ev.params ?? {};
  const text = (v: unknown) => (typeof v === 'string' && v ? v : null);
  return {
    kind: 'approval',
    id: `approval:${eid}`,
    elicitationId: eid,
    message: text(p.message) ?? 'The agent asks for approval',
    tool: text(p.tool_name),
    preview: text(p.content_preview),
    asker: text(p.policy_name),
    outcome: null,
  };
}

const OUTCOMES: Outcome[] = ['accept', 'decline', 'cancel', 'unanswered'];

function sameEntry(a: Entry, b: Entry): boolean {
  if (a.kind !== b.kind) return false;
  if (a.kind === 'message' && b.kind === 'message') return a.text === b.text && a.status === b.status && a.role === b.role;
  if (a.kind === 'tool' && b.kind === 'tool') return a.name === b.name && a.arguments === b.arguments;
  if (a.kind === 'approval' || b.kind === 'approval') return a === b;
  return (a as Note).text === (b as Note).text;
}

function finish(base: SessionState, d: Draft, patch: Partial<SessionState> = {}): SessionState {
  if (d.order === base.order && d.entries === base.entries && Object.keys(patch).length === 0) return base;
  return { ...base, ...patch, order: d.order, entries: d.entries };
}

/** Who `session.presence` says is watching: our server lists every open stream in `connections` (its
 * `viewers` stays empty, as a single-user Python server's does); a Python server lists users in `viewers`. */
function presenceList(ev: Record<string, any>): Viewer[] {
  if (Array.isArray(ev.connections) && ev.connections.length > 0) return ev.connections;
  return Array.isArray(ev.viewers) ? ev.viewers : [];
}

function applyEvent(state: SessionState, id: number | null, ev: Record<string, any>): SessionState {
  const type = String(ev.type ?? '');
  if (type === 'session.heartbeat') {
    // The ready heartbeat carries the stream's cursor: what follows on this connection comes after it.
    return id === null || id === state.lastEventId ? state : { ...state, lastEventId: id };
  }
  if (type === 'session.presence') {
    // Out of band like a heartbeat: it carries the stream's cursor, not an id of its own, so it is never a
    // repeat; the newest list wins.
    return { ...state, viewers: presenceList(ev) };
  }
  if (id !== null && state.lastEventId !== null && id <= state.lastEventId) return state;
  const d = new Draft(state);
  const patch: Partial<SessionState> = {};
  if (id !== null) patch.lastEventId = id;
  switch (type) {
    case 'session.status': {
      patch.status = String(ev.status ?? state.status);
      if (ev.status === 'running') patch.error = null;
      if (ev.status === 'failed' && ev.error) patch.error = errorText(ev.error);
      break;
    }
    case 'session.input.consumed': {
      const data = ev.data ?? {};
      if (data.type === 'message' && typeof data.item_id === 'string') {
        const inner = data.data ?? {};
        d.item({ id: data.item_id, type: 'message', role: inner.role ?? 'user', content: inner.content, status: 'completed' });
      }
      break;
    }
    case 'response.output_text.delta': {
      const messageId = typeof ev.message_id === 'string' ? ev.message_id : `response:${ev.response_id ?? 'current'}`;
      const delta = String(ev.delta ?? '');
      const index = typeof ev.index === 'number' ? ev.index : undefined;
      const existing = d.entries[messageId];
      if (existing && (existing.kind !== 'message' || existing.status !== 'in_progress')) break;
      if (ev.snapshot === true) {
        d.set({ kind: 'message', id: messageId, role: 'assistant', text: delta, status: 'in_progress', index });
        break;
      }
      if (existing && index !== undefined && existing.index !== undefined && index <= existing.index) break;
      d.set({
        kind: 'message',
        id: messageId,
        role: 'assistant',
        text: (existing?.kind === 'message' ? existing.text : '') + delta,
        status: 'in_progress',
        index: index ?? existing?.index,
      });
      break;
    }
    case 'response.output_item.done':
      if (ev.item && typeof ev.item.id === 'string') d.item(ev.item as WireItem);
      break;
    case 'response.error':
      patch.error = errorText(ev.error);
      break;
    case 'response.failed':
      patch.error = errorText(ev.response?.error) || 'the turn failed';
      stopStreaming(d, 'incomplete');
      break;
    case 'response.incomplete':
    case 'response.cancelled':
      stopStreaming(d, 'incomplete');
      break;
    case 'response.completed':
      stopStreaming(d, 'completed');
      break;
    case 'response.elicitation_request': {
      const card = approvalOf(ev);
      if (card && !(card.id in d.entries)) d.set(card);
      break;
    }
    case 'response.elicitation_resolved': {
      const key = `approval:${ev.elicitation_id}`;
      const card = d.entries[key];
      if (card?.kind !== 'approval' || card.outcome !== null) break;
      const said = OUTCOMES.find((o) => o === ev.action) ?? OUTCOMES.find((o) => o === ev.reason);
      d.set({ ...card, outcome: said ?? 'unanswered' });
      break;
    }
    case 'session.interrupted':
      break;
    default:
      break;
  }
  return finish(state, d, patch);
}

/** A turn ended: its still-streaming messages take `status` (their stored items, if any, follow). */
function stopStreaming(d: Draft, status: string) {
  for (const id of d.order) {
    const e = d.entries[id];
    if (e?.kind === 'message' && e.status === 'in_progress') d.set({ ...e, status });
  }
}

export function reduce(state: SessionState, action: Action): SessionState {
  switch (action.type) {
    case 'items': {
      const d = new Draft(state);
      for (const item of action.items) d.item(item);
      // The stored transcript first, in the server's order; what is not stored yet (streaming, pending) after it.
      const stored = action.items.map((i) => i.id).filter((id) => id in d.entries);
      const storedSet = new Set(stored);
      const order = [...stored, ...d.order.filter((id) => !storedSet.has(id))];
      if (order.some((id, i) => id !== d.order[i])) d.reorder(order);
      return finish(state, d);
    }
    case 'event':
      return applyEvent(state, action.id, action.event);
    case 'sent': {
      const d = new Draft(state);
      const id = `local:${action.localId}`;
      d.set({ kind: 'message', id, role: 'user', text: action.text, status: 'pending', localId: action.localId });
      return finish(state, d);
    }
    case 'accepted': {
      const id = `local:${action.localId}`;
      const e = state.entries[id];
      if (e?.kind !== 'message') return state;
      const d = new Draft(state);
      d.set({ ...e, itemId: action.itemId });
      return finish(state, d);
    }
    case 'send_failed': {
      const id = `local:${action.localId}`;
      if (!(id in state.entries)) return state;
      const d = new Draft(state);
      d.remove(id);
      return finish(state, d, { error: `not sent: ${action.error}` });
    }
    case 'connection':
      return state.connection === action.connection ? state : { ...state, connection: action.connection };
    case 'status':
      return state.status === action.status ? state : { ...state, status: action.status };
    case 'pending': {
      const d = new Draft(state);
      for (const request of action.requests) {
        const card = approvalOf(request);
        if (card && !(card.id in d.entries)) d.set(card);
      }
      return finish(state, d);
    }
    case 'answering':
    case 'answer_failed': {
      const key = `approval:${action.elicitationId}`;
      const card = state.entries[key];
      if (card?.kind !== 'approval') return state;
      const d = new Draft(state);
      if (action.type === 'answering') d.set({ ...card, answering: action.action, error: undefined });
      else d.set({ ...card, answering: undefined, lost: action.lost, error: action.lost ? undefined : action.error });
      return finish(state, d);
    }
    case 'error':
      return { ...state, error: action.error };
  }
}

/** The entries in display order. */
export function entries(state: SessionState): Entry[] {
  return state.order.map((id) => state.entries[id]).filter((e): e is Entry => e !== undefined);
}

import { describe, expect, it } from 'vitest';
import { type Action, entries, initialState, reduce, type SessionState, type WireItem } from './reducer';
import { inline, safeHref } from './markdown';

const run = (actions: Action[], state: SessionState = initialState()) => actions.reduce(reduce, state);
const ev = (id: number | null, event: Record<string, unknown>): Action => ({ type: 'event', id, event });
const texts = (s: SessionState) => entries(s).map((e) => `${e.kind === 'message' ? e.role : e.kind}:${'text' in e ? e.text : 'name' in e ? e.name : e.message}`);

const userItem = (id: string, text: string): WireItem => ({
  id,
  type: 'message',
  role: 'user',
  status: 'completed',
  content: [{ type: 'input_text', text }],
});
const assistantItem = (id: string, text: string): WireItem => ({
  id,
  type: 'message',
  role: 'assistant',
  status: 'completed',
  content: [{ type: 'output_text', text }],
});

/** One echo turn as the server streams it (captured from a live server), ids starting at `from`. */
function turn(from: number, userId: string, text: string, msgId: string): Action[] {
  const words = text.split(/(?<= )/);
  return [
    ev(from, {
      type: 'session.input.consumed',
      data: { item_id: userId, type: 'message', data: { role: 'user', content: [{ type: 'input_text', text }] } },
    }),
    ev(from + 1, { type: 'session.status', status: 'running' }),
    ...words.map((w, i) => ev(from + 2 + i, { type: 'response.output_text.delta', delta: w, index: i, message_id: msgId })),
    ev(from + 2 + words.length, { type: 'response.output_item.done', item: assistantItem(msgId, text) }),
    ev(from + 3 + words.length, { type: 'response.completed', response: {} }),
    ev(from + 4 + words.length, { type: 'session.status', status: 'idle' }),
  ];
}

describe('event reducer', () => {
  it('streams deltas into one assistant message that the done item completes', () => {
    const actions = turn(1, 'u1', 'hello big world', 'm1');
    const mid = run([ev(0, { type: 'session.heartbeat' }), ...actions.slice(0, 4)]);
    expect(texts(mid)).toEqual(['user:hello big world', 'assistant:hello big ']);
    expect(mid.status).toBe('running');
    const done = run(actions.slice(4), mid);
    expect(texts(done)).toEqual(['user:hello big world', 'assistant:hello big world']);
    expect(done.entries.m1).toMatchObject({ status: 'completed' });
    expect(done.status).toBe('idle');
    expect(done.lastEventId).toBe(8);
  });

  it('ignores events replayed after a reconnect (same ids), so nothing shows twice', () => {
    const actions = turn(1, 'u1', 'one two three', 'm1');
    const once = run([ev(0, { type: 'session.heartbeat' }), ...actions]);
    // The reconnect resumes from id 3 (Last-Event-ID): the ready heartbeat carries the cursor, then 4.. again.
    const again = run([ev(3, { type: 'session.heartbeat' }), ...actions.slice(3)], once);
    expect(texts(again)).toEqual(texts(once));
    expect(again.entries).toEqual(once.entries);
  });

  it('deltas without an index, replayed from Last-Event-ID, are skipped by their event ids', () => {
    const deltas = [
      ev(1, { type: 'response.output_text.delta', delta: 'one ', message_id: 'm' }),
      ev(2, { type: 'response.output_text.delta', delta: 'two', message_id: 'm' }),
    ];
    // Resumed from 2: whatever comes again up to the cursor is skipped.
    const s = run([ev(0, { type: 'session.heartbeat' }), ...deltas, ev(2, { type: 'session.heartbeat' }), ...deltas]);
    expect(texts(s)).toEqual(['assistant:one two']);
  });

  it('a delta replayed with an index already applied adds no text', () => {
    const s = run([
      ev(1, { type: 'response.output_text.delta', delta: 'a ', index: 0, message_id: 'm' }),
      ev(2, { type: 'response.output_text.delta', delta: 'b', index: 1, message_id: 'm' }),
      // A new stream (server restarted, higher ids) replays index 1, then goes on.
      ev(1000, { type: 'session.heartbeat' }),
      ev(1001, { type: 'response.output_text.delta', delta: 'b', index: 1, message_id: 'm' }),
      ev(1002, { type: 'response.output_text.delta', delta: ' c', index: 2, message_id: 'm' }),
    ]);
    expect(texts(s)).toEqual(['assistant:a b c']);
  });

  it('a snapshot delta replaces the streamed text (the runner re-sends the open message whole)', () => {
    const s = run([
      ev(1, { type: 'response.output_text.delta', delta: 'partial', index: 0, message_id: 'm' }),
      ev(1000, { type: 'response.output_text.delta', delta: 'partial text', index: 3, message_id: 'm', snapshot: true }),
      ev(1001, { type: 'response.output_text.delta', delta: '!', index: 4, message_id: 'm' }),
    ]);
    expect(texts(s)).toEqual(['assistant:partial text!']);
  });

  it('deltas after the message completed are ignored', () => {
    const s = run([
      { type: 'items', items: [assistantItem('m', 'done text')] },
      ev(5, { type: 'response.output_text.delta', delta: 'late', index: 0, message_id: 'm' }),
    ]);
    expect(texts(s)).toEqual(['assistant:done text']);
  });

  it('items refetched after a reconnect merge by id, in the server order, before what is still streaming', () => {
    const live = run([
      ev(10, { type: 'response.output_text.delta', delta: 'stream', index: 0, message_id: 'm2' }),
    ]);
    const s = run([{ type: 'items', items: [userItem('u1', 'hi'), assistantItem('m1', 'hi'), userItem('u2', 'again')] }], live);
    expect(texts(s)).toEqual(['user:hi', 'assistant:hi', 'user:again', 'assistant:stream']);
    const same = run([{ type: 'items', items: [userItem('u1', 'hi'), assistantItem('m1', 'hi'), userItem('u2', 'again')] }], s);
    expect(same).toBe(s);
  });

  it('an optimistic message shows at once and is reconciled by session.input.consumed (by item id)', () => {
    const sent = run([
      { type: 'sent', localId: '1', text: 'same' },
      { type: 'sent', localId: '2', text: 'same' },
    ]);
    expect(entries(sent).map((e) => e.kind === 'message' && e.status)).toEqual(['pending', 'pending']);
    const accepted = run([{ type: 'accepted', localId: '2', itemId: 'i2' }, { type: 'accepted', localId: '1', itemId: 'i1' }], sent);
    const consumed = run(
      [
        ev(1, { type: 'session.input.consumed', data: { item_id: 'i1', type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: 'same' }] } } }),
      ],
      accepted,
    );
    expect(consumed.order).toEqual(['i1', 'local:2']);
    const both = run(
      [
        ev(2, { type: 'session.input.consumed', data: { item_id: 'i2', type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: 'same' }] } } }),
        { type: 'items', items: [userItem('i1', 'same'), userItem('i2', 'same')] },
      ],
      consumed,
    );
    expect(both.order).toEqual(['i1', 'i2']);
    expect(entries(both).every((e) => e.kind === 'message' && e.status === 'completed')).toBe(true);
  });

  it('a consumed input that arrives before the POST answered reconciles the first pending one with its text', () => {
    const s = run([
      { type: 'sent', localId: '1', text: 'hello' },
      ev(1, { type: 'session.input.consumed', data: { item_id: 'i1', type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: 'hello' }] } } }),
      { type: 'accepted', localId: '1', itemId: 'i1' },
    ]);
    expect(s.order).toEqual(['i1']);
  });

  it("another client's input appears as a user message", () => {
    const s = run([
      ev(1, { type: 'session.input.consumed', data: { item_id: 'x', type: 'message', data: { role: 'user', content: [{ type: 'input_text', text: 'from B' }] } } }),
    ]);
    expect(texts(s)).toEqual(['user:from B']);
  });

  it('a failed send removes the optimistic message and says why', () => {
    const s = run([{ type: 'sent', localId: '1', text: 'x' }, { type: 'send_failed', localId: '1', error: 'runner unavailable' }]);
    expect(s.order).toEqual([]);
    expect(s.error).toContain('runner unavailable');
  });

  it('tool calls carry their output, from items or from the stream, in either order', () => {
    const call: WireItem = { id: 'fc', type: 'function_call', name: 'shell', arguments: '{"cmd":"ls"}', call_id: 'c1', status: 'completed' };
    const out: WireItem = { id: 'fo', type: 'function_call_output', call_id: 'c1', output: 'a\nb' };
    const a = run([{ type: 'items', items: [call, out] }]);
    const b = run([ev(1, { type: 'response.output_item.done', item: call }), ev(2, { type: 'response.output_item.done', item: out })]);
    for (const s of [a, b]) {
      expect(entries(s)).toEqual([{ kind: 'tool', id: 'fc', callId: 'c1', name: 'shell', arguments: '{"cmd":"ls"}', output: 'a\nb' }]);
    }
    // The call re-sent (a refetch) keeps its output.
    const c = run([{ type: 'items', items: [call] }], a);
    expect(c).toBe(a);
  });

  it('an interrupted turn leaves its partial text marked stopped; errors and status show', () => {
    const s = run([
      ev(1, { type: 'session.status', status: 'running' }),
      ev(2, { type: 'response.output_text.delta', delta: 'part', index: 0, message_id: 'm' }),
      ev(3, { type: 'session.interrupted', data: {} }),
      ev(4, { type: 'response.incomplete', response: { incomplete_details: { reason: 'user_interrupt' } } }),
      ev(5, { type: 'session.status', status: 'idle' }),
    ]);
    expect(s.entries.m).toMatchObject({ text: 'part', status: 'incomplete' });
    expect(s.status).toBe('idle');
    const failed = run([ev(6, { type: 'response.error', error: { code: 'vendor', message: 'boom' } })], s);
    expect(failed.error).toBe('vendor: boom');
    expect(run([ev(7, { type: 'session.status', status: 'running' })], failed).error).toBeNull();
  });

  it('presence, unknown events and events without ids', () => {
    const s = run([
      ev(1, { type: 'session.presence', viewers: [{ user_id: 'local' }, { user_id: 'local' }] }),
      ev(2, { type: 'something.new', x: 1 }),
      ev(null, { type: 'response.output_text.delta', delta: 'x', message_id: 'm' }),
    ]);
    expect(s.viewers).toHaveLength(2);
    expect(texts(s)).toEqual(['assistant:x']);
    expect(s.lastEventId).toBe(2);
  });

  it('presence from our server counts its open streams (`connections`), its empty `viewers` aside', () => {
    const connections = [
      { connection_id: 'c1', joined_at: '2026-12-03T17:00:00Z', idle: false },
      { connection_id: 'c2', joined_at: '2026-12-03T17:00:01Z', idle: true },
    ];
    const s = run([ev(1, { type: 'session.presence', viewers: [], connections })]);
    expect(s.viewers).toHaveLength(2);
    // It carries the stream's cursor (the id of the last event), so the same id again is a newer list.
    const left = run([ev(1, { type: 'session.presence', viewers: [], connections: connections.slice(1) })], s);
    expect(left.viewers).toHaveLength(1);
  });

  it('2,000 items reduce quickly', () => {
    const items: WireItem[] = [];
    for (let i = 0; i < 1000; i++) items.push(userItem(`u${i}`, `q ${i}`), assistantItem(`a${i}`, `answer ${i}`));
    const t = performance.now();
    const s = run([{ type: 'items', items }]);
    expect(performance.now() - t).toBeLessThan(200);
    expect(s.order).toHaveLength(2000);
  });
});

describe('approvals', () => {
  const asked = (eid: string, command: string) => ({
    type: 'response.elicitation_request',
    elicitation_id: eid,
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
  const card = (s: SessionState, eid: string) => s.entries[`approval:${eid}`];

  it('shows a question as a pending card, once, and the answer that won', () => {
    const s = run([ev(1, asked('elicit_1', 'rm -rf build')), ev(2, { type: 'session.status', status: 'waiting' })]);
    expect(card(s, 'elicit_1')).toMatchObject({
      kind: 'approval',
      message: 'Allow Bash: `rm -rf build`?',
      tool: 'Bash',
      preview: '{"command":"rm -rf build"}',
      asker: 'claude-code',
      outcome: null,
    });
    expect(s.status).toBe('waiting');
    // The snapshot lists it too (a reload): still one card.
    const again = run([{ type: 'pending', requests: [asked('elicit_1', 'rm -rf build')] }], s);
    expect(again.order.filter((id) => id.startsWith('approval:'))).toHaveLength(1);
    const done = run([ev(3, { type: 'response.elicitation_resolved', elicitation_id: 'elicit_1', action: 'decline' })], again);
    expect(card(done, 'elicit_1')).toMatchObject({ outcome: 'decline' });
    // A second resolution (the runner confirming) changes nothing.
    const twice = run([ev(4, { type: 'response.elicitation_resolved', elicitation_id: 'elicit_1', action: 'accept' })], done);
    expect(card(twice, 'elicit_1')).toMatchObject({ outcome: 'decline' });
  });

  it('cards from the snapshot, an expired question, and who answered', () => {
    const s = run([{ type: 'pending', requests: [asked('elicit_a', 'ls'), asked('elicit_b', 'make'), { params: {} }] }]);
    expect(s.order).toEqual(['approval:elicit_a', 'approval:elicit_b']);
    const mine = run(
      [
        { type: 'answering', elicitationId: 'elicit_a', action: 'accept' },
        ev(5, { type: 'response.elicitation_resolved', elicitation_id: 'elicit_a', action: 'accept' }),
      ],
      s,
    );
    expect(card(mine, 'elicit_a')).toMatchObject({ outcome: 'accept', answering: 'accept' });
    const lost = run(
      [
        { type: 'answering', elicitationId: 'elicit_b', action: 'accept' },
        ev(6, { type: 'response.elicitation_resolved', elicitation_id: 'elicit_b', action: 'decline' }),
        { type: 'answer_failed', elicitationId: 'elicit_b', error: 'already resolved', lost: true },
      ],
      mine,
    );
    expect(card(lost, 'elicit_b')).toMatchObject({ outcome: 'decline', lost: true, answering: undefined });
    const expired = run(
      [ev(1, asked('elicit_c', 'x')), ev(2, { type: 'response.elicitation_resolved', elicitation_id: 'elicit_c', reason: 'unanswered' })],
    );
    expect(card(expired, 'elicit_c')).toMatchObject({ outcome: 'unanswered' });
    const failed = run([{ type: 'answering', elicitationId: 'elicit_c', action: 'accept' }, { type: 'answer_failed', elicitationId: 'elicit_c', error: 'offline', lost: false }], run([ev(1, asked('elicit_c', 'x'))]));
    expect(card(failed, 'elicit_c')).toMatchObject({ outcome: null, error: 'offline', answering: undefined });
  });

  it('keeps cards through a refetch of the items', () => {
    const s = run([{ type: 'items', items: [userItem('u1', 'clean')] }, ev(1, asked('elicit_1', 'rm'))]);
    const after = run([{ type: 'items', items: [userItem('u1', 'clean')] }], s);
    expect(after.order).toEqual(['u1', 'approval:elicit_1']);
  });
});

describe('markdown safety', () => {
  it('keeps only http(s) and mailto links', () => {
    expect(safeHref('https://example.com')).toBe('https://example.com');
    expect(safeHref('mailto:a@b.c')).toBe('mailto:a@b.c');
    for (const bad of ['javascript:alert(1)', ' JavaScript:alert(1)', 'data:text/html,x', 'vbscript:x', '/relative', '']) {
      expect(safeHref(bad)).toBeNull();
    }
  });

  it('renders raw HTML as text and a javascript: link as its source text', () => {
    const source = '<img src=x onerror=alert(1)> [click](javascript:alert(1)) [x](javascript:void)';
    const out = inline(source);
    expect(out.every((n) => typeof n === 'string')).toBe(true);
    expect(out.join('')).toBe(source);
  });

  it('makes safe links, code, bold and italic', () => {
    const out = inline('see [docs](https://x.y) and `a<b>` **bold** *it*');
    const tags = out.map((n) => (typeof n === 'string' ? 'text' : (n as { type: string }).type));
    expect(tags).toEqual(['text', 'a', 'text', 'code', 'text', 'strong', 'text', 'em']);
  });
});

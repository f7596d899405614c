// A scripted stand-in for Anthropic's Messages API on loopback (the only fake the browser tests may use: an
// LLM API), for the real Claude Code CLI to talk to through ANTHROPIC_BASE_URL: each POST …/v1/messages is
// recorded and answered with the next answer of the script as a streamed message; any other request is 404.
import { createServer } from 'node:http';

const sse = (payload) => `event: ${payload.type}\ndata: ${JSON.stringify(payload)}\n\n`;

function stream(id, blocks, stopReason) {
  const events = [
    { type: 'message_start', message: { id, type: 'message', role: 'assistant', content: [], model: 'claude-test', stop_reason: null, usage: { input_tokens: 12, output_tokens: 1 } } },
  ];
  blocks.forEach((block, index) => {
    if (block.text !== undefined) {
      events.push({ type: 'content_block_start', index, content_block: { type: 'text', text: '' } });
      events.push({ type: 'content_block_delta', index, delta: { type: 'text_delta', text: block.text } });
    } else {
      events.push({ type: 'content_block_start', index, content_block: { type: 'tool_use', id: block.id, name: block.name, input: {} } });
      events.push({ type: 'content_block_delta', index, delta: { type: 'input_json_delta', partial_json: JSON.stringify(block.input) } });
    }
    events.push({ type: 'content_block_stop', index });
  });
  events.push({ type: 'message_delta', delta: { stop_reason: stopReason, stop_sequence: null }, usage: { output_tokens: 7 } });
  events.push({ type: 'message_stop' });
  return events.map(sse).join('');
}

/** A text answer. */
export const text = (id, t) => stream(id, [{ text: t }], 'end_turn');
/** An answer that calls the tool `name` (call `toolId`) with `input`. */
export const toolUse = (id, toolId, name, input) => stream(id, [{ id: toolId, name, input }], 'tool_use');

export class FakeAnthropic {
  /** Listen on 127.0.0.1:0 and answer with `script` (bodies from `text` / `toolUse`), in order. */
  static async start(script) {
    const f = new FakeAnthropic();
    f.script = [...script];
    f.requests = [];
    f.server = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        if (req.method !== 'POST' || !req.url.startsWith('/v1/messages') || req.url.includes('count_tokens')) {
          res.writeHead(404, { 'content-type': 'application/json' });
          return res.end('{"type":"error","error":{"type":"not_found_error","message":"not here"}}');
        }
        f.requests.push(JSON.parse(body));
        const next = f.script.shift();
        if (next === undefined) {
          res.writeHead(500, { 'content-type': 'application/json' });
          return res.end('{"type":"error","error":{"type":"api_error","message":"the script is used up"}}');
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.end(next);
      });
    });
    await new Promise((ok) => f.server.listen(0, '127.0.0.1', ok));
    f.url = `http://127.0.0.1:${f.server.address().port}`;
    return f;
  }

  close() {
    this.server.close();
  }
}

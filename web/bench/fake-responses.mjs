// A stand-in for an OpenAI-compatible Responses API on loopback (the benchmark's only fake: an LLM API): every
// POST …/responses streams one short answer; each request is logged to stdout as a JSON line, and the URL to
// use as `base_url` goes to stderr. Run: `node fake-responses.mjs [PORT]` (0 or none: any free port).
import { createServer } from 'node:http';
const port = Number(process.argv[2] ?? 0);
// The answer starts with `a-N` when the last input says `q-N` (so a benchmark can tell its own answer apart).
const reply = (body) => {
  const m = [...body.matchAll(/q-(\d+)/g)].pop();
  return `${m ? `a-${m[1]}` : 'Hello'} from the fake Responses API.`.split(/(?<= )/);
};
let n = 0;
const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    console.log(JSON.stringify({ method: req.method, url: req.url, body: body.slice(0, 4000) }));
    if (req.method === 'GET' && req.url.endsWith('/models')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ object: 'list', data: [{ id: 'fake-model', object: 'model', created: 0, owned_by: 'fake' }] }));
    }
    if (!req.url.endsWith('/responses')) { res.writeHead(404); return res.end('{}'); }
    const answer = reply(body);
    const id = `resp_fake${++n}`, msg = `msg_fake${n}`, now = Math.floor(Date.now() / 1000);
    let seq = 0;
    const base = { id, object: 'response', created_at: now, model: 'fake-model', status: 'in_progress', output: [], parallel_tool_calls: true, tool_choice: 'auto', tools: [], usage: null, error: null, incomplete_details: null, instructions: null, metadata: {}, temperature: 1, top_p: 1, text: { format: { type: 'text' } }, truncation: 'disabled' };
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const send = (type, data) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq++, ...data })}\n\n`);
    send('response.created', { response: base });
    send('response.in_progress', { response: base });
    const item = { id: msg, type: 'message', role: 'assistant', status: 'in_progress', content: [] };
    send('response.output_item.added', { output_index: 0, item });
    send('response.content_part.added', { item_id: msg, output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } });
    for (const d of answer) send('response.output_text.delta', { item_id: msg, output_index: 0, content_index: 0, delta: d, logprobs: [] });
    const text = answer.join('');
    send('response.output_text.done', { item_id: msg, output_index: 0, content_index: 0, text, logprobs: [] });
    const part = { type: 'output_text', text, annotations: [] };
    send('response.content_part.done', { item_id: msg, output_index: 0, content_index: 0, part });
    const done = { ...item, status: 'completed', content: [part] };
    send('response.output_item.done', { output_index: 0, item: done });
    send('response.completed', { response: { ...base, status: 'completed', output: [done], usage: { input_tokens: 10, input_tokens_details: { cached_tokens: 0 }, output_tokens: answer.length, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 10 + answer.length } } });
    res.end();
  });
});
server.listen(port, '127.0.0.1', () => console.error(`fake responses on http://127.0.0.1:${server.address().port}/v1`));

// A local stand-in for an OpenAI-compatible LLM provider (no real one can be reached from
// the tests): POST /v1/chat/completions streams its answer as SSE chunks, one word every
// `wordDelayMs`, so a test can see the reply's events arrive while it is produced.
//
//   const llm = await startLlm();            // llm.url = http://127.0.0.1:PORT/v1
//   llm.wordDelayMs = 1000;                  // slow replies (an agent that stays busy)
//   llm.requests                             // [{ at, method, path, headers, body }] for every completion asked
//   llm.seen                                 // the same for every request (models, 404s too)
//   await llm.close();
//
// `headers` keeps what says who is asking: authorization, x-api-key (as received, or
// undefined). POST /v1/messages answers Anthropic-style (streamed when `stream: true`).
//
// `opencodeConfig(llm)` is the OpenCode config (OPENCODE_CONFIG_CONTENT) that makes this
// the default model, as in docs/opencode.md §5.

import http from 'node:http';
import { pathToFileURL } from 'node:url';

export const REPLY = 'Hello from the stand-in LLM, streaming word by word to prove nothing is buffered.';

export async function startLlm({ port = 0, host = '127.0.0.1' } = {}) {
  const llm = { requests: [], seen: [], wordDelayMs: 150, sockets: new Set() };
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const text = Buffer.concat(chunks).toString('utf8');
    const seen = {
      at: Date.now(),
      method: req.method,
      path: req.url,
      headers: { authorization: req.headers.authorization, 'x-api-key': req.headers['x-api-key'], cookie: req.headers.cookie },
    };
    llm.seen.push(seen);
    let body = {};
    try {
      body = JSON.parse(text);
    } catch {
      // keep {}
    }
    const pathOnly = req.url.split('?')[0];
    const model = /\/models\/([^/]+)$/.exec(pathOnly);
    if (req.method === 'GET' && (pathOnly.endsWith('/models') || model)) {
      res.writeHead(200, { 'content-type': 'application/json' });
      const one = { id: model ? decodeURIComponent(model[1]) : 'fake-model', object: 'model' };
      res.end(JSON.stringify(model ? one : { object: 'list', data: [one] }));
      return;
    }
    if (req.method === 'POST' && pathOnly.endsWith('/messages')) {
      llm.requests.push({ ...seen, body });
      await anthropicReply(llm, body, res);
      return;
    }
    if (req.method !== 'POST' || !pathOnly.endsWith('/chat/completions')) {
      res.writeHead(404).end();
      return;
    }
    llm.requests.push({ ...seen, body });
    const id = `chatcmpl-${llm.requests.length}`;
    const created = Math.floor(Date.now() / 1000);
    const chunk = (delta, finish = null) =>
      `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: 'fake-model', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    const words = REPLY.split(' ');
    if (body.stream === false) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id, object: 'chat.completion', created, model: 'fake-model', choices: [{ index: 0, message: { role: 'assistant', content: REPLY }, finish_reason: 'stop' }], usage: { prompt_tokens: 10, completion_tokens: words.length, total_tokens: 10 + words.length } }));
      return;
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    res.write(chunk({ role: 'assistant', content: '' }));
    for (let i = 0; i < words.length; i += 1) {
      if (res.destroyed) return;
      await new Promise((r) => setTimeout(r, llm.wordDelayMs));
      res.write(chunk({ content: (i ? ' ' : '') + words[i] }));
    }
    res.write(chunk({}, 'stop'));
    res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: 'fake-model', choices: [], usage: { prompt_tokens: 10, completion_tokens: words.length, total_tokens: 10 + words.length } })}\n\n`);
    res.end('data: [DONE]\n\n');
  });
  server.on('connection', (s) => {
    llm.sockets.add(s);
    s.on('close', () => llm.sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(port, host, resolve));
  llm.url = `http://${host}:${server.address().port}/v1`;
  llm.close = () =>
    new Promise((resolve) => {
      for (const s of llm.sockets) s.destroy();
      server.close(() => resolve());
    });
  return llm;
}

/** A minimal Anthropic Messages API answer (POST /v1/messages), streamed as its SSE events when asked. */
async function anthropicReply(llm, body, res) {
  const id = `msg_${llm.requests.length}`;
  const words = REPLY.split(' ');
  const usage = { input_tokens: 10, output_tokens: words.length };
  if (!body.stream) {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id, type: 'message', role: 'assistant', model: body.model ?? 'fake-model', content: [{ type: 'text', text: REPLY }], stop_reason: 'end_turn', stop_sequence: null, usage }));
    return;
  }
  const event = (type, data) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
  res.write(event('message_start', { message: { id, type: 'message', role: 'assistant', model: body.model ?? 'fake-model', content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 10, output_tokens: 0 } } }));
  res.write(event('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }));
  for (let i = 0; i < words.length; i += 1) {
    if (res.destroyed) return;
    await new Promise((r) => setTimeout(r, llm.wordDelayMs));
    res.write(event('content_block_delta', { index: 0, delta: { type: 'text_delta', text: (i ? ' ' : '') + words[i] } }));
  }
  res.write(event('content_block_stop', { index: 0 }));
  res.write(event('message_delta', { delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: words.length } }));
  res.end(event('message_stop', {}));
}

/** OpenCode config that uses the stand-in as its only model (OPENCODE_CONFIG_CONTENT). */
export function opencodeConfig(llm) {
  return JSON.stringify({
    $schema: 'https://opencode.ai/config.json',
    autoupdate: false,
    share: 'disabled',
    model: 'fake/fake-model',
    small_model: 'fake/fake-model',
    provider: {
      fake: {
        npm: '@ai-sdk/openai-compatible',
        name: 'Stand-in LLM',
        options: { baseURL: llm.url, apiKey: 'not-a-real-key' },
        models: { 'fake-model': { name: 'Fake Model', limit: { context: 32000, output: 4000 } } },
      },
    },
  });
}

// `node tests/harness/llm.mjs --port 9100`: run it on its own (the demo does).
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const i = process.argv.indexOf('--port');
  const llm = await startLlm({ port: i > 0 ? Number(process.argv[i + 1]) : 9100 });
  console.log(`stand-in LLM listening on ${llm.url}`);
  const stop = async () => {
    await llm.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

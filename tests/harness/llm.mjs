// A local stand-in for an OpenAI-compatible LLM provider (no real one can be reached from
// the tests): POST /v1/chat/completions streams its answer as SSE chunks, one word every
// `wordDelayMs`, so a test can see the reply's events arrive while it is produced.
//
//   const llm = await startLlm();            // llm.url = http://127.0.0.1:PORT/v1
//   llm.wordDelayMs = 1000;                  // slow replies (an agent that stays busy)
//   llm.requests                             // [{ at, body }] for every completion asked
//   await llm.close();
//
// `opencodeConfig(llm)` is the OpenCode config (OPENCODE_CONFIG_CONTENT) that makes this
// the default model, as in docs/opencode.md §5.

import http from 'node:http';
import { pathToFileURL } from 'node:url';

export const REPLY = 'Hello from the stand-in LLM, streaming word by word to prove nothing is buffered.';

export async function startLlm({ port = 0, host = '127.0.0.1' } = {}) {
  const llm = { requests: [], wordDelayMs: 150, sockets: new Set() };
  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const text = Buffer.concat(chunks).toString('utf8');
    if (req.method === 'GET' && req.url.endsWith('/models')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: 'fake-model', object: 'model' }] }));
      return;
    }
    if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
      res.writeHead(404).end();
      return;
    }
    let body = {};
    try {
      body = JSON.parse(text);
    } catch {
      // keep {}
    }
    llm.requests.push({ at: Date.now(), body });
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

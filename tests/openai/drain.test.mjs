// SIGTERM while an HTTP stream is in flight: the stream finishes, new
// requests get 503, then the listener closes and stratad exits 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startDaemon } from './daemon.mjs';

test('drain: in-flight stream finishes, new requests 503, listener closes', async () => {
  const daemon = await startDaemon(['--shutdown_grace=20s', '--max_connection_age=1s']);
  const client = new OpenAI({ baseURL: daemon.baseURL, apiKey: 'unused', maxRetries: 0 });
  const stream = await client.completions.create({
    model: 'strata-recursive-tiny', prompt: 'Once upon a time', max_tokens: 48,
    temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true },
  });
  let usage = null;
  let signalled = false;
  let refused = null;
  for await (const chunk of stream) {
    if (!signalled) {
      signalled = true;
      daemon.child.kill('SIGTERM');
      // A new request while draining: 503 (on a new connection; the
      // listener stays open until the drain is done).
      await new Promise((r) => setTimeout(r, 200));
      const r = await fetch(`${daemon.baseURL}/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' },
        body: JSON.stringify({ prompt: 'x', max_tokens: 1 }),
      });
      refused = { status: r.status, body: await r.json(), retry: r.headers.get('retry-after') };
      const health = await fetch(`${daemon.base}/health`, { headers: { connection: 'close' } });
      assert.equal(health.status, 503);
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(usage.completion_tokens, 48, 'the in-flight stream finished');
  assert.equal(refused.status, 503);
  assert.equal(refused.body.error.type, 'service_unavailable');
  assert.equal(refused.retry, '1');
  const { code } = await daemon.exited;
  assert.equal(code, 0, daemon.log());
  await assert.rejects(fetch(`${daemon.base}/health`));  // listener closed
});

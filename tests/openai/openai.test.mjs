// The official `openai` client against a real stratad (docs/api-http.md).
// Every example in that page is one of these calls.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { readdirSync } from 'node:fs';
import OpenAI from 'openai';
import { startDaemon, metric, waitFor } from './daemon.mjs';

const MODEL = 'strata-recursive-tiny';
let daemon;
let client;

before(async () => {
  // Room in the queue for the 512-stream test below.
  daemon = await startDaemon(['--max_waiting_requests=1024']);
  // No retries: a test must see the first answer, not a retried one.
  client = new OpenAI({ baseURL: daemon.baseURL, apiKey: 'unused', maxRetries: 0 });
});

after(async () => {
  const { code } = await daemon.stop();
  assert.equal(code, 0, daemon.log());
});

test('models lists the served model', async () => {
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
  const model = await client.models.retrieve(MODEL);
  assert.equal(model.id, MODEL);
});

test('completion, unary', async () => {
  const c = await client.completions.create({
    model: MODEL, prompt: 'Once upon a time', max_tokens: 8, temperature: 0,
    ignore_eos: true,
  });
  assert.match(c.id, /^cmpl-/);
  assert.equal(c.object, 'text_completion');
  assert.equal(c.model, MODEL);
  assert.match(c.system_fingerprint, /^strata-/);
  assert.equal(c.choices.length, 1);
  assert.ok(c.choices[0].text.length > 0);
  assert.equal(c.choices[0].finish_reason, 'length');
  assert.equal(c.usage.completion_tokens, 8);
  assert.ok(c.usage.prompt_tokens > 0);
  assert.equal(c.usage.total_tokens, c.usage.prompt_tokens + 8);
  assert.equal(typeof c.usage.prompt_tokens_details.cached_tokens, 'number');
});

test('completion, streaming equals unary at temperature 0', async () => {
  const request = { model: MODEL, prompt: 'The little dog', max_tokens: 12, temperature: 0, ignore_eos: true };
  const unary = await client.completions.create(request);
  const stream = await client.completions.create({ ...request, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.text;
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  assert.equal(text, unary.choices[0].text);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 12);
});

test('chat, unary and streaming, content as text parts', async () => {
  const messages = [
    { role: 'system', content: 'You tell short stories.' },
    { role: 'user', content: [{ type: 'text', text: 'Tell me about a cat.' }] },
  ];
  const unary = await client.chat.completions.create({
    model: MODEL, messages, max_completion_tokens: 10, temperature: 0, ignore_eos: true,
  });
  assert.match(unary.id, /^chatcmpl-/);
  assert.equal(unary.object, 'chat.completion');
  assert.equal(unary.choices[0].message.role, 'assistant');
  assert.equal(unary.usage.completion_tokens, 10);

  const stream = await client.chat.completions.create({
    model: MODEL, messages, max_tokens: 10, temperature: 0, ignore_eos: true, stream: true,
  });
  let content = '';
  let role = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    const delta = chunk.choices[0].delta;
    if (delta.role) role = delta.role;
    content += delta.content ?? '';
  }
  assert.equal(role, 'assistant');
  assert.equal(content, unary.choices[0].message.content);
});

test('n > 1 gives n choices, each seeded seed + i', async () => {
  const c = await client.completions.create({
    model: MODEL, prompt: 'A bird', max_tokens: 6, n: 3, seed: 7, temperature: 1, ignore_eos: true,
  });
  assert.deepEqual(c.choices.map((x) => x.index), [0, 1, 2]);
  assert.equal(c.usage.completion_tokens, 18);
  // Choice 1 of seed 7 is the single choice of seed 8.
  const single = await client.completions.create({
    model: MODEL, prompt: 'A bird', max_tokens: 6, seed: 8, temperature: 1, ignore_eos: true,
  });
  assert.equal(c.choices[1].text, single.choices[0].text);
});

test('a batch of prompts gets n choices per prompt', async () => {
  const c = await client.completions.create({
    model: MODEL, prompt: ['One day', 'The sun'], max_tokens: 4, n: 2, temperature: 0, ignore_eos: true,
  });
  assert.equal(c.choices.length, 4);
  assert.equal(c.choices[0].text, c.choices[1].text);  // greedy: same
  assert.equal(c.usage.completion_tokens, 16);
});

test('stop string ends the text before it', async () => {
  const request = { model: MODEL, prompt: 'Once upon a time', max_tokens: 24, temperature: 0, ignore_eos: true };
  const full = (await client.completions.create(request)).choices[0].text;
  const stop = full.slice(6, 9);
  assert.equal(stop.length, 3, `need some text to stop on: ${JSON.stringify(full)}`);
  const cut = await client.completions.create({ ...request, stop: [stop, 'zzzz'] });
  assert.equal(cut.choices[0].text, full.slice(0, full.indexOf(stop)));
  assert.equal(cut.choices[0].finish_reason, 'stop');
  const single = await client.completions.create({ ...request, stop });
  assert.equal(single.choices[0].text, cut.choices[0].text);
});

test('logprobs: completions and chat', async () => {
  const c = await client.completions.create({
    model: MODEL, prompt: 'Once upon a time', max_tokens: 5, temperature: 0, logprobs: 2, ignore_eos: true,
  });
  const lp = c.choices[0].logprobs;
  assert.equal(lp.tokens.length, 5);
  assert.equal(lp.token_logprobs.length, 5);
  assert.equal(lp.tokens.join(''), c.choices[0].text);
  for (let i = 0; i < 5; ++i) {
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.equal(Object.keys(lp.top_logprobs[i]).length <= 2, true);
    // Greedy: the chosen token is the most likely one.
    const best = Math.max(...Object.values(lp.top_logprobs[i]));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-4);
  }
  const chat = await client.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4,
    temperature: 0, logprobs: true, top_logprobs: 3, ignore_eos: true,
  });
  const content = chat.choices[0].logprobs.content;
  assert.equal(content.length, 4);
  assert.equal(content[0].top_logprobs.length, 3);
  assert.deepEqual(content[0].bytes, [...Buffer.from(content[0].token)]);
});

test('a bad request raises BadRequestError naming the field', async () => {
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x', temperature: -1 }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, String(err));
      assert.equal(err.status, 400);
      assert.match(err.message, /temperature: must be in \[0, 100\], got -1/);
      assert.equal(err.param, 'temperature');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    });
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: 'bot', content: 'x' }] }),
    (err) => err instanceof OpenAI.BadRequestError && /messages\[0\]\.role/.test(err.message));
  await assert.rejects(
    client.completions.create({ model: MODEL, prompt: 'x', max_tokens: 'ten' }),
    (err) => err instanceof OpenAI.BadRequestError && /max_tokens: expected an integer, got string/.test(err.message));
});

test('an unknown model is NotFoundError model_not_found', async () => {
  await assert.rejects(
    client.completions.create({ model: 'gpt-4o', prompt: 'x' }),
    (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, String(err));
      assert.equal(err.code, 'model_not_found');
      return true;
    });
});

test('raw HTTP: malformed JSON 400, too large 413, unknown path 404, health 200', async () => {
  const post = (path, body) => fetch(`${daemon.base}${path}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body,
  });
  let r = await post('/v1/completions', '{"prompt": ');
  assert.equal(r.status, 400);
  assert.equal((await r.json()).error.param, 'body');
  r = await post('/v1/completions', JSON.stringify({ prompt: 'x'.repeat(5 << 20) }));
  assert.equal(r.status, 413);
  assert.equal((await r.json()).error.code, 'request_too_large');
  r = await fetch(`${daemon.base}/v1/nothing`);
  assert.equal(r.status, 404);
  r = await fetch(`${daemon.base}/health`);
  assert.equal(r.status, 200);
});

test('a client that aborts mid-stream cancels its generation', async () => {
  const cancelled = 'strata_requests_total{outcome="cancelled"}';
  const before = await metric(daemon, cancelled);
  const tokensBefore = await metric(daemon, 'strata_generation_tokens_total');
  const stream = await client.completions.create({
    model: MODEL, prompt: 'Once upon a time', max_tokens: 2000, temperature: 0,
    ignore_eos: true, stream: true,
  });
  let chunks = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.text !== undefined) ++chunks;
    if (chunks === 2) stream.controller.abort();
  }
  assert.ok(await waitFor(async () => (await metric(daemon, cancelled)) === before + 1),
            'the generation was not cancelled');
  assert.ok(await waitFor(async () =>
    (await metric(daemon, 'strata_requests_running')) === 0 &&
    (await metric(daemon, 'strata_http_responses_open')) === 0));
  const generated = (await metric(daemon, 'strata_generation_tokens_total')) - tokensBefore;
  assert.ok(generated < 2000, `generated ${generated} tokens after the abort`);
});

test('a real socket closed mid-stream cancels its generation', async () => {
  const cancelled = 'strata_requests_total{outcome="cancelled"}';
  const before = await metric(daemon, cancelled);
  const url = new URL(daemon.base);
  const body = JSON.stringify({ prompt: 'Once upon a time', max_tokens: 2000, ignore_eos: true, stream: true });
  await new Promise((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname, () => {
      socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
                   `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    });
    let seen = '';
    socket.on('data', (d) => {
      seen += d;
      if ((seen.match(/data: /g) ?? []).length >= 2) { socket.destroy(); resolve(); }
    });
    socket.on('error', reject);
  });
  assert.ok(await waitFor(async () => (await metric(daemon, cancelled)) === before + 1));
  assert.ok(await waitFor(async () =>
    (await metric(daemon, 'strata_requests_running')) === 0 &&
    (await metric(daemon, 'strata_http_responses_open')) === 0));
});

test('64 concurrent streams all finish', async () => {
  const streams = Array.from({ length: 64 }, async (_, i) => {
    const stream = await client.completions.create({
      model: MODEL, prompt: `Story number ${i}:`, max_tokens: 8, temperature: 0,
      ignore_eos: true, stream: true, stream_options: { include_usage: true },
    });
    let finish = null;
    let usage = null;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) if (c.finish_reason) finish = c.finish_reason;
    }
    return { finish, usage };
  });
  const results = await Promise.all(streams);
  for (const { finish, usage } of results) {
    assert.equal(finish, 'length');
    assert.equal(usage.completion_tokens, 8);
  }
  const http = await metric(daemon, 'strata_api_requests_total{endpoint="/v1/completions",protocol="http"}');
  assert.ok(http >= 64, `http requests counted: ${http}`);
});

test('512 concurrent streaming connections on a bounded number of threads', async () => {
  // Every request is open at once (its connection accepted and its stream
  // started or queued); the daemon's threads do not grow with them.
  let peakThreads = 0;
  const threads = () => readdirSync(`/proc/${daemon.child.pid}/task`).length;
  const streams = Array.from({ length: 512 }, async (_, i) => {
    const stream = await client.completions.create({
      model: MODEL, prompt: `Verse ${i}`, max_tokens: 4, ignore_eos: true, stream: true,
    });
    peakThreads = Math.max(peakThreads, threads());
    let finish = null;
    for await (const chunk of stream) finish = chunk.choices[0]?.finish_reason ?? finish;
    return finish;
  });
  const finishes = await Promise.all(streams);
  assert.deepEqual(new Set(finishes), new Set(['length']));
  assert.ok(peakThreads < 64, `stratad ran ${peakThreads} threads`);
  assert.ok(await waitFor(async () => (await metric(daemon, 'strata_http_responses_open')) === 0));
});

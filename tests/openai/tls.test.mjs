// The official `openai` client over HTTPS (docs/api-http.md, "HTTPS"): with
// --tls_cert the HTTP API port speaks TLS only, and a client trusts the
// test's CA the way a user's would, through NODE_EXTRA_CA_CERTS (read by
// node at start, so the client runs in a child process). The CA and the
// certificate are made at run time with the openssl command.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDaemon } from './daemon.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const MODEL = 'strata-recursive-tiny';
let dir;
let daemon;

function openssl(...args) {
  execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
}

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'strata-openai-tls-'));
  writeFileSync(path.join(dir, 'server.ext'),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  openssl('req', '-x509', ...ec, '-days', '2', '-subj', '/CN=test-ca',
    '-keyout', 'ca.key', '-out', 'ca.pem');
  openssl('req', ...ec, '-subj', '/CN=stratad', '-keyout', 'server.key', '-out', 'server.csr');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-days', '2', '-extfile', 'server.ext', '-out', 'server.pem');
  daemon = await startDaemon(
    [`--tls_cert=${path.join(dir, 'server.pem')}`, `--tls_key=${path.join(dir, 'server.key')}`],
    { ca: readFileSync(path.join(dir, 'ca.pem')) });
});

after(async () => {
  const { code } = await daemon.stop();
  rmSync(dir, { recursive: true, force: true });
  assert.equal(code, 0, daemon.log());
});

// Runs `code` (an ES module beside node_modules) in a fresh node with `env`
// added; its stdout parsed as JSON.
function runClient(code, env) {
  const file = path.join(here, `.tls-client-${process.pid}.mjs`);
  writeFileSync(file, code);
  try {
    return JSON.parse(execFileSync('node', [file], {
      encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env },
    }));
  } finally {
    unlinkSync(file);
  }
}

const client = `
import OpenAI from 'openai';
const client = new OpenAI({ baseURL: process.env.BASE_URL, apiKey: 'unused', maxRetries: 0 });
try {
  const models = await client.models.list();
  const unary = await client.completions.create({
    model: '${MODEL}', prompt: 'Once upon a time', max_tokens: 4, temperature: 0, ignore_eos: true,
  });
  const stream = await client.chat.completions.create({
    model: '${MODEL}', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 6,
    ignore_eos: true, stream: true, stream_options: { include_usage: true },
  });
  let streamed = 0;
  for await (const chunk of stream) if (chunk.usage) streamed = chunk.usage.completion_tokens;
  console.log(JSON.stringify({
    models: models.data.map((m) => m.id), unary: unary.usage.completion_tokens, streamed,
  }));
} catch (error) {
  console.log(JSON.stringify({ error: error.constructor.name }));
}
`;

test('the openai client works over HTTPS trusting the CA via NODE_EXTRA_CA_CERTS', () => {
  const result = runClient(client, {
    BASE_URL: daemon.baseURL, NODE_EXTRA_CA_CERTS: path.join(dir, 'ca.pem'),
  });
  assert.deepEqual(result, { models: [MODEL], unary: 4, streamed: 6 });
});

test('without the CA the client refuses the server', () => {
  assert.deepEqual(runClient(client, { BASE_URL: daemon.baseURL }),
    { error: 'APIConnectionError' });
});

test('plaintext http:// to the HTTPS port fails, and the port keeps serving', async () => {
  await assert.rejects(fetch(`${daemon.baseURL.replace('https:', 'http:')}/models`));
  const result = runClient(client, {
    BASE_URL: daemon.baseURL, NODE_EXTRA_CA_CERTS: path.join(dir, 'ca.pem'),
  });
  assert.deepEqual(result.models, [MODEL]);
});

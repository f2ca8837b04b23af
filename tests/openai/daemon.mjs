// Starts a real stratad with the HTTP API on free ports for the tests, and
// reads its Prometheus metrics. STRATA_BIN_DIR names the build's bin/ (ctest
// sets it); the model is the bundled trained one.
import { spawn } from 'node:child_process';
import https from 'node:https';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const sourceDir = path.resolve(here, '..', '..');
const binDir = process.env.STRATA_BIN_DIR ?? path.join(sourceDir, 'build', 'bin');

async function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

// GET /health over HTTPS trusting `ca` (PEM): its status code.
function httpsHealth(url, ca) {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, (res) => {
      res.resume();
      resolve(res.statusCode);
    }).on('error', reject);
  });
}

// `tls`: { ca } when extraFlags turn TLS on (--tls_cert): the API is then
// https:// and the health check trusts `ca`.
export async function startDaemon(extraFlags = [], tls = null) {
  const httpPort = await freePort();
  const metricsPort = await freePort();
  const child = spawn(path.join(binDir, 'stratad'), [
    `--model=${path.join(sourceDir, 'models', 'strata-recursive-tiny')}`,
    '--port=0',
    `--http_port=${httpPort}`,
    `--metrics_port=${metricsPort}`,
    '--threads=2',
    '--max_num_seqs=64',
    ...extraFlags,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const base = `${tls ? 'https' : 'http'}://127.0.0.1:${httpPort}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`stratad exited: ${log}`);
    try {
      const status = tls
        ? await httpsHealth(`${base}/health`, tls.ca)
        : (await fetch(`${base}/health`)).status;
      if (status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`stratad did not become healthy: ${log}`);
    }
    await sleep(100);
  }
  return {
    base,
    baseURL: `${base}/v1`,
    metricsURL: `http://127.0.0.1:${metricsPort}/metrics`,
    child,
    exited,
    log: () => log,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

// The value of one series ("name" or 'name{label="x"}') in /metrics; 0 when
// absent.
export async function metric(daemon, series) {
  const text = await (await fetch(daemon.metricsURL)).text();
  for (const line of text.split('\n')) {
    if (line.startsWith(series + ' ')) return Number(line.slice(series.length + 1));
  }
  return 0;
}

// Polls until check() is true or the timeout passes; returns the last value.
export async function waitFor(check, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
}

// Runs every example in docs/api-http.md against a real stratad, so the page
// cannot drift from the daemon: each ```sh block with bash, each ```js block
// with node (beside node_modules, so `import OpenAI from 'openai'` is the
// pinned client). The page's address 127.0.0.1:8000 becomes the test
// daemon's; a line that starts the daemon (build/bin/stratad ...) is skipped,
// since the test started one. A block passes when it exits 0 and its output
// contains the text of every `# prints: ...` (sh) or `// prints: ...` (js)
// comment in it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDaemon, sourceDir } from './daemon.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const page = readFileSync(path.join(sourceDir, 'docs', 'api-http.md'), 'utf8');

// [{lang, code, line}] for every fenced sh/js block.
function blocks(markdown) {
  const out = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; ++i) {
    const open = /^```(sh|js)\s*$/.exec(lines[i]);
    if (!open) continue;
    const start = i + 1;
    let end = start;
    while (end < lines.length && lines[end] !== '```') ++end;
    out.push({ lang: open[1], code: lines.slice(start, end).join('\n'), line: start });
    i = end;
  }
  return out;
}

const examples = blocks(page);
let daemon;

before(async () => {
  daemon = await startDaemon();
});

after(async () => {
  const { code } = await daemon.stop();
  assert.equal(code, 0, daemon.log());
});

test('docs/api-http.md has curl and openai examples', () => {
  assert.ok(examples.filter((e) => e.lang === 'sh').length >= 4);
  assert.ok(examples.filter((e) => e.lang === 'js').length >= 2);
});

for (const example of examples) {
  test(`docs/api-http.md:${example.line} (${example.lang})`, () => {
    const address = new URL(daemon.base).host;
    let code = example.code.replaceAll('127.0.0.1:8000', address);
    const expected = [...code.matchAll(/(?:#|\/\/) prints: (.*)$/gm)].map((m) => m[1].trim());
    let output;
    if (example.lang === 'sh') {
      code = code.split('\n').filter((l) => !l.startsWith('build/bin/stratad')).join('\n');
      output = execFileSync('bash', ['-euo', 'pipefail', '-c', code],
        { encoding: 'utf8', timeout: 60_000 });
    } else {
      const file = path.join(here, `.docs-example-${process.pid}-${example.line}.mjs`);
      writeFileSync(file, code);
      try {
        output = execFileSync('node', [file], { encoding: 'utf8', timeout: 60_000 });
      } finally {
        unlinkSync(file);
      }
    }
    for (const text of expected) {
      assert.ok(output.includes(text), `expected "${text}" in:\n${output}`);
    }
  });
}

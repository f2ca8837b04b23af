#!/usr/bin/python3
"""Writes reference token ids for a UTF-8 text file (multilingual.ids.json).

Ids come from tools/reference_tokenizer.py with special-token recognition on
and no BOS, for the whole file and for every line (without its "\\n").

Usage:
  /usr/bin/python3 tools/make_tokenizer_fixture.py \
      --text tests/data/tokenizer/multilingual.txt \
      --tokenizer tests/data/tiny-llama/tokenizer.json \
      --out tests/data/tokenizer/multilingual.ids.json
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_tokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    tok = reference_tokenizer.load(args.tokenizer)
    with open(args.text, "rb") as f:
        text = f.read().decode("utf-8")
    whole = tok.encode(text)
    if tok.decode_bytes(whole) != text.encode("utf-8"):
        raise SystemExit("round trip failed for the whole file")
    lines = []
    for line in text.split("\n"):
        ids = tok.encode(line)
        if tok.decode_bytes(ids) != line.encode("utf-8"):
            raise SystemExit("round trip failed for line %r" % line)
        lines.append({"text": line, "ids": ids})
    if text.endswith("\n"):
        lines.pop()  # the empty string after the final newline
    rel = os.path.relpath(args.tokenizer, os.path.dirname(args.out))
    out = {
        "tokenizer": rel,
        "whole_file": {"add_special_tokens": False, "ids": whole},
        "lines": lines,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        # One line per entry keeps diffs readable.
        f.write("{\n")
        f.write('  "tokenizer": %s,\n' % json.dumps(out["tokenizer"]))
        f.write('  "whole_file": {"add_special_tokens": false, "ids": %s},\n' %
                json.dumps(whole))
        f.write('  "lines": [\n')
        for i, entry in enumerate(lines):
            f.write("    %s%s\n" % (json.dumps(entry, ensure_ascii=False),
                                    "," if i + 1 < len(lines) else ""))
        f.write("  ]\n}\n")
    json.load(open(args.out, encoding="utf-8"))  # sanity: valid JSON
    print("%s: %d ids, %d lines" % (args.out, len(whole), len(lines)))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Reference byte-level BPE encoder/decoder for Hugging Face tokenizer.json files.

This is the independent implementation that Strata's C++ tokenizer is checked
against (tests/data/tokenizer/multilingual.ids.json). It is deliberately plain:

  1. split out added (special) tokens literally, longest match first;
  2. pre-tokenize each remaining span with the Split regex of the pre_tokenizer
     (behavior "Isolated": matches become pieces, the text between them too);
  3. map every UTF-8 byte of a piece to the GPT-2 byte-level alphabet;
  4. repeatedly merge the adjacent pair with the lowest merge rank;
  5. look the resulting symbols up in the vocab.

Only the configurations Strata's fixtures use are supported (Split+ByteLevel
or ByteLevel with use_regex); anything else raises ValueError.

Usage:
  /usr/bin/python3 tools/reference_tokenizer.py TOKENIZER_JSON encode "text"
  /usr/bin/python3 tools/reference_tokenizer.py TOKENIZER_JSON decode 1 2 3
"""

import json
import sys

import regex

# The Llama 3 pre-tokenization pattern.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# The GPT-2 pattern ByteLevel uses when use_regex is true.
GPT2_PATTERN = (r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|"
                r" ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    """GPT-2 byte-level alphabet: byte value -> one printable unicode char.

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls,
    space, 0x7F-0xA0, 0xAD) map to U+0100 upwards in byte order.
    """
    printable = (list(range(ord("!"), ord("~") + 1)) +
                 list(range(ord("\u00a1"), ord("\u00ac") + 1)) +
                 list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    mapping = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def split_isolated(pattern, text):
    """Split text into pieces: every regex match and every gap between them."""
    pieces = []
    pos = 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            pieces.append(text[pos:m.start()])
        if m.end() > m.start():
            pieces.append(m.group(0))
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    return pieces


def bpe_merge(symbols, ranks):
    """Merge adjacent symbol pairs by lowest rank until no pair has a rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best_rank = None
        best_i = -1
        for i in range(len(symbols) - 1):
            r = ranks.get((symbols[i], symbols[i + 1]))
            if r is not None and (best_rank is None or r < best_rank):
                best_rank = r
                best_i = i
        if best_rank is None:
            break
        # Merge every occurrence of this pair, left to right (same as merging
        # the leftmost repeatedly, since equal ranks mean the same pair).
        pair = (symbols[best_i], symbols[best_i + 1])
        merged = []
        i = 0
        while i < len(symbols):
            if (i + 1 < len(symbols) and symbols[i] == pair[0] and
                    symbols[i + 1] == pair[1]):
                merged.append(pair[0] + pair[1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class ReferenceTokenizer:

    def __init__(self, tokenizer_json):
        model = tokenizer_json["model"]
        if model.get("type") != "BPE":
            raise ValueError("only BPE models are supported")
        self.vocab = dict(model["vocab"])
        self.ranks = {}
        for rank, m in enumerate(model["merges"]):
            a, b = m.split(" ") if isinstance(m, str) else m
            self.ranks.setdefault((a, b), rank)
        self.added = {t["content"]: t["id"] for t in
                      tokenizer_json.get("added_tokens", [])}
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        for content, i in self.added.items():
            self.id_to_token[i] = content
        self.special_ids = {t["id"] for t in
                            tokenizer_json.get("added_tokens", [])
                            if t.get("special")}
        self.patterns = self._pre_tokenizer_patterns(
            tokenizer_json.get("pre_tokenizer"))

    @staticmethod
    def _pre_tokenizer_patterns(pre):
        """Returns the list of compiled Split patterns applied in order."""
        if pre is None:
            return []
        steps = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
        patterns = []
        for step in steps:
            if step["type"] == "Split":
                if step.get("behavior") != "Isolated" or step.get("invert"):
                    raise ValueError("only Isolated, non-inverted Split")
                pat = step["pattern"]
                if "Regex" in pat:
                    patterns.append(regex.compile(pat["Regex"]))
                else:
                    patterns.append(regex.compile(regex.escape(pat["String"])))
            elif step["type"] == "ByteLevel":
                if step.get("add_prefix_space"):
                    raise ValueError("add_prefix_space not supported")
                if step.get("use_regex", True):
                    patterns.append(regex.compile(GPT2_PATTERN))
            else:
                raise ValueError("unsupported pre_tokenizer " + step["type"])
        return patterns

    def _split_special(self, text):
        """Yields (is_added, span) with added tokens matched longest-first."""
        contents = sorted(self.added, key=len, reverse=True)
        pos = 0
        start = 0
        while pos < len(text):
            hit = None
            for c in contents:
                if c and text.startswith(c, pos):
                    hit = c
                    break
            if hit is None:
                pos += 1
                continue
            if pos > start:
                yield False, text[start:pos]
            yield True, hit
            pos += len(hit)
            start = pos
        if start < len(text):
            yield False, text[start:]

    def _encode_ordinary(self, text):
        pieces = [text]
        for pattern in self.patterns:
            pieces = [p for piece in pieces
                      for p in split_isolated(pattern, piece)]
        ids = []
        for piece in pieces:
            symbols = [BYTE_TO_CHAR[b] for b in piece.encode("utf-8")]
            for sym in bpe_merge(symbols, self.ranks):
                ids.append(self.vocab[sym])
        return ids

    def encode(self, text, parse_special=True):
        if not parse_special:
            return self._encode_ordinary(text)
        ids = []
        for is_added, span in self._split_special(text):
            if is_added:
                ids.append(self.added[span])
            else:
                ids.extend(self._encode_ordinary(span))
        return ids

    def decode_bytes(self, ids, skip_special=False):
        out = bytearray()
        for i in ids:
            if skip_special and i in self.special_ids:
                continue
            tok = self.id_to_token[i]
            if tok in self.added:
                out += tok.encode("utf-8")
            else:
                out += bytes(CHAR_TO_BYTE[c] for c in tok)
        return bytes(out)

    def decode(self, ids, skip_special=False):
        return self.decode_bytes(ids, skip_special).decode("utf-8",
                                                           errors="replace")


def load(path):
    with open(path, encoding="utf-8") as f:
        return ReferenceTokenizer(json.load(f))


def main(argv):
    if len(argv) < 3 or argv[2] not in ("encode", "decode"):
        print(__doc__, file=sys.stderr)
        return 2
    tok = load(argv[1])
    if argv[2] == "encode":
        print(json.dumps(tok.encode(" ".join(argv[3:]))))
    else:
        sys.stdout.write(tok.decode([int(x) for x in argv[3:]]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

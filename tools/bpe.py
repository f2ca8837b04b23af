#!/usr/bin/python3
"""Trains a small byte-level BPE and writes a Hugging Face tokenizer.json.

The tokenizer mirrors Llama 3's: pre-tokenization with the Llama 3 split
regex, GPT-2 byte-level alphabet (all 256 bytes are base tokens, ids 0-255 in
byte order), then the learned merges, then the special tokens as added tokens.

Training is the classic algorithm: count pre-token "words", repeatedly merge
the most frequent adjacent symbol pair (ties broken by the lexicographically
smallest pair, so the result is deterministic), keeping pair counts up to date
incrementally.

Usage:
  /usr/bin/python3 tools/bpe.py --out tokenizer.json --vocab-size 1792 \
      --specials llama3 [--corpus FILE ...]
"""

import argparse
import collections
import glob
import json
import os
import sys

import regex

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_tokenizer  # noqa: E402

# Llama 3.1 special tokens, in Llama 3's id order, followed by reserved ones.
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|reserved_special_token_3|>",
    "<|reserved_special_token_4|>",
    "<|reserved_special_token_5|>",
    "<|reserved_special_token_6|>",
    "<|reserved_special_token_7|>",
]

CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

SPECIALS = {"llama3": LLAMA3_SPECIALS, "chatml": CHATML_SPECIALS}

# Text files shipped by Debian that make a reasonable English corpus.
DEFAULT_CORPUS_GLOBS = [
    "/usr/share/common-licenses/*",
]

HERE = os.path.dirname(os.path.abspath(__file__))
MULTILINGUAL = os.path.join(HERE, "..", "tests", "data", "tokenizer",
                            "multilingual.txt")


def read_corpus(paths, multilingual_repeats):
    texts = []
    for p in paths:
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, encoding="utf-8", errors="ignore", newline="") as f:
                texts.append(f.read())
    with open(MULTILINGUAL, encoding="utf-8", newline="") as f:
        multi = f.read()
    # Repeat the multilingual text so CJK/emoji byte pairs win a few merges,
    # with the special-token strings removed so they are not learned as text.
    for s in LLAMA3_SPECIALS + CHATML_SPECIALS:
        multi = multi.replace(s, " ")
    texts.extend([multi] * multilingual_repeats)
    return texts


def count_words(texts):
    pattern = regex.compile(reference_tokenizer.LLAMA3_PATTERN)
    counts = collections.Counter()
    for text in texts:
        for piece in reference_tokenizer.split_isolated(pattern, text):
            counts[piece] += 1
    words = []
    freqs = []
    for piece, n in sorted(counts.items()):
        words.append([reference_tokenizer.BYTE_TO_CHAR[b]
                      for b in piece.encode("utf-8")])
        freqs.append(n)
    return words, freqs


def train(words, freqs, num_base_plus_merges):
    """Returns (vocab list in id order, merges list in rank order)."""
    vocab = [reference_tokenizer.BYTE_TO_CHAR[b] for b in range(256)]
    known = set(vocab)
    merges = []
    pair_counts = collections.Counter()
    pair_words = collections.defaultdict(set)  # pair -> indices of words
    for wi, w in enumerate(words):
        for a, b in zip(w, w[1:]):
            pair_counts[(a, b)] += freqs[wi]
            pair_words[(a, b)].add(wi)

    while len(vocab) < num_base_plus_merges:
        if not pair_counts:
            break
        best = min(pair_counts.items(), key=lambda kv: (-kv[1], kv[0]))
        pair, count = best
        if count <= 0:
            break
        merged_sym = pair[0] + pair[1]
        merges.append(pair)
        if merged_sym not in known:
            known.add(merged_sym)
            vocab.append(merged_sym)
        for wi in list(pair_words[pair]):
            w = words[wi]
            f = freqs[wi]
            # Remove this word's old pair counts, merge, add the new ones.
            for a, b in zip(w, w[1:]):
                pair_counts[(a, b)] -= f
                if pair_counts[(a, b)] <= 0:
                    del pair_counts[(a, b)]
            new_w = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == pair[0] and w[i + 1] == pair[1]:
                    new_w.append(merged_sym)
                    i += 2
                else:
                    new_w.append(w[i])
                    i += 1
            words[wi] = new_w
            for a, b in zip(new_w, new_w[1:]):
                pair_counts[(a, b)] += f
                pair_words[(a, b)].add(wi)
        pair_words.pop(pair, None)
        pair_counts.pop(pair, None)
    return vocab, merges


def tokenizer_json(vocab, merges, specials):
    added = []
    for i, s in enumerate(specials):
        added.append({
            "id": len(vocab) + i,
            "content": s,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        })
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": reference_tokenizer.LLAMA3_PATTERN},
                    "behavior": "Isolated",
                    "invert": False,
                },
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": False,
                },
            ],
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(vocab)},
            "merges": [a + " " + b for a, b in merges],
        },
    }


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def train_from_args(vocab_size, corpus, multilingual_repeats):
    paths = corpus
    if not paths:
        paths = sorted(p for g in DEFAULT_CORPUS_GLOBS for p in glob.glob(g))
    words, freqs = count_words(read_corpus(paths, multilingual_repeats))
    return train(words, freqs, vocab_size)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=1792,
                    help="base bytes + merged tokens (specials come after)")
    ap.add_argument("--specials", choices=sorted(SPECIALS), default="llama3")
    ap.add_argument("--corpus", nargs="*", default=[],
                    help="training text files (default: Debian licenses)")
    ap.add_argument("--multilingual-repeats", type=int, default=8)
    ap.add_argument("--merges-from", default=None,
                    help="reuse vocab+merges of an existing tokenizer.json "
                    "instead of training (only the specials change)")
    args = ap.parse_args()
    if args.merges_from:
        with open(args.merges_from, encoding="utf-8") as f:
            model = json.load(f)["model"]
        vocab = sorted(model["vocab"], key=model["vocab"].get)
        merges = [tuple(m.split(" ")) for m in model["merges"]]
    else:
        vocab, merges = train_from_args(args.vocab_size, args.corpus,
                                        args.multilingual_repeats)
    write_json(tokenizer_json(vocab, merges, SPECIALS[args.specials]),
               args.out)
    print("%s: %d tokens, %d merges, %d specials" %
          (args.out, len(vocab), len(merges), len(SPECIALS[args.specials])))


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Extracts the King James Version text from Debian's bible-kjv packages.

Input: the `bible` program (package bible-kjv) reading /usr/lib/bible.data
(package bible-kjv-text); the KJV text is public domain (see
/usr/share/doc/bible-kjv-text/copyright). Output, in --out-dir:
  chapters.json  [{"book": str, "chapter": int, "split": "train"|"heldout",
                   "verses": [str, ...]}, ...] in canonical order
  train.txt      the training chapters as plain text (BPE training corpus)
  heldout.txt    the held-out chapters as plain text
Every --heldout-every-th chapter (counted over the whole Bible, starting
with the (every/2)-th) is held out; the rest are for training.

A chapter as text (also what train.py feeds the model):
  "Genesis 1\n\nIn the beginning God created ...\nAnd the earth ...\n"
(heading, blank line, one verse per line, verse numbers dropped).

Usage:
  /usr/bin/python3 tools/train/prepare_corpus.py --out-dir /tmp/kjv
"""

import argparse
import json
import os
import subprocess


def read_bible(bible_bin):
    """Returns [(book, chapter, [verse text])] from `bible` output."""
    out = subprocess.run([bible_bin, "-l100000", "Gen1:1-Rev22:21"],
                         check=True, capture_output=True, text=True).stdout
    chapters = []
    for line in out.split("\n"):
        if not line.strip():
            continue
        if line.startswith(" "):  # "  12 verse text"
            number, text = line.strip().split(" ", 1)
            if not number.isdigit() or not chapters:
                raise ValueError("unexpected verse line %r" % line)
            chapters[-1][2].append(" ".join(text.split()))
        else:  # "1 Samuel 3"
            book, chapter = line.rsplit(" ", 1)
            chapters.append((book, int(chapter), []))
    return chapters


def chapter_text(ch):
    return "%s %d\n\n%s\n" % (ch["book"], ch["chapter"], "\n".join(
        ch["verses"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--bible", default="/usr/bin/bible")
    ap.add_argument("--heldout-every", type=int, default=40)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    chapters = []
    for i, (book, chapter, verses) in enumerate(read_bible(args.bible)):
        held = i % args.heldout_every == args.heldout_every // 2
        chapters.append({"book": book, "chapter": chapter,
                         "split": "heldout" if held else "train",
                         "verses": verses})
    with open(os.path.join(args.out_dir, "chapters.json"), "w") as f:
        json.dump(chapters, f)
    for split in ("train", "heldout"):
        with open(os.path.join(args.out_dir, split + ".txt"), "w") as f:
            for ch in chapters:
                if ch["split"] == split:
                    f.write(chapter_text(ch) + "\n")
    n_held = sum(c["split"] == "heldout" for c in chapters)
    print("%d chapters (%d held out), %d verses" %
          (len(chapters), n_held, sum(len(c["verses"]) for c in chapters)))


if __name__ == "__main__":
    main()

#!/bin/bash
# Trains models/strata-recursive-tiny from scratch and writes its model card.
# Slow (about an hour on 2 cores): run it in the background, e.g.
#   nohup tools/train/run.sh /tmp/strata-train > /tmp/strata-train.log 2>&1 &
# Packages: STRATA_DEPS_EXTRA="python3-torch python3-numpy python3-regex \
#   libopenblas0-pthread bible-kjv bible-kjv-text" scripts/install-deps.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/strata-train}
MINUTES=${MINUTES:-63}
PY=/usr/bin/python3
OUT=models/strata-recursive-tiny
mkdir -p "$WORK"

# 1. Corpus: KJV chapters (train / held-out split).
$PY tools/train/prepare_corpus.py --out-dir "$WORK/kjv"
# 2. Tokenizer: byte-level BPE, 4096 tokens + Llama 3 specials.
$PY tools/bpe.py --out "$WORK/tokenizer.json" --vocab-size 4096 \
  --specials llama3 --corpus "$WORK/kjv/train.txt" --multilingual-repeats 1
# 3. Training (checkpoints + model export every 5 minutes).
nice -n 19 $PY tools/train/train.py --corpus-dir "$WORK/kjv" \
  --tokenizer "$WORK/tokenizer.json" --work-dir "$WORK/run" --out $OUT \
  --hidden 256 --layers 2 --loops 3 --heads 8 --kv-heads 2 \
  --intermediate 640 --lora-rank 8 --lora-alpha 16 --seq 128 --batch 8 \
  --lr 3e-3 --warmup 100 --chat-per-chapter 3 --threads 1 \
  --max-minutes "$MINUTES" --checkpoint-minutes 5
# 4. Held-out evaluation, samples, loss curve, README.md.
nice -n 19 $PY tools/train/evaluate.py --model $OUT --corpus-dir "$WORK/kjv" \
  --work-dir "$WORK/run"

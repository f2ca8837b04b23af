#!/bin/bash
# Regenerates every tokenizer/model fixture and the bundled default model,
# deterministically (fixed seeds; the BPE trainer breaks ties by pair order).
# Needs /usr/bin/python3 with torch, numpy and regex. Run from anywhere:
#   tools/make_fixtures.sh
# Inputs: tests/data/tokenizer/multilingual.txt (hand-written) and the Debian
# license texts in /usr/share/common-licenses (BPE training corpus).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
DATA=tests/data

# 1. Byte-level BPE: 256 bytes + 1536 merges = 1792 tokens (+ specials).
$PY tools/bpe.py --out $DATA/tiny-llama/tokenizer.json --vocab-size 1792 \
  --specials llama3
BASE=$DATA/tiny-llama/tokenizer.json

# 2. Reference token ids for the multilingual text.
$PY tools/make_tokenizer_fixture.py --text $DATA/tokenizer/multilingual.txt \
  --tokenizer $BASE --out $DATA/tokenizer/multilingual.ids.json

# 3. tiny-llama: F32, untied, GQA 4/2, head_dim 16, llama3 rope_scaling.
$PY tools/make_random_llama.py --out $DATA/tiny-llama --tokenizer-base $BASE \
  --arch llama --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
  --intermediate 160 --max-position 512 --dtype f32 --untied --seed 1
$PY tools/reference_forward.py --model $DATA/tiny-llama \
  --prompt "Once upon a time, there was a tiny llama" --steps 20 \
  --out $DATA/tiny-llama/reference.json

# 4. tiny-qwen2: BF16, two shards, tied, q/k/v bias, ChatML, no BOS.
$PY tools/make_random_llama.py --out $DATA/tiny-qwen2 --tokenizer-base $BASE \
  --arch qwen2 --hidden 64 --layers 2 --heads 4 --kv-heads 2 \
  --intermediate 160 --max-position 512 --dtype bf16 --shards 2 --tied --seed 1
$PY tools/reference_forward.py --model $DATA/tiny-qwen2 \
  --prompt $'<|im_start|>user\nHello, tiny model!<|im_end|>\n<|im_start|>assistant\n' \
  --steps 20 --out $DATA/tiny-qwen2/reference.json

# 5. The bundled default model (random weights, BF16, untied).
$PY tools/make_random_llama.py --out models/strata-tiny --tokenizer-base $BASE \
  --arch llama --hidden 256 --layers 4 --heads 8 --kv-heads 2 \
  --intermediate 704 --max-position 4096 --llama3-rope-original-max 8192 \
  --dtype bf16 --untied --seed 7

# 6. Cross-check the references with the KV-cache forward pass.
$PY tools/check_reference.py --model $DATA/tiny-llama
$PY tools/check_reference.py --model $DATA/tiny-qwen2

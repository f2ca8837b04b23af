#!/usr/bin/python3
"""Writes a randomly initialised Llama-family model directory in HF layout.

Output: config.json, generation_config.json, model.safetensors (or N shards
model-0000K-of-0000N.safetensors + model.safetensors.index.json),
tokenizer.json (vocab + merges taken from --tokenizer-base, specials for the
architecture: Llama 3 or ChatML) and tokenizer_config.json (with chat
template).

Initialisation is deliberately NOT the usual std 0.02: that makes logits so
flat that a greedy reference is fragile. Instead linear weights have std
gain/sqrt(in_features) (activations keep their scale), RMSNorm weights are
1 + N(0, norm_noise), embeddings N(0, 1) and the untied lm_head has std
lm_gain/sqrt(hidden) (logits have std ~lm_gain). Deterministic for a --seed.

Usage:
  /usr/bin/python3 tools/make_random_llama.py --out DIR \
      --tokenizer-base tests/data/tiny-llama/tokenizer.json [--arch llama|qwen2]
      [--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 160]
      [--dtype f32|bf16|f16] [--shards N] [--seed S] [--tied|--untied]
      [--vocab-size N]
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bpe  # noqa: E402
import safetensors_io  # noqa: E402

# The Llama 3 Instruct chat template (same text as Meta's release).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")

# The ChatML template used by Qwen2 Instruct models.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
TORCH_DTYPE_NAME = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer-base", required=True,
                    help="tokenizer.json whose vocab and merges are reused")
    ap.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=0,
                    help="default hidden / heads")
    ap.add_argument("--intermediate", type=int, default=160)
    ap.add_argument("--max-position", type=int, default=512)
    ap.add_argument("--rms-norm-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=0.0,
                    help="default 500000 (llama) / 1000000 (qwen2)")
    ap.add_argument("--llama3-rope-original-max", type=int, default=64,
                    help="llama3 rope_scaling original_max_position_embeddings"
                    " (0: no rope_scaling); llama only")
    ap.add_argument("--llama3-rope-factor", type=float, default=8.0)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="f32")
    ap.add_argument("--shards", type=int, default=1)
    tie = ap.add_mutually_exclusive_group()
    tie.add_argument("--tied", dest="tied", action="store_true", default=None)
    tie.add_argument("--untied", dest="tied", action="store_false")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=0,
                    help="pad the embedding and LM head to this many rows "
                    "(a benchmark model's vocabulary; the tokenizer never "
                    "emits the extra ids); 0 = the tokenizer's size")
    ap.add_argument("--gain", type=float, default=1.6)
    ap.add_argument("--lm-gain", type=float, default=4.0)
    ap.add_argument("--norm-noise", type=float, default=0.1)
    ap.add_argument("--bias-std", type=float, default=0.2)
    ap.add_argument("--model-max-length", type=int, default=0,
                    help="tokenizer_config model_max_length (default "
                    "--max-position)")
    args = ap.parse_args()
    if args.tied is None:
        args.tied = args.arch == "qwen2"
    if not args.rope_theta:
        args.rope_theta = 500000.0 if args.arch == "llama" else 1000000.0
    if not args.head_dim:
        args.head_dim = args.hidden // args.heads
    if not args.model_max_length:
        args.model_max_length = args.max_position
    return args


def make_weights(args, vocab_size):
    """Returns an ordered {name: float32 tensor} in HF naming."""
    g = torch.Generator().manual_seed(args.seed)

    def normal(shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def lin(out_f, in_f):
        return normal((out_f, in_f), args.gain / in_f**0.5)

    def norm(n):
        return 1.0 + normal((n,), args.norm_noise)

    h = args.hidden
    q_out = args.heads * args.head_dim
    kv_out = args.kv_heads * args.head_dim
    bias = args.arch == "qwen2"
    w = {"model.embed_tokens.weight": normal((vocab_size, h), 1.0)}
    for i in range(args.layers):
        p = "model.layers.%d." % i
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = lin(q_out, h)
        w[p + "self_attn.k_proj.weight"] = lin(kv_out, h)
        w[p + "self_attn.v_proj.weight"] = lin(kv_out, h)
        if bias:
            w[p + "self_attn.q_proj.bias"] = normal((q_out,), args.bias_std)
            w[p + "self_attn.k_proj.bias"] = normal((kv_out,), args.bias_std)
            w[p + "self_attn.v_proj.bias"] = normal((kv_out,), args.bias_std)
        w[p + "self_attn.o_proj.weight"] = lin(h, q_out)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = lin(args.intermediate, h)
        w[p + "mlp.up_proj.weight"] = lin(args.intermediate, h)
        w[p + "mlp.down_proj.weight"] = lin(h, args.intermediate)
    w["model.norm.weight"] = norm(h)
    if not args.tied:
        w["lm_head.weight"] = normal((vocab_size, h), args.lm_gain / h**0.5)
    return w


def write_weights(args, weights):
    dtype = DTYPES[args.dtype]
    weights = {k: v.to(dtype) for k, v in weights.items()}
    meta = {"format": "pt"}
    if args.shards == 1:
        safetensors_io.save(weights, os.path.join(args.out,
                                                  "model.safetensors"), meta)
        return
    # Contiguous shards of roughly equal byte size.
    sizes = [t.numel() * t.element_size() for t in weights.values()]
    total = sum(sizes)
    names = list(weights)
    shards = [[] for _ in range(args.shards)]
    acc = 0
    for name, size in zip(names, sizes):
        k = min(args.shards - 1, acc * args.shards // total)
        shards[k].append(name)
        acc += size
    if any(not s for s in shards):
        raise SystemExit("too many shards for this model")
    weight_map = {}
    for k, shard in enumerate(shards):
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, args.shards)
        safetensors_io.save({n: weights[n] for n in shard},
                            os.path.join(args.out, fname), meta)
        for n in shard:
            weight_map[n] = fname
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_json(index, os.path.join(args.out, "model.safetensors.index.json"))


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(args.tokenizer_base, encoding="utf-8") as f:
        base = json.load(f)["model"]
    vocab = sorted(base["vocab"], key=base["vocab"].get)
    merges = [tuple(m.split(" ")) for m in base["merges"]]
    specials = bpe.LLAMA3_SPECIALS if args.arch == "llama" else \
        bpe.CHATML_SPECIALS
    tok = bpe.tokenizer_json(vocab, merges, specials)
    special_id = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab_size = len(vocab) + len(specials)
    if args.vocab_size:
        if args.vocab_size < vocab_size:
            raise SystemExit("--vocab-size is smaller than the tokenizer's %d"
                             % vocab_size)
        vocab_size = args.vocab_size
    bpe.write_json(tok, os.path.join(args.out, "tokenizer.json"))

    config = {
        "architectures": ["LlamaForCausalLM" if args.arch == "llama" else
                          "Qwen2ForCausalLM"],
        "model_type": args.arch,
        "vocab_size": vocab_size,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_position,
        "rms_norm_eps": args.rms_norm_eps,
        "rope_theta": args.rope_theta,
        "initializer_range": args.gain / args.hidden**0.5,
        "tie_word_embeddings": args.tied,
        "torch_dtype": TORCH_DTYPE_NAME[args.dtype],
        "use_cache": True,
    }
    added_decoder = {
        str(t["id"]): {k: v for k, v in t.items() if k != "id"}
        for t in tok["added_tokens"]
    }
    if args.arch == "llama":
        config.update({
            "attention_bias": False,
            "mlp_bias": False,
            "pretraining_tp": 1,
            "bos_token_id": special_id["<|begin_of_text|>"],
            "eos_token_id": [special_id["<|end_of_text|>"],
                             special_id["<|eot_id|>"]],
        })
        if args.llama3_rope_original_max:
            config["rope_scaling"] = {
                "rope_type": "llama3",
                "factor": args.llama3_rope_factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings":
                    args.llama3_rope_original_max,
            }
        else:
            config["rope_scaling"] = None
        tok_config = {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": added_decoder,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "chat_template": LLAMA3_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": True,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": args.model_max_length,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
        gen_config = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
        }
    else:
        config.update({
            "rope_scaling": None,
            "sliding_window": args.max_position,
            "use_sliding_window": False,
            "max_window_layers": args.layers,
            "attention_dropout": 0.0,
            # Like real Qwen2 configs: bos_token_id names <|endoftext|> even
            # though the tokenizer adds no BOS.
            "bos_token_id": special_id["<|endoftext|>"],
            "eos_token_id": special_id["<|im_end|>"],
        })
        tok_config = {
            "add_bos_token": False,
            "add_prefix_space": False,
            "added_tokens_decoder": added_decoder,
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": CHATML_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "model_max_length": args.model_max_length,
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
        }
        gen_config = {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": [special_id["<|im_end|>"],
                             special_id["<|endoftext|>"]],
            "pad_token_id": special_id["<|endoftext|>"],
        }
    write_json(config, os.path.join(args.out, "config.json"))
    write_json(tok_config, os.path.join(args.out, "tokenizer_config.json"))
    write_json(gen_config, os.path.join(args.out, "generation_config.json"))
    write_weights(args, make_weights(args, vocab_size))
    print("%s: %s, vocab %d, hidden %d, %d layers, %s, %d shard(s)" %
          (args.out, config["architectures"][0], vocab_size, args.hidden,
           args.layers, args.dtype, args.shards))


if __name__ == "__main__":
    main()

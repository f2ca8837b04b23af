#!/usr/bin/python3
"""Plain PyTorch reference forward pass for Llama-family models + reference.json.

This is the INDEPENDENT implementation Strata's C++ engine is checked against.
It favours obviousness over speed: no KV cache (every step recomputes the whole
sequence), everything in float64, one function per piece of the model.

Supported: Llama (optionally with Llama 3 rope_scaling), Qwen2 (q/k/v bias),
grouped-query attention, tied or untied lm_head, F32/F16/BF16 weights (upcast).

Usage:
  /usr/bin/python3 tools/reference_forward.py --model DIR \
      --prompt "text" --steps 20 --out DIR/reference.json
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402

DTYPE = torch.float64


def load_weights(model_dir):
    """Returns {name: float64 tensor} from model.safetensors or a sharded set."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights = {}
    for name in files:
        for k, v in safetensors_io.load(os.path.join(model_dir, name)).items():
            weights[k] = v.to(DTYPE)
    return weights


def rope_inv_freq(config):
    """inv_freq[i] = theta^(-2i/d), i < d/2, with Llama 3 smoothing if set."""
    head_dim = config.get("head_dim") or (config["hidden_size"] //
                                          config["num_attention_heads"])
    theta = float(config.get("rope_theta", 10000.0))
    inv_freq = 1.0 / (theta**(
        torch.arange(0, head_dim, 2, dtype=DTYPE) / head_dim))  # [d/2]
    scaling = config.get("rope_scaling")
    if not scaling:
        return inv_freq
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ValueError("unsupported rope_type %r" % rope_type)
    factor = float(scaling["factor"])
    low = float(scaling["low_freq_factor"])
    high = float(scaling["high_freq_factor"])
    old_ctx = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_ctx / low
    high_freq_wavelen = old_ctx / high
    out = []
    for f in inv_freq.tolist():
        wavelen = 2.0 * math.pi / f
        if wavelen < high_freq_wavelen:  # high frequency: unchanged
            out.append(f)
        elif wavelen > low_freq_wavelen:  # low frequency: scaled down
            out.append(f / factor)
        else:  # in between: interpolate
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append((1.0 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=DTYPE)


def rms_norm(x, weight, eps):
    # x: [T, hidden], weight: [hidden]
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def rotate_half(x):
    # x: [..., d] -> [-x2, x1] where x1/x2 are the first/second halves.
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x, positions, inv_freq):
    # x: [heads, T, d], positions: [T], inv_freq: [d/2]
    angles = positions.to(DTYPE)[:, None] * inv_freq[None, :]  # [T, d/2]
    emb = torch.cat([angles, angles], dim=-1)  # [T, d]
    return x * emb.cos() + rotate_half(x) * emb.sin()


def linear(x, w, b=None):
    # x: [T, in], w: [out, in], b: [out]
    y = x @ w.t()
    return y + b if b is not None else y


class ReferenceModel:

    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            self.config = json.load(f)
        c = self.config
        self.w = load_weights(model_dir)
        self.num_layers = c["num_hidden_layers"]
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads", self.num_heads)
        self.head_dim = c.get("head_dim") or (c["hidden_size"] //
                                              self.num_heads)
        self.eps = float(c["rms_norm_eps"])
        self.inv_freq = rope_inv_freq(c)
        tied = c.get("tie_word_embeddings", False)
        self.lm_head = (self.w["model.embed_tokens.weight"]
                        if tied else self.w["lm_head.weight"])
        if tied and "lm_head.weight" in self.w:
            raise ValueError("tied model must not have lm_head.weight")

    def attention(self, i, x, positions):
        # x: [T, hidden] (normed). Causal GQA attention over the T tokens.
        p = "model.layers.%d.self_attn." % i
        T = x.shape[0]
        q = linear(x, self.w[p + "q_proj.weight"], self.w.get(p + "q_proj.bias"))
        k = linear(x, self.w[p + "k_proj.weight"], self.w.get(p + "k_proj.bias"))
        v = linear(x, self.w[p + "v_proj.weight"], self.w.get(p + "v_proj.bias"))
        q = q.view(T, self.num_heads, self.head_dim).transpose(0, 1)
        k = k.view(T, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = v.view(T, self.num_kv_heads, self.head_dim).transpose(0, 1)
        q = apply_rope(q, positions, self.inv_freq)  # [H, T, d]
        k = apply_rope(k, positions, self.inv_freq)  # [KV, T, d]
        # Query head h uses kv head h // (H / KV).
        group = self.num_heads // self.num_kv_heads
        k = k.repeat_interleave(group, dim=0)  # [H, T, d]
        v = v.repeat_interleave(group, dim=0)  # [H, T, d]
        scores = (q @ k.transpose(1, 2)) / math.sqrt(self.head_dim)  # [H,T,T]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ v).transpose(0, 1).reshape(T, -1)  # [T, H*d]
        return linear(out, self.w[p + "o_proj.weight"])

    def mlp(self, i, x):
        p = "model.layers.%d.mlp." % i
        gate = linear(x, self.w[p + "gate_proj.weight"])
        up = linear(x, self.w[p + "up_proj.weight"])
        return linear(torch.nn.functional.silu(gate) * up,
                      self.w[p + "down_proj.weight"])

    def forward(self, ids):
        """Logits for every position of `ids` (positions 0..T-1): [T, vocab]."""
        positions = torch.arange(len(ids))
        h = self.w["model.embed_tokens.weight"][torch.tensor(ids)]  # [T, hid]
        for i in range(self.num_layers):
            p = "model.layers.%d." % i
            h = h + self.attention(
                i, rms_norm(h, self.w[p + "input_layernorm.weight"], self.eps),
                positions)
            h = h + self.mlp(
                i,
                rms_norm(h, self.w[p + "post_attention_layernorm.weight"],
                         self.eps))
        h = rms_norm(h, self.w["model.norm.weight"], self.eps)
        return h @ self.lm_head.t()  # [T, vocab]


def round_sig(x, digits=9):
    return float("%.*g" % (digits, x))


def make_reference(model, prompt_ids, steps):
    """Prefill step with logits at every prompt position, then greedy steps."""
    seq = list(prompt_ids)
    logits = model.forward(seq)
    records = [{
        "input_ids": list(prompt_ids),
        "start_position": 0,
        "logits": logits,
    }]
    generated = [int(torch.argmax(logits[-1]))]
    margins = []
    for _ in range(steps):
        margins.append(top2_margin(records[-1]["logits"][-1]))
        seq.append(generated[-1])
        full = model.forward(seq)  # no cache: recompute everything
        records.append({
            "input_ids": [generated[-1]],
            "start_position": len(seq) - 1,
            "logits": full[-1:],
        })
        generated.append(int(torch.argmax(full[-1])))
    margins.append(top2_margin(records[-1]["logits"][-1]))
    return records, generated, margins


def top2_margin(row):
    top = torch.topk(row, 2).values
    return float(top[0] - top[1])


def write_reference(path, prompt_text, prompt_ids, records, generated):
    with open(path, "w") as f:
        f.write("{\n")
        f.write('  "prompt_text": %s,\n' % json.dumps(prompt_text))
        f.write('  "prompt_ids": %s,\n' % json.dumps(prompt_ids))
        f.write('  "steps": [\n')
        for si, r in enumerate(records):
            f.write('    {"input_ids": %s, "start_position": %d, "logits": [\n'
                    % (json.dumps(r["input_ids"]), r["start_position"]))
            rows = r["logits"].tolist()
            for ri, row in enumerate(rows):
                f.write("      [%s]%s\n" %
                        (", ".join(repr(round_sig(x)) for x in row),
                         "," if ri + 1 < len(rows) else ""))
            f.write("    ]}%s\n" % ("," if si + 1 < len(records) else ""))
        f.write("  ],\n")
        f.write('  "generated_ids": %s\n' % json.dumps(generated))
        f.write("}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--prompt", required=True, help="prompt text")
    ap.add_argument("--steps", type=int, default=20,
                    help="greedy decode steps after the prefill")
    ap.add_argument("--out", required=True, help="reference.json to write")
    args = ap.parse_args()

    with open(os.path.join(args.model, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    tok = reference_tokenizer.load(os.path.join(args.model, "tokenizer.json"))
    prompt_ids = tok.encode(args.prompt)
    if tok_config.get("add_bos_token"):
        prompt_ids = [tok.added[tok_config["bos_token"]]] + prompt_ids

    model = ReferenceModel(args.model)
    records, generated, margins = make_reference(model, prompt_ids,
                                                 args.steps)
    write_reference(args.out, args.prompt, prompt_ids, records, generated)
    print("%s: %d prompt ids, generated %s" %
          (args.out, len(prompt_ids), generated))
    print("greedy top-1/top-2 logit margins: min %.4f, all %s" %
          (min(margins), ["%.3f" % m for m in margins]))
    max_abs = max(float(r["logits"].abs().max()) for r in records)
    print("max |logit| %.3f" % max_abs)


if __name__ == "__main__":
    main()

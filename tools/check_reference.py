#!/usr/bin/python3
"""Cross-checks a reference.json with a second, differently shaped forward pass.

reference_forward.py recomputes the whole sequence in float64 each step. This
checker instead runs token by token in float32 with an explicit KV cache and
per-head loops, i.e. the way an inference engine runs, and reports the largest
logit difference against reference.json (expected ~1e-5; the C++ tests use
1e-4). It also checks that generated_ids are the argmaxes.

Usage:
  /usr/bin/python3 tools/check_reference.py --model DIR [--tolerance 1e-4]
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_forward  # noqa: E402


def rope_one(x, pos, inv_freq):
    # x: [d] for one head at one position; pairs (i, i + d/2).
    half = x.shape[0] // 2
    out = torch.empty_like(x)
    for i in range(half):
        c = math.cos(pos * float(inv_freq[i]))
        s = math.sin(pos * float(inv_freq[i]))
        a, b = float(x[i]), float(x[i + half])
        out[i] = a * c - b * s
        out[i + half] = b * c + a * s
    return out


class CachedModel:

    def __init__(self, model_dir):
        ref = reference_forward.ReferenceModel(model_dir)
        self.ref = ref
        self.w = {k: v.to(torch.float32) for k, v in ref.w.items()}
        self.lm_head = ref.lm_head.to(torch.float32)
        self.inv_freq = ref.inv_freq.to(torch.float32)
        self.cache = [([], []) for _ in range(ref.num_layers)]  # per layer K,V

    def norm(self, x, name):
        var = float((x * x).mean())
        return x / math.sqrt(var + self.ref.eps) * self.w[name]

    def step(self, token, pos):
        """One token at position pos -> logits [vocab] (float32)."""
        r = self.ref
        h = self.w["model.embed_tokens.weight"][token].clone()  # [hidden]
        d = r.head_dim
        group = r.num_heads // r.num_kv_heads
        for i in range(r.num_layers):
            p = "model.layers.%d.self_attn." % i
            x = self.norm(h, "model.layers.%d.input_layernorm.weight" % i)

            def proj(name):
                y = self.w[p + name + ".weight"] @ x
                b = self.w.get(p + name + ".bias")
                return y + b if b is not None else y

            q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
            ks, vs = self.cache[i]
            ks.append([rope_one(k[j * d:(j + 1) * d], pos, self.inv_freq)
                       for j in range(r.num_kv_heads)])
            vs.append([v[j * d:(j + 1) * d] for j in range(r.num_kv_heads)])
            heads = []
            for hq in range(r.num_heads):
                qh = rope_one(q[hq * d:(hq + 1) * d], pos, self.inv_freq)
                kv = hq // group
                scores = torch.tensor([float(qh @ ks[t][kv]) / math.sqrt(d)
                                       for t in range(len(ks))])
                probs = torch.softmax(scores, dim=0)
                out = sum(probs[t] * vs[t][kv] for t in range(len(vs)))
                heads.append(out)
            h = h + self.w[p + "o_proj.weight"] @ torch.cat(heads)
            m = "model.layers.%d.mlp." % i
            x = self.norm(
                h, "model.layers.%d.post_attention_layernorm.weight" % i)
            g = self.w[m + "gate_proj.weight"] @ x
            u = self.w[m + "up_proj.weight"] @ x
            h = h + self.w[m + "down_proj.weight"] @ (g * torch.sigmoid(g) * u)
        h = self.norm(h, "model.norm.weight")
        return self.lm_head @ h


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    with open(os.path.join(args.model, "reference.json")) as f:
        ref = json.load(f)
    model = CachedModel(args.model)
    worst = 0.0
    argmaxes = []
    for step in ref["steps"]:
        for j, token in enumerate(step["input_ids"]):
            logits = model.step(token, step["start_position"] + j)
            want = torch.tensor(step["logits"][j], dtype=torch.float32)
            worst = max(worst, float((logits - want).abs().max()))
        argmaxes.append(int(torch.argmax(want)))
    ok = worst <= args.tolerance and argmaxes == ref["generated_ids"]
    print("%s: max |logit diff| (f32 KV-cache vs reference) = %.3g; "
          "generated_ids %s" % (args.model, worst,
                                "match" if argmaxes == ref["generated_ids"]
                                else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Reference (float64) recursive Llama with early exit and both KV policies.

The independent implementation Strata's C++ recursive engine is checked
against; docs/recursive-models.md is the specification. Obvious over fast:
one token row at a time through explicit loops, a plain dict KV cache.

Model: K unique Llama layers (config num_hidden_layers) looped N times
(num_loops), CYCLE sharing: effective layer j = loop * K + layer. Relaxed
(lora_rank r > 0): the weight of projection P at (loop l, layer k) is
  W_eff = W_k + (lora_alpha / r) * B_{l,k} @ A_{l,k}
with A [r, in_features], B [out_features, r]. The exit after loop l applies
the final norm and the LM head to the residual stream h_l after loop l.
Every (loop, layer) has its own KV: kv layer index = loop * K + layer.

Exit rule (decode tokens only; prompt tokens always run all N loops): after
loop l, exit if l == N-1, or a forced exit says so, or (l >= min_loops - 1 and
confidence >= threshold); threshold >= 1.0 disables early exit. confidence is
computed from softmax(exit logits) at temperature 1:
  "max_prob": p_top1;  "margin": p_top1 - p_top2;
or from the residual stream alone (O(hidden), no LM head):
  "saturation": cos(h_l, h_{l-1}), h_{-1} = the token's embedding;
  "classifier": sigmoid(w_l . (h_l / rms(h_l)) + b_l), the model's optional
      exit classifier (config "exit_classifier"; exit_classifier.py).

KV of the loops a token skipped (loops e+1..N-1 after exiting at e):
  "propagate": for every skipped (loop l, layer k):
      x = RMSNorm(h_e) * input_layernorm_k;  k = RoPE(x @ W_eff(l,k,k_proj)^T,
      pos);  v = x @ W_eff(l,k,v_proj)^T      (h_e = residual after loop e)
  "recompute": loops e+1..N-1 run for real on the token (attending as usual),
      their K/V are stored; the token's output is still the exit's.

Usage:
  /usr/bin/python3 tools/recursive/model.py --model DIR --prompt TEXT \
      [--steps 40] [--threshold 0.9 --confidence max_prob --min-loops 1]
      [--kv-policy propagate|recompute]
"""

import argparse
import json
import math
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import reference_forward as rf  # noqa: E402
import reference_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402

DTYPE = torch.float64
ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")
PROJS = ATTN_PROJS + MLP_PROJS
KV_POLICIES = ("propagate", "recompute")
CONFIDENCES = ("max_prob", "margin", "saturation", "classifier")
# The measures computed from the exit logits / from the residual stream.
LOGIT_CONFIDENCES = ("max_prob", "margin")
HIDDEN_CONFIDENCES = ("saturation", "classifier")
CLASSIFIER_WEIGHT = "exit_classifier.weight"  # [num_loops - 1, hidden]
CLASSIFIER_BIAS = "exit_classifier.bias"  # [num_loops - 1]


def proj_name(proj):
    return ("self_attn." if proj in ATTN_PROJS else "mlp.") + proj


def lora_names(loop, layer, proj):
    """(lora_A name, lora_B name) of one (loop, layer, projection)."""
    p = "model.loops.%d.layers.%d.%s." % (loop, layer, proj_name(proj))
    return p + "lora_A", p + "lora_B"


def confidence(logits, kind):
    """Exit confidence of one logits row [vocab] (softmax at temperature 1)."""
    probs = torch.softmax(logits.to(DTYPE), dim=-1)
    top = torch.topk(probs, 2).values
    if kind == "max_prob":
        return float(top[0])
    if kind == "margin":
        return float(top[0] - top[1])
    raise ValueError("unknown confidence %r" % kind)


def saturation(h, h_prev):
    """Cosine similarity of the residual stream [hidden] after a loop and
    before it (float64)."""
    a, b = h.to(torch.float64), h_prev.to(torch.float64)
    den = float(torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b))
    return float(a @ b) / den if den > 0 else 0.0


def classifier_features(h, eps):
    """The classifier's input: h / rms(h) (RMSNorm without a weight), [..., H].
    """
    h = h.to(torch.float64)
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)


class ExitPoint:
    """What a hidden-state measure sees at a loop boundary of one token."""

    def __init__(self, model, hidden, prev_hidden):
        self.model = model
        self.hidden = hidden  # [hidden] residual after the loop
        self.prev_hidden = prev_hidden  # [hidden] before it (the embedding)

    def confidence(self, loop, kind):
        if kind == "saturation":
            return saturation(self.hidden, self.prev_hidden)
        if kind == "classifier":
            return self.model.classifier_confidence(loop, self.hidden)
        raise ValueError("%r is not a hidden-state measure" % kind)


class KVCache:
    """kv layer -> {position: (k [kv_heads, d] post-RoPE, v [kv_heads, d])}."""

    def __init__(self, num_kv_layers):
        self.layers = [dict() for _ in range(num_kv_layers)]

    def put(self, kv_layer, pos, k, v):
        self.layers[kv_layer][pos] = (k, v)

    def get(self, kv_layer, pos):
        return self.layers[kv_layer][pos]

    def stacked(self, kv_layer, end):
        """K, V for positions 0..end-1: each [kv_heads, end, d]."""
        entries = self.layers[kv_layer]
        missing = [p for p in range(end) if p not in entries]
        if missing:
            raise ValueError("kv layer %d lacks positions %s" %
                             (kv_layer, missing[:5]))
        ks = torch.stack([entries[p][0] for p in range(end)], dim=1)
        vs = torch.stack([entries[p][1] for p in range(end)], dim=1)
        return ks, vs


class RecursiveModel:
    """Float64 reference of a (relaxed) recursive Llama; N = 1 is a Llama."""

    def __init__(self, config, weights):
        c = config
        self.config = c
        self.w = {n: t.to(DTYPE) for n, t in weights.items()}
        self.num_layers = c["num_hidden_layers"]  # K
        self.num_loops = int(c.get("num_loops", 1) or 1)  # N
        self.num_kv_layers = self.num_layers * self.num_loops
        self.num_heads = c["num_attention_heads"]
        self.num_kv_heads = c.get("num_key_value_heads", self.num_heads)
        self.head_dim = c.get("head_dim") or (c["hidden_size"] //
                                              self.num_heads)
        self.eps = float(c["rms_norm_eps"])
        self.inv_freq = rf.rope_inv_freq(c)
        self.rank = int(c.get("lora_rank", 0) or 0)
        self.lora_scale = (float(c["lora_alpha"]) / self.rank
                           if self.rank else 0.0)
        tied = c.get("tie_word_embeddings", False)
        self.lm_head = (self.w["model.embed_tokens.weight"]
                        if tied else self.w["lm_head.weight"])
        # Optional exit classifier: [N-1, hidden] weights and [N-1] biases.
        self.classifier = None
        if CLASSIFIER_WEIGHT in self.w:
            self.classifier = (self.w[CLASSIFIER_WEIGHT],
                               self.w[CLASSIFIER_BIAS])
        self._eff = {}
        for l in range(self.num_loops):
            for k in range(self.num_layers):
                for proj in PROJS:
                    self._eff[(l, k, proj)] = self._effective(l, k, proj)

    @classmethod
    def load(cls, model_dir, classifier=True):
        """classifier: also load the exit classifier the config names."""
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        weights = rf.load_weights(model_dir)
        spec = config.get("exit_classifier")
        if classifier and spec:
            weights.update(load_classifier(model_dir, spec, config))
        return cls(config, weights)

    def classifier_confidence(self, loop, h):
        """P(loop's top-1 == the last loop's) of one residual row [hidden]."""
        if self.classifier is None:
            raise ValueError("the model has no exit classifier")
        w, b = self.classifier
        z = float(classifier_features(h, self.eps) @ w[loop].to(
            torch.float64)) + float(b[loop])
        return 1.0 / (1.0 + math.exp(-z))

    def _effective(self, loop, layer, proj):
        w = self.w["model.layers.%d.%s.weight" % (layer, proj_name(proj))]
        if not self.rank:
            return w
        a_name, b_name = lora_names(loop, layer, proj)
        a, b = self.w[a_name], self.w[b_name]  # [r, in], [out, r]
        return w + self.lora_scale * (b @ a)

    def weight(self, loop, layer, proj):
        """Effective weight [out_features, in_features] of a projection."""
        return self._eff[(loop, layer, proj)]

    def norm_weight(self, layer, which):
        return self.w["model.layers.%d.%s.weight" % (layer, which)]

    def exit_logits(self, h):
        # h: [T, hidden] residual stream -> [T, vocab]
        return rf.rms_norm(h, self.w["model.norm.weight"], self.eps) @ \
            self.lm_head.t()

    def kv_projection(self, loop, layer, h, positions):
        """K (post-RoPE) and V of (loop, layer) for layer input h [T, hidden]:
        each [kv_heads, T, d]."""
        T = h.shape[0]
        x = rf.rms_norm(h, self.norm_weight(layer, "input_layernorm"),
                        self.eps)
        k = rf.linear(x, self.weight(loop, layer, "k_proj"))
        v = rf.linear(x, self.weight(loop, layer, "v_proj"))
        k = k.view(T, self.num_kv_heads, self.head_dim).transpose(0, 1)
        v = v.view(T, self.num_kv_heads, self.head_dim).transpose(0, 1)
        return rf.apply_rope(k, positions, self.inv_freq), v

    def layer(self, cache, loop, layer, h, positions):
        """Runs (loop, layer) on rows h [T, hidden] at consecutive
        `positions` [T]; stores their K/V; attends to every cached position
        <= its own at kv layer loop*K+layer. Returns the new h."""
        T = h.shape[0]
        kv_layer = loop * self.num_layers + layer
        x = rf.rms_norm(h, self.norm_weight(layer, "input_layernorm"),
                        self.eps)
        q = rf.linear(x, self.weight(loop, layer, "q_proj"))
        q = q.view(T, self.num_heads, self.head_dim).transpose(0, 1)
        q = rf.apply_rope(q, positions, self.inv_freq)  # [H, T, d]
        k, v = self.kv_projection(loop, layer, h, positions)
        for i, p in enumerate(positions.tolist()):
            cache.put(kv_layer, p, k[:, i], v[:, i])
        end = int(positions[-1]) + 1
        ks, vs = cache.stacked(kv_layer, end)  # [KV, end, d]
        group = self.num_heads // self.num_kv_heads
        ks = ks.repeat_interleave(group, dim=0)
        vs = vs.repeat_interleave(group, dim=0)
        scores = (q @ ks.transpose(1, 2)) / math.sqrt(self.head_dim)
        allowed = torch.arange(end)[None, :] <= positions[:, None]  # [T,end]
        scores = scores.masked_fill(~allowed, float("-inf"))
        out = (torch.softmax(scores, dim=-1) @ vs).transpose(0, 1)
        h = h + rf.linear(out.reshape(T, -1),
                          self.weight(loop, layer, "o_proj"))
        x = rf.rms_norm(h, self.norm_weight(layer, "post_attention_layernorm"),
                        self.eps)
        gate = rf.linear(x, self.weight(loop, layer, "gate_proj"))
        up = rf.linear(x, self.weight(loop, layer, "up_proj"))
        act = torch.nn.functional.silu(gate) * up
        return h + rf.linear(act, self.weight(loop, layer, "down_proj"))

    def run_loop(self, cache, loop, h, positions):
        for k in range(self.num_layers):
            h = self.layer(cache, loop, k, h, positions)
        return h

    def prefill(self, cache, ids, start=0):
        """All N loops for tokens `ids` at positions start..; returns the
        exit logits of every loop: list of [T, vocab]."""
        positions = torch.arange(start, start + len(ids))
        h = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        out = []
        for l in range(self.num_loops):
            h = self.run_loop(cache, l, h, positions)
            out.append(self.exit_logits(h))
        return out

    def forward_all_loops(self, ids):
        """No shared cache, full depth: per-loop logits, list of [T, vocab]."""
        return self.prefill(KVCache(self.num_kv_layers), ids)

    def decode(self, cache, token, position, exit_rule, kv_policy):
        """One decode token through the loops with the exit rule.

        exit_rule(loop, logits [vocab], point=ExitPoint) -> bool (called for
        loops < N-1).
        Returns {"exit_loop", "logits" (of the exit loop), "loop_logits"
        (every computed loop's exit logits), "exit_hidden" [hidden]}.
        """
        if kv_policy not in KV_POLICIES:
            raise ValueError("unknown kv policy %r" % kv_policy)
        positions = torch.tensor([position])
        h = self.w["model.embed_tokens.weight"][torch.tensor([token])]
        loop_logits = []
        exit_loop = self.num_loops - 1
        for l in range(self.num_loops):
            h_prev = h
            h = self.run_loop(cache, l, h, positions)
            logits = self.exit_logits(h)[0]
            loop_logits.append(logits)
            point = ExitPoint(self, h[0], h_prev[0])
            if l < self.num_loops - 1 and exit_rule(l, logits, point=point):
                exit_loop = l
                break
        h_exit = h
        if kv_policy == "propagate":
            for l in range(exit_loop + 1, self.num_loops):
                for k in range(self.num_layers):
                    kk, vv = self.kv_projection(l, k, h_exit, positions)
                    cache.put(l * self.num_layers + k, position, kk[:, 0],
                              vv[:, 0])
        else:
            for l in range(exit_loop + 1, self.num_loops):
                h = self.run_loop(cache, l, h, positions)
        return {"exit_loop": exit_loop, "logits": loop_logits[exit_loop],
                "loop_logits": loop_logits, "exit_hidden": h_exit[0]}


def threshold_rule(threshold, kind="max_prob", min_loops=1):
    """The per-request exit rule; threshold >= 1.0 never exits."""
    if kind not in CONFIDENCES:
        raise ValueError("unknown confidence %r" % kind)

    def rule(loop, logits, point=None):
        if threshold >= 1.0 or loop < min_loops - 1:
            return False
        if kind in HIDDEN_CONFIDENCES:
            return point.confidence(loop, kind) >= threshold
        return confidence(logits, kind) >= threshold
    return rule


def forced_rule(exit_loop):
    """Exit exactly after `exit_loop` (None: full depth)."""
    return lambda loop, logits, point=None: (exit_loop is not None and
                                             loop == exit_loop)


def load_classifier(model_dir, spec, config):
    """{CLASSIFIER_WEIGHT, CLASSIFIER_BIAS} from the file config
    "exit_classifier": {"file": ...} names, shape-checked."""
    path = os.path.join(model_dir, spec["file"])
    t = safetensors_io.load(path)
    n, hidden = int(config.get("num_loops", 1)), config["hidden_size"]
    w, b = t.get(CLASSIFIER_WEIGHT), t.get(CLASSIFIER_BIAS)
    if (w is None or b is None or tuple(w.shape) != (n - 1, hidden) or
            tuple(b.shape) != (n - 1,)):
        raise ValueError("%s: expected %s [%d, %d] and %s [%d]" % (
            path, CLASSIFIER_WEIGHT, n - 1, hidden, CLASSIFIER_BIAS, n - 1))
    return {CLASSIFIER_WEIGHT: w, CLASSIFIER_BIAS: b}


def generate(model, prompt_ids, steps, kv_policy="propagate", forced=None,
             rule=None):
    """Greedy generation: prefill (full depth), then `steps` decode steps.

    forced: {decode step s (1-based, the s-th token fed after the prompt):
    exit loop}; otherwise `rule` (default: never exit). Returns
    (cache, records, generated): records[0] is the prefill {"input_ids",
    "start_position", "logits" [T, vocab]}, records[s] a decode step with
    "exit_loop", "logits" [1, vocab], "loop_logits".
    """
    cache = KVCache(model.num_kv_layers)
    logits = model.prefill(cache, prompt_ids)[-1]
    records = [{"input_ids": list(prompt_ids), "start_position": 0,
                "logits": logits, "exit_loop": model.num_loops - 1}]
    generated = [int(torch.argmax(logits[-1]))]
    rule = rule or threshold_rule(1.0)
    for s in range(1, steps + 1):
        pos = len(prompt_ids) + s - 1
        step_rule = forced_rule(forced.get(s)) if forced is not None else rule
        r = model.decode(cache, generated[-1], pos, step_rule, kv_policy)
        records.append({"input_ids": [generated[-1]], "start_position": pos,
                        "logits": r["logits"][None, :],
                        "loop_logits": r["loop_logits"],
                        "exit_loop": r["exit_loop"]})
        generated.append(int(torch.argmax(r["logits"])))
    return cache, records, generated


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threshold", type=float, default=1.0)
    ap.add_argument("--confidence", choices=CONFIDENCES, default="max_prob")
    ap.add_argument("--min-loops", type=int, default=1)
    ap.add_argument("--kv-policy", choices=KV_POLICIES, default="propagate")
    args = ap.parse_args()
    with open(os.path.join(args.model, "tokenizer_config.json")) as f:
        tok_config = json.load(f)
    tok = reference_tokenizer.load(os.path.join(args.model, "tokenizer.json"))
    ids = tok.encode(args.prompt)
    if tok_config.get("add_bos_token"):
        ids = [tok.added[tok_config["bos_token"]]] + ids
    model = RecursiveModel.load(args.model)
    _, records, generated = generate(
        model, ids, args.steps, args.kv_policy,
        rule=threshold_rule(args.threshold, args.confidence, args.min_loops))
    print(args.prompt + tok.decode(generated))
    print("exit loops:", [r["exit_loop"] for r in records[1:]])


if __name__ == "__main__":
    main()

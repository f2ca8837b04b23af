#!/usr/bin/python3
"""Trainable recursive Llama (torch.nn.Module), batched, for tools/train/.

The same model as tools/recursive/model.py (see docs/recursive-models.md), but
written for training speed instead of obviousness: whole [batch, seq] blocks,
no KV cache, and every loop's exit logits computed so the early-exit loss can
supervise each loop. `export_weights()` returns the tensors under the names
the reference, the converter and the C++ loader use; test_recursive.py checks
that this module and the float64 reference produce the same logits.
"""

import math

import torch
import torch.nn.functional as F

ATTN_PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJS = ("gate_proj", "up_proj", "down_proj")


def proj_shapes(config):
    """{proj: (out_features, in_features)} for one layer."""
    h = config["hidden_size"]
    d = config["head_dim"]
    inter = config["intermediate_size"]
    q = config["num_attention_heads"] * d
    kv = config["num_key_value_heads"] * d
    return {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h),
            "o_proj": (h, q), "gate_proj": (inter, h), "up_proj": (inter, h),
            "down_proj": (h, inter)}


def proj_prefix(proj):
    return "self_attn." if proj in ATTN_PROJS else "mlp."


class RecursiveLM(torch.nn.Module):
    """K unique layers looped N times (CYCLE), per-(loop, layer) LoRA."""

    def __init__(self, config, seed=0):
        super().__init__()
        self.config = config
        c = config
        self.hidden = c["hidden_size"]
        self.num_layers = c["num_hidden_layers"]  # K
        self.num_loops = c.get("num_loops", 1)  # N
        self.heads = c["num_attention_heads"]
        self.kv_heads = c["num_key_value_heads"]
        self.head_dim = c["head_dim"]
        self.eps = float(c["rms_norm_eps"])
        self.rank = c.get("lora_rank", 0)
        self.lora_scale = (float(c.get("lora_alpha", self.rank)) / self.rank
                           if self.rank else 0.0)
        g = torch.Generator().manual_seed(seed)
        std = 0.02
        depth = self.num_layers * self.num_loops

        def normal(shape, s):
            return torch.nn.Parameter(torch.randn(*shape, generator=g) * s)

        self.embed = normal((c["vocab_size"], self.hidden), std)  # [V, H]
        self.final_norm = torch.nn.Parameter(torch.ones(self.hidden))
        self.in_norm = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.ones(self.hidden))
             for _ in range(self.num_layers)])
        self.post_norm = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.ones(self.hidden))
             for _ in range(self.num_layers)])
        shapes = proj_shapes(c)
        self.weights = torch.nn.ParameterDict()  # "k.proj" -> [out, in]
        self.lora_a = torch.nn.ParameterDict()  # "l.k.proj" -> [r, in]
        self.lora_b = torch.nn.ParameterDict()  # "l.k.proj" -> [out, r]
        for k in range(self.num_layers):
            for proj, (out_f, in_f) in shapes.items():
                s = std / math.sqrt(2 * depth) if proj in (
                    "o_proj", "down_proj") else std
                self.weights["%d_%s" % (k, proj)] = normal((out_f, in_f), s)
        if self.rank:
            for l in range(self.num_loops):
                for k in range(self.num_layers):
                    for proj, (out_f, in_f) in shapes.items():
                        key = "%d_%d_%s" % (l, k, proj)
                        self.lora_a[key] = normal((self.rank, in_f),
                                                  1.0 / math.sqrt(in_f))
                        self.lora_b[key] = torch.nn.Parameter(
                            torch.zeros(out_f, self.rank))
        theta = float(c.get("rope_theta", 10000.0))
        inv_freq = 1.0 / theta**(
            torch.arange(0, self.head_dim, 2, dtype=torch.float64) /
            self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rms_norm(self, x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w

    def linear(self, x, loop, layer, proj):
        y = x @ self.weights["%d_%s" % (layer, proj)].t()
        if self.rank:
            key = "%d_%d_%s" % (loop, layer, proj)
            y = y + ((x @ self.lora_a[key].t()) @ self.lora_b[key].t()) * \
                self.lora_scale
        return y

    def rope(self, x, cos, sin):
        # x: [B, heads, T, d]; cos/sin: [T, d]
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def layer(self, h, loop, k, cos, sin, mask):
        # h: [B, T, H] residual stream; returns the updated stream.
        B, T, _ = h.shape
        x = self.rms_norm(h, self.in_norm[k])
        q = self.linear(x, loop, k, "q_proj").view(B, T, self.heads,
                                                   self.head_dim)
        kk = self.linear(x, loop, k, "k_proj").view(B, T, self.kv_heads,
                                                    self.head_dim)
        v = self.linear(x, loop, k, "v_proj").view(B, T, self.kv_heads,
                                                   self.head_dim)
        q = self.rope(q.transpose(1, 2), cos, sin)  # [B, Hq, T, d]
        kk = self.rope(kk.transpose(1, 2), cos, sin)  # [B, Hkv, T, d]
        v = v.transpose(1, 2)
        group = self.heads // self.kv_heads
        kk = kk.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ kk.transpose(-1, -2)) / math.sqrt(self.head_dim)
        probs = torch.softmax(scores + mask, dim=-1)  # [B, Hq, T, T]
        att = (probs @ v).transpose(1, 2).reshape(B, T, -1)
        h = h + self.linear(att, loop, k, "o_proj")
        x = self.rms_norm(h, self.post_norm[k])
        act = F.silu(self.linear(x, loop, k, "gate_proj")) * self.linear(
            x, loop, k, "up_proj")
        return h + self.linear(act, loop, k, "down_proj")

    def forward(self, ids):
        """ids [B, T] -> list over loops of exit hidden states [B, T, H]
        (final norm applied; logits = state @ embed.T)."""
        return [self.rms_norm(h, self.final_norm)
                for h in self.residual_streams(ids)[1:]]

    def residual_streams(self, ids):
        """ids [B, T] -> [embeddings, h_0, ..., h_{N-1}], each [B, T, H]: the
        residual stream before loop 0 and after every loop (no final norm).
        """
        B, T = ids.shape
        pos = torch.arange(T, dtype=torch.float64)
        ang = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat([ang, ang], dim=-1)
        dtype = self.embed.dtype
        cos, sin = emb.cos().to(dtype), emb.sin().to(dtype)
        mask = torch.full((T, T), float("-inf"), dtype=dtype).triu(1)
        h = self.embed[ids]
        streams = [h]
        for l in range(self.num_loops):
            for k in range(self.num_layers):
                h = self.layer(h, l, k, cos, sin, mask)
            streams.append(h)
        return streams

    def logits(self, state):
        return state @ self.embed.t()

    def export_weights(self):
        """{name: float32 tensor} in the Strata recursive naming (tied)."""
        w = {"model.embed_tokens.weight": self.embed}
        for k in range(self.num_layers):
            p = "model.layers.%d." % k
            w[p + "input_layernorm.weight"] = self.in_norm[k]
            for proj in ATTN_PROJS + MLP_PROJS:
                w[p + proj_prefix(proj) + proj + ".weight"] = \
                    self.weights["%d_%s" % (k, proj)]
            w[p + "post_attention_layernorm.weight"] = self.post_norm[k]
        w["model.norm.weight"] = self.final_norm
        if self.rank:
            for l in range(self.num_loops):
                for k in range(self.num_layers):
                    for proj in ATTN_PROJS + MLP_PROJS:
                        key = "%d_%d_%s" % (l, k, proj)
                        p = "model.loops.%d.layers.%d.%s%s." % (
                            l, k, proj_prefix(proj), proj)
                        w[p + "lora_A"] = self.lora_a[key]
                        w[p + "lora_B"] = self.lora_b[key]
        return {n: t.detach().float().contiguous() for n, t in w.items()}

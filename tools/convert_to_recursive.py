#!/usr/bin/python3
"""Converts a standard Llama checkpoint into a (relaxed) recursive one.

Following "Relaxed Recursive Transformers" (Bae et al., 2024) with CYCLE
sharing: the L original layers become K = L / N unique layers looped N times;
effective layer j = loop * K + k runs shared layer k.

Shared-layer initialisation (--init):
  stepwise: shared layer k := original layer k * N (every N-th layer);
  average:  shared layer k := the mean of the original layers tied to it,
            i.e. layers l * K + k for l = 0..N-1 (norm weights included).
Relaxation (--lora-rank r > 0): for every (loop l, layer k) and projection P,
the residual R = T(l, k, P) - W_shared(k, P) is approximated by its truncated
SVD, R ~= U_r S_r V_r^T, stored as
  lora_B = U_r S_r / s  [out, r],   lora_A = V_r^T  [r, in],   s = alpha / r
so that W_shared + s * B @ A is the best rank-r approximation of T. T is the
original weight of layer j = l * K + k; with norm folding (default) the
original RMSNorm weight is folded in for the projections that read a normed
input (q, k, v: input_layernorm; gate, up: post_attention_layernorm):
  T = W_orig(j) * (n_orig(j) / n_shared(k))   (column-wise)
so that a full-rank conversion reproduces the original model exactly (the
recursive model keeps only the shared norms). A projection whose
min(out, in) < r gets zero-padded factors. Embeddings, final norm and
lm_head are copied. Llama only (no attention biases).

Usage:
  /usr/bin/python3 tools/convert_to_recursive.py --model IN_DIR --out OUT_DIR \
      --loops N [--init stepwise|average] [--lora-rank 8] [--lora-alpha 16]
      [--no-fold-norms] [--dtype f32|bf16|f16]
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "recursive"))
import model as recursive_model  # noqa: E402
import model_dir  # noqa: E402
import reference_forward  # noqa: E402

NORM_OF = {"q_proj": "input_layernorm", "k_proj": "input_layernorm",
           "v_proj": "input_layernorm",
           "gate_proj": "post_attention_layernorm",
           "up_proj": "post_attention_layernorm"}
LAYER_TENSORS = ["input_layernorm", "post_attention_layernorm"] + [
    recursive_model.proj_name(p) for p in recursive_model.PROJS]


def layer_weight(w, layer, tensor):
    return w["model.layers.%d.%s.weight" % (layer, tensor)]


def convert(config, weights, num_loops, init="stepwise", lora_rank=0,
            lora_alpha=None, fold_norms=True):
    """Returns (recursive config, {name: float64 tensor})."""
    if config.get("attention_bias") or any(n.endswith(".bias")
                                           for n in weights):
        raise ValueError("attention/MLP biases are not supported")
    num_orig = config["num_hidden_layers"]
    if num_loops < 1 or num_orig % num_loops:
        raise ValueError("num_loops %d must divide %d layers" %
                         (num_loops, num_orig))
    K = num_orig // num_loops
    w = {n: t.to(torch.float64) for n, t in weights.items()}
    out = {n: t for n, t in w.items() if not n.startswith("model.layers.")}
    for k in range(K):
        if init == "stepwise":
            src = k * num_loops
            for t in LAYER_TENSORS:
                out["model.layers.%d.%s.weight" % (k, t)] = \
                    layer_weight(w, src, t).clone()
        elif init == "average":
            tied = [l * K + k for l in range(num_loops)]
            for t in LAYER_TENSORS:
                out["model.layers.%d.%s.weight" % (k, t)] = torch.stack(
                    [layer_weight(w, j, t) for j in tied]).mean(dim=0)
        else:
            raise ValueError("unknown init %r" % init)
    alpha = float(lora_alpha if lora_alpha is not None else lora_rank)
    if lora_rank:
        scale = alpha / lora_rank
        for l in range(num_loops):
            for k in range(K):
                j = l * K + k
                for proj in recursive_model.PROJS:
                    name = recursive_model.proj_name(proj)
                    target = layer_weight(w, j, name)
                    shared = out["model.layers.%d.%s.weight" % (k, name)]
                    if fold_norms and proj in NORM_OF:
                        ratio = (layer_weight(w, j, NORM_OF[proj]) /
                                 out["model.layers.%d.%s.weight" %
                                     (k, NORM_OF[proj])])
                        target = target * ratio[None, :]
                    a, b = low_rank(target - shared, lora_rank)
                    a_name, b_name = recursive_model.lora_names(l, k, proj)
                    out[a_name] = a
                    out[b_name] = b / scale
    rc = model_dir.recursive_config(config, num_loops, lora_rank, alpha,
                                    num_layers=K)
    return rc, out


def low_rank(residual, rank):
    """(A [rank, in], B [out, rank]) with B @ A the best rank-r approx."""
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    r = min(rank, s.shape[0])
    a = torch.zeros(rank, residual.shape[1], dtype=residual.dtype)
    b = torch.zeros(residual.shape[0], rank, dtype=residual.dtype)
    a[:r] = vh[:r]
    b[:, :r] = u[:, :r] * s[:r]
    return a, b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Llama model directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--loops", type=int, required=True, help="N")
    ap.add_argument("--init", choices=["stepwise", "average"],
                    default="stepwise")
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--lora-alpha", type=float, default=None,
                    help="default: the rank (scale 1)")
    ap.add_argument("--no-fold-norms", dest="fold_norms",
                    action="store_false")
    ap.add_argument("--dtype", choices=sorted(model_dir.DTYPES),
                    default="f32")
    args = ap.parse_args()
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "llama":
        raise SystemExit("only model_type llama is supported")
    rc, weights = convert(config, reference_forward.load_weights(args.model),
                          args.loops, args.init, args.lora_rank,
                          args.lora_alpha, args.fold_norms)
    model_dir.write_model_dir(args.out, rc, weights,
                              os.path.join(args.model, "tokenizer.json"),
                              args.dtype,
                              {"strata_converted_from": os.path.basename(
                                  os.path.abspath(args.model)),
                               "strata_init": args.init})
    print("%s: K=%d unique layers x N=%d loops, lora rank %d, %d tensors" %
          (args.out, rc["num_hidden_layers"], args.loops, args.lora_rank,
           len(weights)))


if __name__ == "__main__":
    main()

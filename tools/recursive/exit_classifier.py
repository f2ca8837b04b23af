#!/usr/bin/python3
"""Trains a recursive model's early-exit classifier from its own states.

The classifier (docs/recursive-models.md, "Early exit") is one logistic
regression per early exit loop l < N-1 on the residual stream h_l after that
loop, normalised like an RMSNorm without a weight:

  confidence_l(h) = sigmoid(w_l . (h / rms(h)) + b_l)

predicting whether loop l's top-1 token (argmax of its exit logits) equals
the last loop's. It costs O(hidden) per row and loop (one dot product and a
sum of squares), against the LM head's vocab x hidden.

Data: the model's own full-depth states on the training chapters of
tools/train/prepare_corpus.py (the public-domain KJV; no download), cut into
--seq-token windows starting with BOS, teacher-forced in batches through
tools/train/recursive_lm.py. Labels come from the same forward pass. Fitted
by full-batch L-BFGS (float64) with an L2 penalty; evaluated on the
held-out chapters (accuracy, ROC AUC, base rate).

Output (in --model, or --out): exit_classifier.safetensors with
  exit_classifier.weight [num_loops - 1, hidden] (float32)
  exit_classifier.bias   [num_loops - 1]
and config.json key "exit_classifier": {"file": ..., "features": ...,
"label": ..., "trained_on": ...}; a loader that finds the key loads the
file (tools/recursive/model.py and the C++ engine).

Usage (about 2 minutes on 2 cores for the bundled model):
  /usr/bin/python3 tools/train/prepare_corpus.py --out-dir /tmp/kjv
  nice -n 19 /usr/bin/python3 tools/recursive/exit_classifier.py \\
      --model models/strata-recursive-tiny --corpus-dir /tmp/kjv
"""

import argparse
import json
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
sys.path.insert(0, HERE)
import evaluate  # noqa: E402  (tools/train: load_module)
import model as rm  # noqa: E402
import model_dir  # noqa: E402
import quality  # noqa: E402
import safetensors_io  # noqa: E402

FILE = "exit_classifier.safetensors"
FEATURES = "h / sqrt(mean(h^2) + rms_norm_eps), h the residual after the loop"
LABEL = "argmax of the loop's exit logits == argmax of the last loop's"


def chapters_text(corpus_dir, split, every):
    """Text of every `every`-th chapter of `split` (prepare_corpus.py)."""
    with open(os.path.join(corpus_dir, "chapters.json")) as f:
        chapters = [c for c in json.load(f) if c["split"] == split]
    import prepare_corpus  # noqa: E402  (tools/train)
    return "\n".join(prepare_corpus.chapter_text(c)
                     for c in chapters[::every])


def windows_of(ids, bos, seq, limit):
    """Up to `limit` non-overlapping windows [bos] + seq - 1 tokens."""
    body = seq - 1
    out = [[bos] + ids[s:s + body]
           for s in range(0, len(ids) - body + 1, body)]
    return torch.tensor(out[:limit], dtype=torch.long)


def collect(module, windows, eps, batch=16):
    """Per early loop l: (features [T, H] float64, labels [T]) over every
    position of every window."""
    n = module.num_loops
    feats = [[] for _ in range(n - 1)]
    labels = [[] for _ in range(n - 1)]
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            streams = module.residual_streams(windows[i:i + batch])[1:]
            tops = [module.logits(module.rms_norm(h, module.final_norm))
                    .argmax(-1) for h in streams]
            for l in range(n - 1):
                h = streams[l].reshape(-1, streams[l].shape[-1])
                feats[l].append(rm.classifier_features(h, eps))
                labels[l].append((tops[l] == tops[-1]).reshape(-1)
                                 .to(torch.float64))
    return [(torch.cat(f), torch.cat(y)) for f, y in zip(feats, labels)]


def fit(x, y, l2, steps):
    """Logistic regression by full-batch L-BFGS: (w [H], b)."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            x @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach())


def auc(score, y):
    """ROC AUC (probability a positive outranks a negative; ties half)."""
    order = torch.argsort(score)
    ranks = torch.empty_like(score)
    ranks[order] = torch.arange(1, len(score) + 1, dtype=score.dtype)
    # Average the ranks of ties.
    uniq, inv = torch.unique(score, return_inverse=True)
    sums = torch.zeros(len(uniq), dtype=score.dtype).index_add_(0, inv, ranks)
    counts = torch.zeros(len(uniq), dtype=score.dtype).index_add_(
        0, inv, torch.ones_like(ranks))
    ranks = (sums / counts)[inv]
    pos = float(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    return (float(ranks[y > 0.5].sum()) - pos * (pos + 1) / 2) / (pos * neg)


def metrics(w, b, x, y):
    p = torch.sigmoid(x @ w + b)
    return {"tokens": len(y), "base_rate": float(y.mean()),
            "accuracy": float(((p >= 0.5).double() == y).double().mean()),
            "auc": auc(p, y)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus-dir", required=True,
                    help="prepare_corpus.py --out-dir (chapters.json)")
    ap.add_argument("--out", help="model folder to write (default --model)")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--train-windows", type=int, default=400)
    ap.add_argument("--chapter-every", type=int, default=4,
                    help="use every n-th training chapter")
    ap.add_argument("--l2", type=float, default=1e-4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    out_dir = args.out or args.model

    config, module = evaluate.load_module(args.model)
    n = module.num_loops
    if n < 2:
        raise SystemExit("the model has one loop: nothing to exit early from")
    eps = float(config["rms_norm_eps"])
    tok, bos = quality.load_tokenizer(args.model)
    train_ids = tok.encode(chapters_text(args.corpus_dir, "train",
                                         args.chapter_every))
    held_ids = tok.encode(chapters_text(args.corpus_dir, "heldout", 1))
    train = collect(module, windows_of(train_ids, bos, args.seq,
                                       args.train_windows), eps)
    held = collect(module, windows_of(held_ids, bos, args.seq, 10**9), eps)
    print("states: %d training and %d held-out tokens per loop (%.0f s)" %
          (len(train[0][1]), len(held[0][1]), time.time() - t0))

    weights, biases, report = [], [], []
    for l in range(n - 1):
        w, b = fit(*train[l], args.l2, args.steps)
        weights.append(w)
        biases.append(b)
        r = {"loop": l, "train": metrics(w, b, *train[l]),
             "heldout": metrics(w, b, *held[l])}
        report.append(r)
        print("loop %d: held-out base rate %.3f, accuracy %.3f, AUC %.3f "
              "(train accuracy %.3f)" % (
                  l, r["heldout"]["base_rate"], r["heldout"]["accuracy"],
                  r["heldout"]["auc"], r["train"]["accuracy"]))

    tensors = {rm.CLASSIFIER_WEIGHT: torch.stack(weights).float().contiguous(),
               rm.CLASSIFIER_BIAS: torch.tensor(biases,
                                                dtype=torch.float32)}
    os.makedirs(out_dir, exist_ok=True)
    safetensors_io.save(tensors, os.path.join(out_dir, FILE),
                        {"format": "pt"})
    path = os.path.join(out_dir, "config.json")
    with open(path) as f:
        out_config = json.load(f)
    out_config["exit_classifier"] = {
        "file": FILE, "features": FEATURES, "label": LABEL,
        "trained_on": "%d windows of %d tokens, every %d-th training chapter"
                      " of tools/train/prepare_corpus.py" % (
                          len(train[0][1]) // args.seq, args.seq,
                          args.chapter_every),
        "heldout_auc": [round(r["heldout"]["auc"], 4) for r in report]}
    model_dir.write_json(out_config, path)
    print("wrote %s and config.json \"exit_classifier\" (%.0f s)" % (
        os.path.join(out_dir, FILE), time.time() - t0))


if __name__ == "__main__":
    main()

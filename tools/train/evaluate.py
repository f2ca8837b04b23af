#!/usr/bin/python3
"""Evaluates a trained recursive model and writes its model card (README.md).

Held-out metrics (the held-out KJV chapters of prepare_corpus.py, cut into
non-overlapping windows of --seq tokens, teacher-forced, every token at full
depth): per-loop cross entropy / perplexity, per-loop exit accuracy (the exit
at loop l predicts the true next token) and agreement with the last loop.
An early-exit table estimates, for max_prob thresholds, the mean loops run
and the accuracy if each token exited at its first confident loop (decided
on full-depth states, so the effect of propagated KV is not included).
Greedy samples come from tools/recursive/model.py (float64, KV cache, the
real exit rule). The loss curve is drawn with gnuplot from train_log.tsv.

Usage:
  /usr/bin/python3 tools/train/evaluate.py \
      --model models/strata-recursive-tiny --corpus-dir /tmp/kjv \
      --work-dir /tmp/run [--card-template tools/train/model_card.md]
"""

import argparse
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "recursive"))
sys.path.insert(0, HERE)
import model as rm  # noqa: E402
import model_dir  # noqa: E402
import recursive_lm  # noqa: E402
import reference_forward as rf  # noqa: E402
import reference_tokenizer  # noqa: E402

PROMPTS = [
    "In the beginning",
    "And the LORD said unto Moses,",
    "Blessed are the",
    "The LORD is my shepherd;",
]
CHAT = "And God said, Let there be light."
THRESHOLDS = [0.3, 0.5, 0.7, 0.9]


def load_module(path):
    """RecursiveLM (float32) holding the stored weights of a model dir."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    m = recursive_lm.RecursiveLM(config)
    w = rf.load_weights(path)
    with torch.no_grad():
        src = {n: t.float() for n, t in w.items()}
        m.embed.copy_(src["model.embed_tokens.weight"])
        m.final_norm.copy_(src["model.norm.weight"])
        for k in range(m.num_layers):
            p = "model.layers.%d." % k
            m.in_norm[k].copy_(src[p + "input_layernorm.weight"])
            m.post_norm[k].copy_(src[p + "post_attention_layernorm.weight"])
            for proj in rm.PROJS:
                m.weights["%d_%s" % (k, proj)].copy_(
                    src[p + rm.proj_name(proj) + ".weight"])
                for l in range(m.num_loops if m.rank else 0):
                    a, b = rm.lora_names(l, k, proj)
                    m.lora_a["%d_%d_%s" % (l, k, proj)].copy_(src[a])
                    m.lora_b["%d_%d_%s" % (l, k, proj)].copy_(src[b])
    m.eval()
    return config, m


def heldout_metrics(m, windows):
    n = m.num_loops
    ce = torch.zeros(n, dtype=torch.float64)
    acc = torch.zeros(n, dtype=torch.float64)
    agree = torch.zeros(n, dtype=torch.float64)
    exits = {t: [0.0, 0.0, 0.0] for t in THRESHOLDS}  # loops, correct, agree
    count = 0
    with torch.no_grad():
        for i in range(0, len(windows), 16):
            w = windows[i:i + 16]
            x, y = w[:, :-1], w[:, 1:]
            logits = [m.logits(s) for s in m(x)]
            final = logits[-1].argmax(-1)
            probs = [F.softmax(lg, -1).max(-1).values for lg in logits]
            for l, lg in enumerate(logits):
                ce[l] += F.cross_entropy(lg.reshape(-1, lg.shape[-1]),
                                         y.reshape(-1), reduction="sum")
                acc[l] += (lg.argmax(-1) == y).sum()
                agree[l] += (lg.argmax(-1) == final).sum()
            for t in THRESHOLDS:
                chosen = torch.full_like(y, n - 1)
                for l in range(n - 2, -1, -1):
                    chosen = torch.where(probs[l] >= t,
                                         torch.full_like(y, l), chosen)
                pred = torch.stack([lg.argmax(-1) for lg in logits])
                picked = pred.gather(0, chosen[None])[0]
                exits[t][0] += float((chosen + 1).sum())
                exits[t][1] += float((picked == y).sum())
                exits[t][2] += float((picked == final).sum())
            count += y.numel()
    return {"ce": (ce / count).tolist(), "acc": (acc / count).tolist(),
            "agree": (agree / count).tolist(), "tokens": count,
            "exits": {t: [v / count for v in e] for t, e in exits.items()}}


def plot(work_dir, out_png, tokens_per_step):
    log = os.path.join(work_dir, "train_log.tsv")
    ev = os.path.join(work_dir, "eval_log.tsv")
    with open(log) as f:
        n_loops = len(f.readline().split("\t")) - 5
    train_fmt = "'%s' skip 1 using 3:%d with lines title 'train, loop %d'"
    eval_fmt = ("'%s' skip 1 using ($1*%d):%d with points pt 7 "
                "title 'held-out, loop %d'")
    lines = ", ".join(train_fmt % (log, 6 + l, l) for l in range(n_loops))
    lines += ", " + ", ".join(eval_fmt % (ev, tokens_per_step, 3 + l, l)
                              for l in range(n_loops))
    script = """
set terminal pngcairo size 900,540 noenhanced
set output '%s'
set datafile separator '\\t'
set key top right
set xlabel 'training tokens'
set ylabel 'cross entropy (nats/token)'
set title 'strata-recursive-tiny: early-exit loss per loop exit'
set grid
set yrange [2:8]
plot %s
""" % (out_png, lines.rstrip(", "))
    try:
        subprocess.run(["gnuplot"], input=script, text=True, check=True,
                       capture_output=True)
    except subprocess.CalledProcessError:
        # pngcairo may be missing: fall back to the plain png terminal.
        script = script.replace("pngcairo", "png")
        subprocess.run(["gnuplot"], input=script, text=True, check=True)


def sample(model, tok, bos, prompt, steps, rule=None, chat=False):
    if chat:
        text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
                "\n\n%s<|eot_id|><|start_header_id|>assistant"
                "<|end_header_id|>\n\n" % prompt)
        ids = tok.encode(text)
    else:
        ids = [bos] + tok.encode(prompt)
    stop = {tok.added["<|eot_id|>"], tok.added["<|end_of_text|>"]}
    cache = rm.KVCache(model.num_kv_layers)
    logits = model.prefill(cache, ids)[-1][-1]
    out, loops = [], []
    for s in range(steps):
        nxt = int(torch.argmax(logits))
        if nxt in stop:
            break
        out.append(nxt)
        r = model.decode(cache, nxt, len(ids) + s, rule or
                         rm.threshold_rule(1.0), "propagate")
        logits = r["logits"]
        loops.append(r["exit_loop"] + 1)
    return tok.decode(out), loops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus-dir", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--tokens-per-step", type=int, default=1024,
                    help="batch * seq of the training run (for the plot)")
    ap.add_argument("--sample-steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--card-template",
                    default=os.path.join(HERE, "model_card.md"),
                    help="README.md template (str.format fields)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config, m = load_module(args.model)
    with open(os.path.join(args.model, "tokenizer.json"),
              encoding="utf-8") as f:
        tok_json = json.load(f)
    tok = reference_tokenizer.ReferenceTokenizer(tok_json)
    sp = model_dir.special_ids(tok_json)
    train_docs, held_docs = torch.load(os.path.join(args.work_dir,
                                                    "docs.pt"))
    held = torch.tensor([t for d in held_docs for t in d])
    n = (len(held) - 1) // args.seq
    windows = torch.stack([held[i * args.seq:i * args.seq + args.seq + 1]
                           for i in range(n)])
    metrics = heldout_metrics(m, windows)
    png = os.path.join(args.model, "loss_curve.png")
    plot(args.work_dir, png, args.tokens_per_step)
    ref = rm.RecursiveModel.load(args.model)
    samples = []
    for p in PROMPTS:
        text, _ = sample(ref, tok, sp["<|begin_of_text|>"], p,
                         args.sample_steps)
        samples.append((p, text))
    early_text, early_loops = sample(ref, tok, sp["<|begin_of_text|>"],
                                     PROMPTS[1], args.sample_steps,
                                     rm.threshold_rule(0.5, "max_prob"))
    chat_text, _ = sample(ref, tok, None, CHAT, args.sample_steps, chat=True)
    result = {"metrics": metrics, "samples": samples,
              "early": [PROMPTS[1], early_text, early_loops],
              "chat": [CHAT, chat_text]}
    with open(os.path.join(args.work_dir, "eval.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(args.card_template) as f:
        info = {"card_template": f.read()}
    info.update(run_info(args.work_dir, config, m))
    info["epochs"] = info["train_tokens"] / sum(len(d) for d in train_docs)
    write_card(args.model, config, metrics, result, info)
    print(json.dumps(result, indent=1))


def run_info(work_dir, c, m):
    """Model-card fields from the config, the module and the training logs."""
    with open(os.path.join(work_dir, "train_log.tsv")) as f:
        last = f.read().strip().split("\n")[-1].split("\t")
    command = "(not recorded)"
    cmd_path = os.path.join(work_dir, "command.txt")
    if os.path.exists(cmd_path):
        with open(cmd_path) as f:
            command = f.read().strip()
    params = sum(p.numel() for p in m.parameters())
    return {"steps": int(last[0]), "minutes": float(last[1]),
            "train_tokens": int(last[2]), "command": command,
            "params": params, "mb": params * 2 / 1e6,
            "hidden": c["hidden_size"], "K": c["num_hidden_layers"],
            "N": c["num_loops"], "r": c["lora_rank"],
            "alpha": c["lora_alpha"], "heads": c["num_attention_heads"],
            "kv_heads": c["num_key_value_heads"],
            "head_dim": c["head_dim"], "inter": c["intermediate_size"],
            "vocab": c["vocab_size"], "depth": c["num_hidden_layers"] *
            c["num_loops"], "max_pos": c["max_position_embeddings"]}


def write_card(path, c, metrics, result, info):
    n = c["num_loops"]
    rows = "\n".join(
        "| %d | %d | %.3f | %.1f | %.1f%% | %.1f%% |" % (
            l, (l + 1) * c["num_hidden_layers"], metrics["ce"][l],
            math.exp(metrics["ce"][l]), 100 * metrics["acc"][l],
            100 * metrics["agree"][l]) for l in range(n))
    exits = "\n".join(
        "| %.1f | %.2f | %.1f%% | %.1f%% |" % (
            t, e[0], 100 * e[1], 100 * e[2])
        for t, e in sorted(metrics["exits"].items()))
    samples = "\n\n".join("**%s**%s" % (p, t.replace("\n", "  \n"))
                          for p, t in result["samples"])
    early = result["early"]
    text = info.get("card_template", "")
    text = text.format(
        rows=rows, exits=exits, samples=samples, tokens=metrics["tokens"],
        early_prompt=early[0], early_text=early[1].replace("\n", "  \n"),
        early_loops=" ".join(str(x) for x in early[2]),
        early_mean=sum(early[2]) / max(1, len(early[2])),
        chat_user=result["chat"][0], chat_text=result["chat"][1],
        **{k: v for k, v in info.items() if k != "card_template"})
    with open(os.path.join(path, "README.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Trains the bundled recursive model (models/strata-recursive-tiny) on CPU.

Data: the KJV chapters written by prepare_corpus.py. Each training document is
one chapter, "<|begin_of_text|>" + chapter text + "<|end_of_text|>", plus
chat-formatted documents (Llama 3 chat template; the user sends a verse, the
assistant answers with the next one or two verses, then "<|eot_id|>") so the
daemon can chat with the model. Documents are shuffled, concatenated and cut
into random windows of --seq tokens.

Loss: early-exit loss, the weighted mean over loops l = 0..N-1 of the
next-token cross entropy of the exit at loop l (final norm + tied LM head on
the residual stream after loop l), weight (l + 1) / sum(1..N), so every loop
boundary is a usable exit and the last loop counts most.

Schedule: AdamW, linear warmup then cosine decay to 10%; progress is
max(step / --max-steps, elapsed / --max-minutes), so a wall-clock-capped run
still anneals. Every --checkpoint-minutes it saves work-dir/ckpt.pt (resumable
with --resume) and exports the model directory (--out, bf16), so a partial
run is usable. Logs: work-dir/train_log.tsv and work-dir/eval_log.tsv.

Usage (see tools/train/README.md):
  nice -n 19 /usr/bin/python3 tools/train/train.py --corpus-dir /tmp/kjv \
      --tokenizer /tmp/kjv-tokenizer.json --work-dir /tmp/run \
      --out models/strata-recursive-tiny --max-minutes 65
"""

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "recursive"))
sys.path.insert(0, HERE)
import model_dir  # noqa: E402
import prepare_corpus  # noqa: E402
import recursive_lm  # noqa: E402
import reference_tokenizer  # noqa: E402


class FastEncoder:
    """reference_tokenizer's ordinary-text encoding with a per-piece cache."""

    def __init__(self, tok):
        self.tok = tok
        self.cache = {}

    def encode(self, text):
        pieces = [text]
        for pattern in self.tok.patterns:
            pieces = [p for piece in pieces
                      for p in reference_tokenizer.split_isolated(pattern,
                                                                  piece)]
        ids = []
        for piece in pieces:
            hit = self.cache.get(piece)
            if hit is None:
                syms = [reference_tokenizer.BYTE_TO_CHAR[b]
                        for b in piece.encode("utf-8")]
                hit = [self.tok.vocab[s] for s in
                       reference_tokenizer.bpe_merge(syms, self.tok.ranks)]
                self.cache[piece] = hit
            ids.extend(hit)
        return ids


def chat_ids(enc, sp, user, answer):
    """Token ids of one chat exchange as the Llama 3 template renders it."""
    return ([sp["<|begin_of_text|>"], sp["<|start_header_id|>"]] +
            enc.encode("user") + [sp["<|end_header_id|>"]] +
            enc.encode("\n\n" + user.strip()) +
            [sp["<|eot_id|>"], sp["<|start_header_id|>"]] +
            enc.encode("assistant") + [sp["<|end_header_id|>"]] +
            enc.encode("\n\n" + answer.strip()) + [sp["<|eot_id|>"]])


def build_documents(chapters, enc, sp, chat_per_chapter, seed):
    """Returns (train docs, heldout docs): lists of token-id lists."""
    rng = random.Random(seed)
    train, held = [], []
    for ch in chapters:
        doc = ([sp["<|begin_of_text|>"]] +
               enc.encode(prepare_corpus.chapter_text(ch)) +
               [sp["<|end_of_text|>"]])
        (held if ch["split"] == "heldout" else train).append(doc)
        if ch["split"] != "train" or len(ch["verses"]) < 3:
            continue
        for _ in range(chat_per_chapter):
            i = rng.randrange(len(ch["verses"]) - 1)
            n = rng.choice((1, 2))
            answer = " ".join(ch["verses"][i + 1:i + 1 + n])
            train.append(chat_ids(enc, sp, ch["verses"][i], answer))
    return train, held


def exit_weights(num_loops):
    w = torch.arange(1, num_loops + 1, dtype=torch.float32)
    return w / w.sum()


def exit_losses(model, x, y):
    """Per-loop mean next-token CE: tensor [N]."""
    losses = []
    for state in model(x):
        logits = model.logits(state)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                      y.reshape(-1)))
    return torch.stack(losses)


def evaluate(model, windows, batch):
    """Per-loop held-out CE and top-1 accuracy over fixed windows."""
    model.eval()
    n = model.num_loops
    tot_loss = torch.zeros(n, dtype=torch.float64)
    tot_acc = torch.zeros(n, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            w = windows[i:i + batch]
            x, y = w[:, :-1], w[:, 1:]
            for l, state in enumerate(model(x)):
                logits = model.logits(state)
                tot_loss[l] += F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                    reduction="sum")
                tot_acc[l] += (logits.argmax(-1) == y).sum()
            count += y.numel()
    model.train()
    return tot_loss / count, tot_acc / count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus-dir", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--out", required=True, help="model directory to export")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2, help="K unique layers")
    ap.add_argument("--loops", type=int, default=4, help="N loops")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=704)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--max-position", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--max-steps", type=int, default=100000)
    ap.add_argument("--max-minutes", type=float, default=65.0)
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--eval-windows", type=int, default=48)
    ap.add_argument("--chat-per-chapter", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    with open(os.path.join(args.work_dir, "command.txt"), "w") as f:
        f.write("nice -n 19 /usr/bin/python3 tools/train/train.py " +
                " ".join(sys.argv[1:]) + "\n")

    with open(args.tokenizer, encoding="utf-8") as f:
        tok_json = json.load(f)
    tok = reference_tokenizer.ReferenceTokenizer(tok_json)
    sp = model_dir.special_ids(tok_json)
    cache = os.path.join(args.work_dir, "docs.pt")
    if os.path.exists(cache):
        train_docs, held_docs = torch.load(cache)
    else:
        with open(os.path.join(args.corpus_dir, "chapters.json")) as f:
            chapters = json.load(f)
        t0 = time.time()
        train_docs, held_docs = build_documents(
            chapters, FastEncoder(tok), sp, args.chat_per_chapter, args.seed)
        torch.save((train_docs, held_docs), cache)
        print("tokenized in %.0fs" % (time.time() - t0), flush=True)
    rng = random.Random(args.seed)
    rng.shuffle(train_docs)
    stream = torch.tensor([t for d in train_docs for t in d], dtype=torch.long)
    held = torch.tensor([t for d in held_docs for t in d], dtype=torch.long)
    n_win = min(args.eval_windows, (len(held) - 1) // (args.seq + 1))
    eval_windows = torch.stack([held[i * (args.seq + 1):(i + 1) *
                                     (args.seq + 1)] for i in range(n_win)])
    print("train tokens %d, heldout tokens %d, eval windows %d" %
          (len(stream), len(held), n_win), flush=True)

    base = {
        "vocab_size": len(tok_json["model"]["vocab"]) +
                      len(tok_json["added_tokens"]),
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_position,
        "rms_norm_eps": 1e-5,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "use_cache": True,
    }
    config = model_dir.recursive_config(base, args.loops, args.lora_rank,
                                        args.lora_alpha)
    model = recursive_lm.RecursiveLM(config, seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print("parameters: %d (%.1f MB bf16)" % (n_params, n_params * 2 / 1e6),
          flush=True)
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95))
    step, elapsed_before = 0, 0.0
    ckpt_path = os.path.join(args.work_dir, "ckpt.pt")
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed_before = ck["step"], ck["elapsed"]
        print("resumed at step %d" % step, flush=True)
    log_mode = "a" if args.resume else "w"
    train_log = open(os.path.join(args.work_dir, "train_log.tsv"), log_mode)
    eval_log = open(os.path.join(args.work_dir, "eval_log.tsv"), log_mode)
    if not args.resume:
        train_log.write("step\tminutes\ttokens\tlr\tloss\t%s\n" % "\t".join(
            "loss_loop%d" % l for l in range(args.loops)))
        eval_log.write("step\tminutes\t%s\t%s\n" % (
            "\t".join("loss_loop%d" % l for l in range(args.loops)),
            "\t".join("acc_loop%d" % l for l in range(args.loops))))
    weights = exit_weights(args.loops)
    gen = torch.Generator().manual_seed(args.seed + step)
    start = time.time() - elapsed_before
    last_ckpt = time.time()
    acc_losses = torch.zeros(args.loops)
    acc_n = 0

    def save(final):
        el = time.time() - start
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "step": step, "elapsed": el, "config": config}, ckpt_path)
        loss, acc = evaluate(model, eval_windows, args.batch)
        eval_log.write("%d\t%.2f\t%s\t%s\n" % (
            step, el / 60, "\t".join("%.4f" % v for v in loss.tolist()),
            "\t".join("%.4f" % v for v in acc.tolist())))
        eval_log.flush()
        model_dir.write_model_dir(
            args.out, config, model.export_weights(), args.tokenizer, "bf16",
            {"strata_train_step": str(step)})
        print("checkpoint step %d (%.1f min)%s: heldout loss/loop %s" % (
            step, el / 60, " final" if final else "",
            " ".join("%.3f" % v for v in loss.tolist())), flush=True)

    while True:
        elapsed = time.time() - start
        progress = max(step / args.max_steps,
                       elapsed / (args.max_minutes * 60))
        if progress >= 1.0:
            break
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (
            0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(stream) - args.seq - 1, (args.batch,),
                            generator=gen)
        win = torch.stack([stream[i:i + args.seq + 1] for i in idx.tolist()])
        losses = exit_losses(model, win[:, :-1], win[:, 1:])
        loss = (losses * weights).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        acc_losses += losses.detach()
        acc_n += 1
        if step % 10 == 0:
            avg = acc_losses / acc_n
            train_log.write("%d\t%.2f\t%d\t%.6f\t%.4f\t%s\n" % (
                step, (time.time() - start) / 60,
                step * args.batch * args.seq, lr, float((avg * weights).sum()),
                "\t".join("%.4f" % v for v in avg.tolist())))
            train_log.flush()
            acc_losses.zero_()
            acc_n = 0
        if step % 50 == 0:
            print("step %d %.1f min lr %.2e loss/loop %s" % (
                step, (time.time() - start) / 60, lr,
                " ".join("%.3f" % v for v in losses.tolist())), flush=True)
        if time.time() - last_ckpt > args.checkpoint_minutes * 60:
            save(False)
            last_ckpt = time.time()
    save(True)


if __name__ == "__main__":
    main()

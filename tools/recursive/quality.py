#!/usr/bin/python3
"""Quality side of the early-exit benchmark: held-out perplexity with exits
and greedy agreement with full depth, per threshold of one confidence
measure (--confidence: max_prob, margin, saturation or classifier).

Uses tools/recursive/model.py (the reference the C++ engine is tested
against), so the numbers are those of the served model with the same
threshold / KV policy.

For each threshold (the --confidence measure, min_loops 1):

1. Held-out perplexity WITH exits, teacher-forced and sequential. The
   held-out text is tokenized with the model's tokenizer.json and cut into
   --windows non-overlapping windows of --window-len tokens (BOS first when
   the tokenizer config adds one; the windows are spread evenly over the
   text). Nothing is prefilled: every token of a window, the first (BOS at
   position 0) included, goes through `decode` on a fresh cache with the exit
   rule and the KV policy, so the K/V of the loops a token skipped are filled
   exactly as the server fills them (propagate: from the exit state;
   recompute: exact). The true next token is scored with the logits of the
   loop the current token exited at. window-len - 1 tokens are scored per
   window. Reported: perplexity exp(mean NLL), top-1 accuracy, mean loops per
   token, the exit-loop histogram and the token disagreement: the fraction
   of scored positions whose top-1 differs from that of a full-depth
   prefill of the same window.
   NB: every context token is itself a decode token that may exit, i.e. this
   is the quality of a sequence the model decodes with exits while being fed
   the true text; in the server, prompt tokens run at full depth (prefill),
   so a served request with a long prompt sees exact K/V for its prompt and
   would score at least as well (closer to threshold 1.0).

2. Greedy agreement with full depth: each prompt (BOS + text) is prefilled
   (full depth, as in the server; with --prompt-exits every prompt token but
   the last is decoded with the exit rule instead, as stratad
   --prompt_exits runs it), then --gen-tokens decode steps run
   greedily with the threshold rule; the tokens those steps produce are
   compared with the full-depth (threshold 1.0) run. The first token after
   the prompt comes from the prefill in both runs and is not counted; EOS
   does not stop generation. Reported: prefix agreement (tokens equal until
   the first divergence / all compared tokens) and position-wise agreement
   (equal positions / all compared tokens), both pooled over the prompts,
   and the mean loops per decode step.

Checks: at threshold 1.0 the mean loops equal num_loops and the agreement is
1.0; the sequential full-depth NLL equals that of one full-depth prefill of
the window; the full-depth greedy tokens equal the argmax of one full-depth
prefill of prompt + generated.

Usage:
  nice -n 19 /usr/bin/python3 tools/recursive/quality.py \
      --model models/strata-recursive-tiny \
      --heldout /tmp/recursive-train/kjv/heldout.txt \
      [--thresholds 1.0,0.9,0.8,0.6] [--kv-policy propagate|recompute] \
      [--confidence max_prob|margin|saturation|classifier] \
      [--windows 8 --window-len 128] [--prompts "a|b|c"] [--gen-tokens 32] \
      [--dtype float64|float32] [--json OUT]

Single-threaded on purpose (torch.set_num_threads(1) and one OpenBLAS
thread): it shares the CPUs with the throughput benchmark. Run it with
`nice -n 19`. Timings (one thread): models/strata-recursive-tiny with the
defaults about 45 s; a random K=2 N=4 hidden-768 model with --windows 2
--window-len 64 about 65 s (float64; --dtype float32 is faster).
"""

import argparse
import json
import math
import os
import sys
import time

# torch.set_num_threads(1) does not limit OpenBLAS's own pthreads (Debian's
# torch uses libopenblas0-pthread): pin every BLAS/OpenMP pool to one thread
# before torch loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import model as rm  # noqa: E402
import reference_forward as rf  # noqa: E402
import reference_tokenizer  # noqa: E402

PROMPTS = [
    "In the beginning",
    "And the LORD said unto Moses,",
    "Blessed are the",
    "The LORD is my shepherd;",
]
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def set_dtype(name):
    """The reference modules compute in their module-level DTYPE (float64);
    float32 switches both (weights, RoPE and the confidence softmax)."""
    rf.DTYPE = DTYPES[name]
    rm.DTYPE = DTYPES[name]


def load_tokenizer(model_dir):
    tok = reference_tokenizer.load(os.path.join(model_dir, "tokenizer.json"))
    bos = None
    path = os.path.join(model_dir, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path) as f:
            tc = json.load(f)
        if tc.get("add_bos_token") and tc.get("bos_token"):
            name = tc["bos_token"]
            if isinstance(name, dict):
                name = name.get("content")
            bos = tok.added.get(name)
    return tok, bos


def make_windows(ids, bos, n, length):
    """n non-overlapping windows of `length` tokens ([bos] + text tokens),
    spread evenly over the token stream `ids`. Returns (windows, starts)."""
    body = length - 1 if bos is not None else length
    if body < 1:
        raise SystemExit("--window-len too small")
    available = len(ids) // body
    if available < n:
        raise SystemExit("held-out text has %d tokens: only %d windows of %d"
                         % (len(ids), available, length))
    stride = available // n
    starts = [i * stride * body for i in range(n)]
    head = [bos] if bos is not None else []
    return [head + ids[s:s + body] for s in starts], starts


def nll_of(logits, target):
    return -float(torch.log_softmax(logits.double(), dim=-1)[target])


def full_depth_tops(model, windows):
    """Top-1 of every position of every window at full depth (one prefill
    each): what the token disagreement compares with."""
    return [model.forward_all_loops(w)[-1].argmax(-1).tolist()
            for w in windows]


def teacher_forced(model, windows, rule, kv_policy, tops=None):
    """Sequential decode of every window token with the exit rule; scores
    the next true token with the exit loop's logits. tops:
    full_depth_tops(windows), for the token disagreement."""
    n_loops = model.num_loops
    nll, correct, loops, count, differ = 0.0, 0, 0, 0, 0
    hist = [0] * n_loops
    per_window = []
    for wi, w in enumerate(windows):
        cache = rm.KVCache(model.num_kv_layers)
        w_nll = 0.0
        for pos in range(len(w) - 1):
            r = model.decode(cache, w[pos], pos, rule, kv_policy)
            e = r["exit_loop"]
            x = nll_of(r["logits"], w[pos + 1])
            w_nll += x
            top = int(torch.argmax(r["logits"]))
            correct += int(top == w[pos + 1])
            if tops is not None:
                differ += int(top != tops[wi][pos])
            loops += e + 1
            hist[e] += 1
            count += 1
        nll += w_nll
        per_window.append(w_nll)
    return {"nll": nll / count, "ppl": math.exp(nll / count),
            "top1_acc": correct / count, "mean_loops": loops / count,
            "exit_hist": hist, "scored_tokens": count,
            "disagreement": differ / count if tops is not None else None,
            "window_nll_sums": per_window}


def full_depth_window_nll(model, w):
    """NLL sum of a window from one full-depth prefill (no exits)."""
    logits = model.forward_all_loops(w)[-1]
    return sum(nll_of(logits[i], w[i + 1]) for i in range(len(w) - 1))


def greedy(model, prompt_ids, steps, rule, kv_policy, prompt_exits=False):
    """Tokens produced by `steps` greedy decode steps after the prefill, and
    each step's loops (exit loop + 1). prompt_exits: no prefill; every
    prompt token but the last is decoded with the exit rule, as stratad
    --prompt_exits runs it (the last runs every loop and gives the first
    token)."""
    if not prompt_exits:
        _, records, gen = rm.generate(model, prompt_ids, steps, kv_policy,
                                      rule=rule)
        return gen, [r["exit_loop"] + 1 for r in records[1:]]
    cache = rm.KVCache(model.num_kv_layers)
    last = len(prompt_ids) - 1
    for pos, token in enumerate(prompt_ids):
        r = model.decode(cache, token, pos,
                         rule if pos < last else rm.threshold_rule(1.0),
                         kv_policy)
    gen = [int(torch.argmax(r["logits"]))]
    loops = []
    for s in range(steps):
        r = model.decode(cache, gen[-1], len(prompt_ids) + s, rule, kv_policy)
        gen.append(int(torch.argmax(r["logits"])))
        loops.append(r["exit_loop"] + 1)
    return gen, loops


def agreement(runs, refs):
    """(prefix, position-wise) agreement pooled over prompts; each run and
    ref is the list of decode-produced tokens."""
    total = sum(len(r) for r in refs)
    prefix = 0
    same = 0
    for a, b in zip(runs, refs):
        p = 0
        while p < len(b) and a[p] == b[p]:
            p += 1
        prefix += p
        same += sum(int(x == y) for x, y in zip(a, b))
    return prefix / total, same / total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--heldout", required=True, help="held-out text file")
    ap.add_argument("--thresholds", default="1.0,0.9,0.8,0.6")
    ap.add_argument("--kv-policy", choices=rm.KV_POLICIES,
                    default="propagate")
    ap.add_argument("--confidence", choices=rm.CONFIDENCES,
                    default="max_prob")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window-len", type=int, default=128)
    ap.add_argument("--prompts", default="|".join(PROMPTS),
                    help="'|'-separated greedy prompts (BOS is prepended)")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--prompt-exits", action="store_true",
                    help="greedy agreement: the prompt's tokens (but the "
                    "last) decoded with the exit rule, as stratad "
                    "--prompt_exits runs them, instead of a full-depth "
                    "prefill")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    set_dtype(args.dtype)
    t_start = time.time()

    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    prompts = [p for p in args.prompts.split("|") if p]
    tok, bos = load_tokenizer(args.model)
    with open(args.heldout, encoding="utf-8") as f:
        text_ids = tok.encode(f.read())
    windows, starts = make_windows(text_ids, bos, args.windows,
                                   args.window_len)
    model = rm.RecursiveModel.load(args.model)
    n_loops = model.num_loops
    log("loaded %s: K=%d N=%d, %s, %d held-out tokens, %d windows of %d"
        " (%.1f s)" % (args.model, model.num_layers, n_loops, args.dtype,
                       len(text_ids), len(windows), args.window_len,
                       time.time() - t_start))
    tol = 1e-9 if args.dtype == "float64" else 1e-3

    # Full-depth greedy reference, checked against one no-cache prefill.
    prompt_ids = [([bos] if bos is not None else []) + tok.encode(p)
                  for p in prompts]
    t0 = time.time()
    ref_gen, ref_loops = [], []
    for ids in prompt_ids:
        gen, loops = greedy(model, ids, args.gen_tokens, rm.threshold_rule(1.0),
                            args.kv_policy)
        assert all(x == n_loops for x in loops), loops
        full = model.forward_all_loops(ids + gen[:-1])[-1]
        check = [int(torch.argmax(full[i]))
                 for i in range(len(ids) - 1, full.shape[0])]
        if check != gen:
            msg = "full-depth greedy differs from prefill argmax: %s vs %s" % (
                gen, check)
            if args.dtype == "float64":
                raise AssertionError(msg)
            log("WARNING (float32 near-tie?): " + msg)
        ref_gen.append(gen[1:])
        ref_loops.append(loops)
    t_ref = time.time() - t0
    log("full-depth greedy reference: %.1f s" % t_ref)

    tops = full_depth_tops(model, windows)
    results = []
    for t in thresholds:
        rule = rm.threshold_rule(t, args.confidence, 1)
        t0 = time.time()
        tf = teacher_forced(model, windows, rule, args.kv_policy, tops)
        t_tf = time.time() - t0
        t0 = time.time()
        if t >= 1.0:
            gens, loops = ref_gen, ref_loops
        else:
            gens, loops = [], []
            for ids in prompt_ids:
                g, lp = greedy(model, ids, args.gen_tokens, rule,
                               args.kv_policy, args.prompt_exits)
                gens.append(g[1:])
                loops.append(lp)
        t_gr = time.time() - t0
        prefix, posw = agreement(gens, ref_gen)
        all_loops = [x for lp in loops for x in lp]
        g_loops = sum(all_loops) / len(all_loops)
        if t >= 1.0:
            assert tf["mean_loops"] == n_loops, tf["mean_loops"]
            assert g_loops == n_loops, g_loops
            assert prefix == 1.0 and posw == 1.0, (prefix, posw)
            for w, s in zip(windows, tf["window_nll_sums"]):
                ref = full_depth_window_nll(model, w)
                assert abs(ref - s) <= tol * max(1.0, abs(ref)), (ref, s)
        row = {"threshold": t, "ppl": tf["ppl"], "nll": tf["nll"],
               "top1_acc": tf["top1_acc"],
               "disagreement": tf["disagreement"],
               "mean_loops_teacher_forced": tf["mean_loops"],
               "exit_hist_teacher_forced": tf["exit_hist"],
               "scored_tokens": tf["scored_tokens"],
               "agreement_prefix": prefix, "agreement_positionwise": posw,
               "mean_loops_greedy": g_loops,
               "greedy": [{"prompt": p, "tokens": g, "loops": lp,
                           "text": tok.decode(g)}
                          for p, g, lp in zip(prompts, gens, loops)],
               "seconds_teacher_forced": t_tf, "seconds_greedy": t_gr}
        results.append(row)
        log("threshold %.3g: ppl %.3f, loops %.3f (tf, %.1f s); agreement "
            "%.3f / %.3f, loops %.3f (greedy, %.1f s)" % (
                t, tf["ppl"], tf["mean_loops"], t_tf, prefix, posw, g_loops,
                t_gr))

    total = time.time() - t_start
    scored = results[0]["scored_tokens"] if results else 0
    print("model %s, kv policy %s, %s / min_loops 1, %s, N=%d; "
          "held-out: %d windows x %d tokens (%d scored, teacher-forced, "
          "every token decoded with exits from position 0, no prefill); "
          "greedy: %d prompts x %d decode tokens vs full depth" % (
              args.model, args.kv_policy, args.confidence, args.dtype,
              n_loops, len(windows),
              args.window_len, scored, len(prompts), args.gen_tokens))
    print()
    base = results[0]["ppl"] if results and results[0]["threshold"] >= 1.0 \
        else None
    print("| measure | threshold | held-out ppl | vs full depth | tokens "
          "differing | mean loops (teacher-forced) | greedy agreement "
          "(prefix / position-wise) | mean loops (greedy) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        rel = ("%+.1f%%" % (100 * (r["ppl"] / base - 1))
               if base and r["threshold"] < 1.0 else "")
        print("| %s | %.3g | %.3f | %s | %.1f%% | %.3f | %.3f / %.3f | %.3f |"
              % (args.confidence, r["threshold"], r["ppl"], rel,
                 100 * r["disagreement"], r["mean_loops_teacher_forced"],
                 r["agreement_prefix"], r["agreement_positionwise"],
                 r["mean_loops_greedy"]))
    print()
    print("time: %.1f s total (single thread)" % total)

    if args.json:
        out = {"model": args.model, "heldout": args.heldout,
               "kv_policy": args.kv_policy, "confidence": args.confidence,
               "min_loops": 1, "dtype": args.dtype,
               "num_layers": model.num_layers, "num_loops": n_loops,
               "bos": bos, "heldout_tokens": len(text_ids),
               "windows": len(windows), "window_len": args.window_len,
               "window_starts": starts,
               "ppl_definition": (
                   "teacher-forced sequential decode from position 0 (no "
                   "prefill; BOS first), every token with the exit rule and "
                   "the KV policy; NLL of the true next token under the exit "
                   "loop's logits; ppl = exp(mean NLL) over window_len - 1 "
                   "scored tokens per window"),
               "prompt_exits": args.prompt_exits,
               "agreement_definition": (
                   ("prompt tokens but the last decoded with the exit rule "
                    "(--prompt-exits)" if args.prompt_exits else
                    "prompt prefilled at full depth") +
                   "; gen_tokens greedy decode "
                   "steps compared with the full-depth run (first token "
                   "after the prompt, from the prefill, not counted; no EOS "
                   "stop); prefix = tokens equal before the first "
                   "divergence / compared, positionwise = equal positions / "
                   "compared, pooled over prompts"),
               "prompts": prompts, "gen_tokens": args.gen_tokens,
               "full_depth_greedy": [{"prompt": p, "tokens": g,
                                      "text": tok.decode(g)}
                                     for p, g in zip(prompts, ref_gen)],
               "results": results, "seconds_total": total,
               "seconds_reference": t_ref, "threads": 1}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()

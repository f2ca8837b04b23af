#!/usr/bin/python3
"""Maps an early-exit quality target to a threshold per confidence measure.

A raw threshold means something different for every measure and model
(a max_prob of 0.2 is not a margin of 0.2, nor a saturation of 0.2). This
tool turns a user-facing target into per-measure thresholds on held-out
text and writes them into the model folder as its defaults:

  --max-ppl-increase F   held-out perplexity with exits at most (1 + F) x
                         that of full depth (e.g. 0.04)
  --max-disagreement F   at most F of the scored tokens' top-1 differs from
                         full depth (e.g. 0.02)

(either or both). For each measure (max_prob, margin, saturation, and
classifier when the model has one) it bisects the threshold in [0, 1] for the
lowest one (fewest loops) that meets the target, measuring exactly as
tools/recursive/quality.py does: every window token decoded sequentially
through the reference model with the exit rule and the KV fill policy
(propagate by default), teacher-forced. It assumes quality falls
monotonically as the threshold falls (true of every measure here up to
noise; the bisection only probes --steps points).

Held-out set: the odd windows of 2 x --windows spread over the held-out
text, so the even ones, which are quality.py's default windows, stay
unseen by the calibration.

Output: config.json keys
  "exit_thresholds": {measure: threshold}   what a request that sets no
      exit_threshold uses with its measure (the engine and server read it)
  "exit_calibration": {the target, the set, and per measure the threshold,
      perplexity, increase, disagreement and mean loops}
A measure whose best threshold still misses the target gets 1.0 (full
depth).

Usage (about 10 minutes, single thread, float32):
  nice -n 19 /usr/bin/python3 tools/recursive/calibrate.py \\
      --model models/strata-recursive-tiny --heldout /tmp/kjv/heldout.txt \\
      --max-ppl-increase 0.04
"""

import argparse
import json
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as rm  # noqa: E402
import model_dir  # noqa: E402
import quality  # noqa: E402


def meets(row, base_ppl, args):
    if (args.max_ppl_increase is not None and
            row["ppl"] > base_ppl * (1 + args.max_ppl_increase)):
        return False
    if (args.max_disagreement is not None and
            row["disagreement"] > args.max_disagreement):
        return False
    return True


def evaluate(model, windows, tops, kind, threshold, kv_policy):
    tf = quality.teacher_forced(model, windows,
                                rm.threshold_rule(threshold, kind, 1),
                                kv_policy, tops)
    return {"threshold": threshold, "ppl": tf["ppl"],
            "disagreement": tf["disagreement"],
            "mean_loops": tf["mean_loops"]}


def calibrate(model, windows, tops, kind, base, args):
    """The lowest threshold meeting the target (bisection) and its row."""
    lo, hi = 0.0, 1.0
    best = dict(base, threshold=1.0)
    probes = []
    row = evaluate(model, windows, tops, kind, lo, args.kv_policy)
    probes.append(row)
    if meets(row, base["ppl"], args):
        return row, probes
    for _ in range(args.steps):
        mid = round((lo + hi) / 2, 6)
        row = evaluate(model, windows, tops, kind, mid, args.kv_policy)
        probes.append(row)
        quality.log("  %s %.4f: ppl %.3f (%+.2f%%), differ %.2f%%, loops "
                    "%.3f" % (kind, mid, row["ppl"],
                              100 * (row["ppl"] / base["ppl"] - 1),
                              100 * row["disagreement"], row["mean_loops"]))
        if meets(row, base["ppl"], args):
            hi, best = mid, row
        else:
            lo = mid
    return best, probes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--heldout", required=True, help="held-out text file")
    ap.add_argument("--max-ppl-increase", type=float)
    ap.add_argument("--max-disagreement", type=float)
    ap.add_argument("--measures", default=",".join(rm.CONFIDENCES))
    ap.add_argument("--kv-policy", choices=rm.KV_POLICIES,
                    default="propagate")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=7,
                    help="bisection probes per measure")
    ap.add_argument("--dtype", choices=sorted(quality.DTYPES),
                    default="float32")
    ap.add_argument("--dry-run", action="store_true",
                    help="print, do not write config.json")
    args = ap.parse_args()
    if args.max_ppl_increase is None and args.max_disagreement is None:
        raise SystemExit("give --max-ppl-increase and/or --max-disagreement")
    torch.set_num_threads(1)
    quality.set_dtype(args.dtype)
    t_start = time.time()

    tok, bos = quality.load_tokenizer(args.model)
    with open(args.heldout, encoding="utf-8") as f:
        text_ids = tok.encode(f.read())
    windows, starts = quality.make_windows(text_ids, bos, 2 * args.windows,
                                           args.window_len)
    windows, starts = windows[1::2], starts[1::2]
    model = rm.RecursiveModel.load(args.model)
    measures = [m for m in args.measures.split(",") if m]
    if model.classifier is None and "classifier" in measures:
        measures.remove("classifier")
    tops = quality.full_depth_tops(model, windows)
    base = evaluate(model, windows, tops, "max_prob", 1.0, args.kv_policy)
    quality.log("full depth: ppl %.3f" % base["ppl"])

    thresholds, results = {}, {}
    for kind in measures:
        best, probes = calibrate(model, windows, tops, kind, base, args)
        thresholds[kind] = best["threshold"]
        best = dict(best, ppl_increase=best["ppl"] / base["ppl"] - 1)
        results[kind] = dict(best, probes=probes)
        print("%-10s threshold %.4f: ppl %.3f (%+.2f%%), tokens differing "
              "%.2f%%, mean loops %.3f" % (
                  kind, best["threshold"], best["ppl"],
                  100 * best["ppl_increase"], 100 * best["disagreement"],
                  best["mean_loops"]))
    target = {k: v for k, v in (("max_ppl_increase", args.max_ppl_increase),
                                ("max_disagreement", args.max_disagreement))
              if v is not None}
    calibration = {
        "target": target, "kv_policy": args.kv_policy, "min_loops": 1,
        "heldout": "%d windows of %d tokens (odd windows of %d spread over "
                   "%s), teacher-forced, %s" % (
                       len(windows), args.window_len, 2 * args.windows,
                       os.path.basename(args.heldout), args.dtype),
        "full_depth_ppl": base["ppl"],
        "results": {k: {f: v for f, v in r.items() if f != "probes"}
                    for k, r in results.items()}}
    # Every probe: a quality table per measure (threshold, perplexity and
    # its increase, tokens differing, mean loops).
    print()
    print("| measure | threshold | held-out ppl | vs full depth | tokens "
          "differing | mean loops |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, r in results.items():
        for p in sorted(r["probes"], key=lambda p: -p["threshold"]):
            print("| %s | %.4g | %.3f | %+.1f%% | %.1f%% | %.3f |" % (
                kind, p["threshold"], p["ppl"],
                100 * (p["ppl"] / base["ppl"] - 1), 100 * p["disagreement"],
                p["mean_loops"]))
    print("%.0f s" % (time.time() - t_start))
    if args.dry_run:
        return
    path = os.path.join(args.model, "config.json")
    with open(path) as f:
        config = json.load(f)
    # Measures not calibrated this time keep their thresholds.
    config.setdefault("exit_thresholds", {}).update(thresholds)
    old = config.get("exit_calibration", {}).get("results", {})
    calibration["results"] = dict(old, **calibration["results"])
    config["exit_calibration"] = calibration
    model_dir.write_json(config, path)
    print("wrote exit_thresholds %s into %s" % (json.dumps(thresholds), path))


if __name__ == "__main__":
    main()

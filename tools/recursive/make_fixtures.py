#!/usr/bin/python3
"""Writes tests/data/tiny-recursive: a random relaxed recursive model + refs.

Model: K=2 unique layers x N=3 loops, LoRA rank 4 (alpha 8), hidden 64, GQA
4/2 heads of 16, intermediate 160, tied embeddings, BF16, Llama 3 rope
scaling, the tiny-llama tokenizer (vocab 1808). Weights as
make_random_llama.py (same gains); LoRA A ~ N(0, 1/in), B ~ N(0, 0.2^2), so
each (loop, layer) differs visibly from the shared layer. Deterministic.

Files (besides the model's):
  reference.json    tools/README.md layout: prefill logits at every prompt
                    position + 20 greedy decode steps, all at full depth.
  forced_exits.json for both KV policies, the same prompt decoded greedily
                    with forced exits FORCED ({decode step: exit loop}); per
                    step the exit loop, the exit logits, the confidences
                    (max_prob, margin) at every computed loop; the filled
                    K (post-RoPE) / V of KV_CHECKS pairs; plus a run with a
                    confidence threshold. See docs/recursive-models.md.
  exit_classifier_fixture.safetensors  a random exit classifier for the
                    model (not named by config.json: a test that wants it
                    copies the folder and adds the key).
  hidden_exits.json for "saturation" and "classifier" (that file), a greedy
                    threshold run (propagate): threshold, per step the exit
                    loop and the measure's confidence at every loop < N-1
                    computed, the generated ids.

Usage: /usr/bin/python3 tools/recursive/make_fixtures.py [--out DIR]
"""

import argparse
import json
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import make_random_llama  # noqa: E402
import model as rm  # noqa: E402
import model_dir  # noqa: E402
import reference_forward as rf  # noqa: E402
import reference_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402

PROMPT = "Once upon a time, there was a tiny llama"
STEPS = 20
FORCED = {3: 0, 4: 0, 7: 0, 5: 1}
# (decode step whose input token's position is used, or -1 for prompt
# position 1; kv layer = loop * K + layer).
KV_CHECKS = [(3, 1), (3, 2), (3, 5), (4, 3), (5, 3), (5, 4), (5, 5), (6, 5),
             (7, 2), (-1, 5)]
THRESHOLD = {"confidence": "max_prob", "threshold": 0.6, "min_loops": 1,
             "kv_policy": "propagate"}


def make_model(seed):
    args = types.SimpleNamespace(
        seed=seed, gain=1.6, lm_gain=4.0, norm_noise=0.1, bias_std=0.2,
        hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=160,
        layers=2, arch="llama", tied=True)
    with open(os.path.join(ROOT, "tests/data/tiny-llama/config.json")) as f:
        base = json.load(f)
    base.update({"num_hidden_layers": 2, "tie_word_embeddings": True})
    weights = make_random_llama.make_weights(args, base["vocab_size"])
    config = model_dir.recursive_config(base, num_loops=3, lora_rank=4,
                                        lora_alpha=8.0)
    g = torch.Generator().manual_seed(seed + 100)
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64),
              "o_proj": (64, 64), "gate_proj": (160, 64),
              "up_proj": (160, 64), "down_proj": (64, 160)}
    for l in range(3):
        for k in range(2):
            for proj in rm.PROJS:
                out_f, in_f = shapes[proj]
                a_name, b_name = rm.lora_names(l, k, proj)
                weights[a_name] = torch.randn(4, in_f, generator=g) / in_f**0.5
                weights[b_name] = torch.randn(out_f, 4, generator=g) * 0.2
    return config, weights


MIN_MARGIN = float("inf")  # smallest greedy top-1/top-2 logit margin seen


def rnd(x, digits):
    return float("%.*g" % (digits, x))


def rows(t, digits=8):
    return [[rnd(x, digits) for x in row] for row in t.tolist()]


def policy_run(model, prompt_ids, policy, forced=None, rule=None):
    cache, records, generated = rm.generate(model, prompt_ids, STEPS, policy,
                                            forced=forced, rule=rule)
    global MIN_MARGIN
    MIN_MARGIN = min([MIN_MARGIN] + [rf.top2_margin(r["logits"][-1])
                                     for r in records])
    steps = []
    for r in records[1:]:
        steps.append({
            "input_ids": r["input_ids"],
            "start_position": r["start_position"],
            "exit_loop": r["exit_loop"],
            "confidence": {kind: [rnd(rm.confidence(x, kind), 9)
                                  for x in r["loop_logits"]]
                           for kind in rm.LOGIT_CONFIDENCES},
            "logits": rows(r["logits"]),
        })
    kv = []
    for step, kv_layer in KV_CHECKS:
        pos = 1 if step < 0 else len(prompt_ids) + step - 1
        k, v = cache.get(kv_layer, pos)
        kv.append({"position": pos, "kv_layer": kv_layer, "k": rows(k),
                   "v": rows(v)})
    return {"steps": steps, "generated_ids": generated, "kv": kv}


def dump_compact(obj, path):
    """JSON with one number row per line (readable diffs, small files)."""
    text = json.dumps(obj, indent=1)
    # Collapse the innermost number lists onto one line.
    out, buf = [], None
    for line in text.split("\n"):
        s = line.strip()
        if buf is not None:
            buf.append(s)
            if s.startswith("]"):
                out.append(buf[0] + "".join(buf[1:]).replace(",", ", "))
                buf = None
            continue
        if s.endswith("[") and not s.endswith("[["):
            buf = [line]
            continue
        out.append(line)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT,
                                                  "tests/data/tiny-recursive"))
    ap.add_argument("--seed", type=int, default=9)
    args = ap.parse_args()
    config, weights = make_model(args.seed)
    model_dir.write_model_dir(
        args.out, config, weights,
        os.path.join(ROOT, "tests/data/tiny-llama/tokenizer.json"), "bf16")
    model = rm.RecursiveModel.load(args.out)  # the stored (bf16) weights
    tok = reference_tokenizer.load(os.path.join(args.out, "tokenizer.json"))
    prompt_ids = [config_bos(args.out)] + tok.encode(PROMPT)

    _, records, generated = rm.generate(model, prompt_ids, STEPS)
    rf.write_reference(os.path.join(args.out, "reference.json"), PROMPT,
                       prompt_ids, records, generated)
    margins = [rf.top2_margin(r["logits"][-1]) for r in records]
    print("full depth: generated %s, min top-2 logit margin %.4f" %
          (generated, min(margins)))

    fixture = {
        "prompt_text": PROMPT,
        "prompt_ids": prompt_ids,
        "num_loops": model.num_loops,
        "num_layers": model.num_layers,
        "forced_exits": {str(s): l for s, l in sorted(FORCED.items())},
        "policies": {},
    }
    for policy in rm.KV_POLICIES:
        run = policy_run(model, prompt_ids, policy, forced=FORCED)
        fixture["policies"][policy] = run
        print("%s: generated %s" % (policy, run["generated_ids"]))
    rule = rm.threshold_rule(THRESHOLD["threshold"], THRESHOLD["confidence"],
                             THRESHOLD["min_loops"])
    run = policy_run(model, prompt_ids, THRESHOLD["kv_policy"], rule=rule)
    del run["kv"]
    gap = float("inf")
    for step in run["steps"]:
        del step["logits"]  # exits, confidences and ids suffice here
        # Decisions were taken at loops < N-1 only.
        conf = step["confidence"][THRESHOLD["confidence"]]
        if len(conf) == model.num_loops:
            conf = conf[:-1]
        gap = min([gap] + [abs(c - THRESHOLD["threshold"]) for c in conf])
    fixture["threshold_run"] = dict(THRESHOLD, **run)
    print("threshold run: exits %s, closest confidence to the threshold "
          "%.4f" % ([s["exit_loop"] for s in run["steps"]], gap))
    print("min greedy top-2 logit margin %.4f" % MIN_MARGIN)
    if MIN_MARGIN < 0.05 or gap < 0.005:
        raise SystemExit("fragile fixture: pick another --seed")
    dump_compact(fixture, os.path.join(args.out, "forced_exits.json"))
    dump_compact(hidden_runs(args.out, model, prompt_ids, args.seed),
                 os.path.join(args.out, "hidden_exits.json"))


CLASSIFIER_FILE = "exit_classifier_fixture.safetensors"


def hidden_runs(out, model, prompt_ids, seed):
    """The hidden-measure fixture: a random classifier (written to out) and
    a threshold run per measure, each threshold chosen on a grid for exits
    at the most distinct loops, then the widest gap to every deciding
    confidence."""
    g = torch.Generator().manual_seed(seed + 1)
    n, hidden = model.num_loops, model.config["hidden_size"]
    w = torch.randn(n - 1, hidden, generator=g) * (2.0 / hidden ** 0.5)
    b = torch.tensor([0.3, 0.8])[:n - 1]
    safetensors_io.save({rm.CLASSIFIER_WEIGHT: w.float().contiguous(),
                         rm.CLASSIFIER_BIAS: b.float().contiguous()},
                        os.path.join(out, CLASSIFIER_FILE), {"format": "pt"})
    with_classifier = rm.RecursiveModel(
        model.config, dict(model.w, **{rm.CLASSIFIER_WEIGHT: w,
                                       rm.CLASSIFIER_BIAS: b}))
    runs = {}
    for kind in rm.HIDDEN_CONFIDENCES:
        best = None
        for t in [x / 100 for x in range(1, 100)]:
            seen = []  # (step, loop, confidence) of every evaluation

            def rule(loop, logits, point=None, t=t, seen=seen):
                c = point.confidence(loop, kind)
                seen.append((loop, c))
                return c >= t
            _, records, generated = rm.generate(with_classifier, prompt_ids,
                                                STEPS, "propagate", rule=rule)
            exits = [r["exit_loop"] for r in records[1:]]
            # Early exits and full-depth tokens both; every loop if it can.
            kinds = len(set(exits))
            if kinds < 2 or min(exits) == n - 1:
                continue
            gap = min(abs(c - t) for _, c in seen)
            if best is None or (kinds, gap) > (best[0], best[1]):
                best = (kinds, gap, t, exits, generated, list(seen))
        if best is None:
            raise SystemExit("no threshold exits at every loop for " + kind)
        _, gap, t, exits, generated, seen = best
        it = iter(seen)
        steps = []
        for e in exits:
            conf = [rnd(next(it)[1], 9) for _ in range(min(e + 1, n - 1))]
            steps.append({"exit_loop": e, "confidence": conf})
        runs[kind] = {"threshold": t, "kv_policy": "propagate",
                      "min_loops": 1, "steps": steps,
                      "generated_ids": generated, "min_gap": rnd(gap, 6)}
        print("%s run: threshold %.3f, exits %s, closest confidence %.4f" %
              (kind, t, exits, gap))
        if gap < 0.005:
            raise SystemExit("fragile hidden-measure fixture for " + kind)
    return {"prompt_ids": prompt_ids, "classifier_file": CLASSIFIER_FILE,
            "runs": runs}


def config_bos(model_path):
    with open(os.path.join(model_path, "config.json")) as f:
        return json.load(f)["bos_token_id"]


if __name__ == "__main__":
    main()

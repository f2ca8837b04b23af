#!/usr/bin/python3
"""Tests of the recursive reference, converter, trainer module and fixtures.

Run: /usr/bin/python3 tools/recursive/test_recursive.py   (needs torch)
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "train"))
sys.path.insert(0, HERE)
import convert_to_recursive as conv  # noqa: E402
import make_fixtures  # noqa: E402
import model as rm  # noqa: E402
import model_dir  # noqa: E402
import recursive_lm  # noqa: E402
import reference_forward as rf  # noqa: E402
import reference_tokenizer  # noqa: E402
import train  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data")
TINY_LLAMA = os.path.join(DATA, "tiny-llama")
TINY_REC = os.path.join(DATA, "tiny-recursive")
BUNDLED = os.path.join(ROOT, "models", "strata-recursive-tiny")
IDS = [1792, 79, 110, 313, 309, 640, 259, 847, 44, 858]


def load_llama():
    with open(os.path.join(TINY_LLAMA, "config.json")) as f:
        return json.load(f), rf.load_weights(TINY_LLAMA)


def max_diff(a, b):
    return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())


class ConverterTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.config, cls.w = load_llama()
        cls.original = rf.ReferenceModel(TINY_LLAMA).forward(IDS)  # [T, V]

    def convert(self, **kw):
        rc, w = conv.convert(self.config, self.w, **kw)
        return rm.RecursiveModel(rc, w)

    def test_full_rank_reproduces_the_llama(self):
        for init in ("stepwise", "average"):
            m = self.convert(num_loops=2, init=init, lora_rank=64,
                             lora_alpha=32)
            self.assertEqual(m.num_layers, 1)
            self.assertEqual(m.num_kv_layers, 2)
            out = m.forward_all_loops(IDS)[-1]
            self.assertLess(max_diff(out, self.original), 1e-9, init)

    def test_error_decreases_with_rank(self):
        # Eckart-Young: the rank-r SVD residual is the best rank-r fit, so
        # the effective weight error shrinks with r (norm folding off, so
        # the target is the original weight itself).
        target = self.w["model.layers.1.mlp.up_proj.weight"]
        errors = []
        for r in (0, 2, 8, 64):
            m = self.convert(num_loops=2, lora_rank=r, fold_norms=False)
            errors.append(float((m.weight(1, 0, "up_proj") - target).norm()))
        self.assertGreater(errors[0], errors[1])
        self.assertGreater(errors[1], errors[2])
        self.assertGreater(errors[2], errors[3])
        self.assertLess(errors[3], 1e-10)
        out = self.convert(num_loops=2, lora_rank=0).forward_all_loops(IDS)
        self.assertGreater(max_diff(out[-1], self.original), 1.0)

    def test_without_norm_folding_full_rank_is_inexact(self):
        m = self.convert(num_loops=2, lora_rank=64, fold_norms=False)
        self.assertGreater(max_diff(m.forward_all_loops(IDS)[-1],
                                    self.original), 1e-3)

    def test_shared_layer_initialisation(self):
        name = "model.layers.%d.mlp.up_proj.weight"
        _, step = conv.convert(self.config, self.w, 2, "stepwise")
        self.assertTrue(torch.equal(step[name % 0], self.w[name % 0]))
        _, avg = conv.convert(self.config, self.w, 2, "average")
        mean = (self.w[name % 0] + self.w[name % 1]) / 2
        self.assertLess(max_diff(avg[name % 0], mean), 1e-15)
        self.assertNotIn(name % 1, avg)
        self.assertFalse(any("lora" in n for n in avg))

    def test_one_loop_is_the_original(self):
        m = self.convert(num_loops=1, lora_rank=0)
        self.assertLess(max_diff(m.forward_all_loops(IDS)[-1],
                                 self.original), 1e-12)

    def test_rejects_bad_loop_count(self):
        with self.assertRaises(ValueError):
            conv.convert(self.config, self.w, 3)

    def test_lora_shapes_and_padding(self):
        rc, w = conv.convert(self.config, self.w, 2, lora_rank=40,
                             lora_alpha=80)
        self.assertEqual(rc["lora_rank"], 40)
        self.assertEqual(rc["lora_alpha"], 80.0)
        a, b = rm.lora_names(1, 0, "k_proj")
        self.assertEqual(list(w[a].shape), [40, 64])
        self.assertEqual(list(w[b].shape), [32, 40])
        self.assertEqual(float(w[a][32:].abs().sum()), 0.0)  # min(32,64)<40

    def test_cli_writes_a_loadable_directory(self):
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([sys.executable,
                            os.path.join(ROOT, "tools",
                                         "convert_to_recursive.py"),
                            "--model", TINY_LLAMA, "--out", d, "--loops", "2",
                            "--lora-rank", "64"], check=True,
                           capture_output=True)
            with open(os.path.join(d, "config.json")) as f:
                c = json.load(f)
            self.assertEqual(c["architectures"],
                             ["StrataRecursiveLlamaForCausalLM"])
            self.assertEqual((c["num_hidden_layers"], c["num_loops"]), (1, 2))
            out = rm.RecursiveModel.load(d).forward_all_loops(IDS)[-1]
            self.assertLess(max_diff(out, self.original), 1e-4)  # f32 files


class ReferenceModelTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.m = rm.RecursiveModel.load(TINY_REC)
        cls.tokens = IDS + [1244, 1157, 1541, 493, 9, 1703]

    def decode_all(self, policy, forced):
        """Teacher-forced decode of self.tokens after a 4-token prefill."""
        cache = rm.KVCache(self.m.num_kv_layers)
        self.m.prefill(cache, self.tokens[:4])
        out = []
        for pos in range(4, len(self.tokens)):
            out.append(self.m.decode(cache, self.tokens[pos], pos,
                                     rm.forced_rule(forced.get(pos)), policy))
        return cache, out

    def test_cached_decode_matches_no_cache_forward(self):
        full = self.m.forward_all_loops(self.tokens)  # N x [T, V]
        for policy in rm.KV_POLICIES:
            _, out = self.decode_all(policy, {})
            for i, r in enumerate(out):
                self.assertEqual(r["exit_loop"], 2)
                for l in range(3):
                    self.assertLess(max_diff(r["loop_logits"][l],
                                             full[l][4 + i]), 1e-10)

    def test_exit_logits_are_the_loop_logits(self):
        full = self.m.forward_all_loops(self.tokens[:9])
        _, out = self.decode_all("propagate", {8: 1})
        self.assertEqual(out[4]["exit_loop"], 1)
        self.assertEqual(len(out[4]["loop_logits"]), 2)
        self.assertLess(max_diff(out[4]["logits"], full[1][8]), 1e-10)

    def test_propagate_fills_skipped_kv_from_the_exit_state(self):
        cache, out = self.decode_all("propagate", {7: 0})
        h = out[3]["exit_hidden"][None, :]  # [1, hidden]
        w = self.m.w
        scale = self.m.config["lora_alpha"] / self.m.config["lora_rank"]
        for loop in (1, 2):
            for layer in (0, 1):
                x = rf.rms_norm(h, w["model.layers.%d.input_layernorm.weight"
                                     % layer], self.m.eps)
                got_k, got_v = cache.get(loop * 2 + layer, 7)
                for proj, got in (("k_proj", got_k), ("v_proj", got_v)):
                    a, b = rm.lora_names(loop, layer, proj)
                    weff = (w["model.layers.%d.self_attn.%s.weight" %
                              (layer, proj)] + scale * w[b] @ w[a])
                    y = (x @ weff.t()).view(1, 2, 16).transpose(0, 1)
                    if proj == "k_proj":
                        y = rf.apply_rope(y, torch.tensor([7]),
                                          self.m.inv_freq)
                    self.assertLess(max_diff(got, y[:, 0]), 1e-12)
        # The computed loop is unaffected; later tokens see the filled KV.
        full_cache, full_out = self.decode_all("propagate", {})
        self.assertLess(max_diff(cache.get(0, 7)[0], full_cache.get(0, 7)[0]),
                        1e-12)
        self.assertGreater(max_diff(cache.get(4, 7)[0],
                                    full_cache.get(4, 7)[0]), 1e-3)
        self.assertGreater(max_diff(out[5]["logits"], full_out[5]["logits"]),
                           1e-6)

    def test_recompute_kv_is_exact(self):
        cache, out = self.decode_all("recompute", {7: 0, 8: 1})
        full_cache, full_out = self.decode_all("recompute", {})
        for kv_layer in range(6):
            for pos in range(len(self.tokens)):
                a = cache.get(kv_layer, pos)
                b = full_cache.get(kv_layer, pos)
                self.assertLess(max_diff(a[0], b[0]), 1e-12)
                self.assertLess(max_diff(a[1], b[1]), 1e-12)
        # Later tokens' logits are as at full depth; the exited ones are not.
        self.assertLess(max_diff(out[6]["logits"], full_out[6]["logits"]),
                        1e-10)
        self.assertGreater(max_diff(out[3]["logits"], full_out[3]["logits"]),
                           1e-3)

    def test_confidence_definitions(self):
        logits = torch.log(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
        self.assertAlmostEqual(rm.confidence(logits, "max_prob"), 0.5)
        self.assertAlmostEqual(rm.confidence(logits, "margin"), 0.2)
        never = rm.threshold_rule(1.0)
        self.assertFalse(never(0, torch.tensor([100.0, 0.0])))
        rule = rm.threshold_rule(0.45, "max_prob", min_loops=2)
        self.assertFalse(rule(0, logits))  # below min_loops
        self.assertTrue(rule(1, logits))
        self.assertFalse(rm.threshold_rule(0.25, "margin")(1, logits))

    def test_hidden_state_measures(self):
        h = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
        prev = torch.tensor([4.0, 3.0, 0.0], dtype=torch.float64)
        self.assertAlmostEqual(rm.saturation(h, prev), 24.0 / 25.0)
        self.assertAlmostEqual(rm.saturation(h, -h), -1.0)
        config = dict(self.m.config)
        hidden = config["hidden_size"]
        w = dict(self.m.w)
        w[rm.CLASSIFIER_WEIGHT] = torch.zeros(2, hidden, dtype=torch.float64)
        w[rm.CLASSIFIER_WEIGHT][1, 0] = 1.0
        w[rm.CLASSIFIER_BIAS] = torch.tensor([0.0, -0.5], dtype=torch.float64)
        m = rm.RecursiveModel(config, w)
        x = torch.zeros(hidden, dtype=torch.float64)
        x[0], x[1] = 2.0, -2.0
        # h / rms(h): rms = sqrt(8 / hidden).
        feature = 2.0 / math.sqrt(8.0 / hidden + m.eps)
        self.assertAlmostEqual(m.classifier_confidence(0, x), 0.5)
        self.assertAlmostEqual(m.classifier_confidence(1, x),
                               1.0 / (1.0 + math.exp(0.5 - feature)))
        point = rm.ExitPoint(m, x, x)
        logits = torch.zeros(4, dtype=torch.float64)  # max_prob 0.25
        self.assertTrue(rm.threshold_rule(0.99, "saturation")(
            0, logits, point=point))
        self.assertFalse(rm.threshold_rule(0.6, "classifier")(
            0, logits, point=point))
        self.assertTrue(rm.threshold_rule(0.6, "classifier")(
            1, logits, point=point))
        with self.assertRaises(ValueError):
            self.m.classifier_confidence(0, x)  # the fixture model has none

    def test_decode_gives_rules_the_loop_states(self):
        """A rule sees h_l and h_{l-1}, the embedding at loop 0."""
        seen = []

        def rule(loop, logits, point=None):
            seen.append((loop, point.prev_hidden.clone(),
                         point.hidden.clone()))
            return False

        cache = rm.KVCache(self.m.num_kv_layers)
        self.m.prefill(cache, self.tokens[:4])
        r = self.m.decode(cache, self.tokens[4], 4, rule, "propagate")
        self.assertEqual([s[0] for s in seen], [0, 1])
        emb = self.m.w["model.embed_tokens.weight"][self.tokens[4]]
        self.assertLess(max_diff(seen[0][1], emb), 1e-15)
        self.assertLess(max_diff(seen[1][1], seen[0][2]), 1e-15)
        self.assertEqual(r["exit_loop"], 2)


class TrainerModuleTest(unittest.TestCase):

    def test_module_matches_reference(self):
        base = {"vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
                "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "tie_word_embeddings": True}
        config = model_dir.recursive_config(base, 3, 4, 8.0)
        m = recursive_lm.RecursiveLM(config, seed=3).double()
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for p in m.parameters():  # break symmetry: nonzero B, norms
                p.add_(torch.randn(p.shape, generator=g,
                                   dtype=torch.float64) * 0.1)
        ids = torch.tensor([[3, 14, 15, 9, 26, 5, 35]])
        exits = [m.logits(s)[0] for s in m(ids)]
        ref = rm.RecursiveModel(config, m.export_weights())
        ref_exits = ref.forward_all_loops(ids[0].tolist())
        for l in range(3):
            # export_weights() is float32: compare at float32 precision.
            self.assertLess(max_diff(exits[l], ref_exits[l]), 1e-4)
        self.assertGreater(max_diff(exits[0], exits[2]), 1e-2)

    def test_chat_ids_match_the_template_tokenization(self):
        with open(os.path.join(TINY_LLAMA, "tokenizer.json")) as f:
            tok_json = json.load(f)
        tok = reference_tokenizer.ReferenceTokenizer(tok_json)
        sp = model_dir.special_ids(tok_json)
        text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>"
                "\n\nAnd God said, Let there be light.<|eot_id|>"
                "<|start_header_id|>assistant<|end_header_id|>\n\nAnd there "
                "was light.<|eot_id|>")
        ids = train.chat_ids(train.FastEncoder(tok), sp,
                             " And God said, Let there be light.",
                             "And there was light. ")
        self.assertEqual(ids, tok.encode(text))

    def test_exit_weights(self):
        w = train.exit_weights(3)
        self.assertAlmostEqual(float(w.sum()), 1.0, places=6)
        self.assertAlmostEqual(float(w[2] / w[0]), 3.0, places=5)


class FixtureTest(unittest.TestCase):
    """The committed tests/data/tiny-recursive files match the reference."""

    @classmethod
    def setUpClass(cls):
        cls.m = rm.RecursiveModel.load(TINY_REC)
        with open(os.path.join(TINY_REC, "reference.json")) as f:
            cls.ref = json.load(f)
        with open(os.path.join(TINY_REC, "forced_exits.json")) as f:
            cls.forced = json.load(f)

    def check_rows(self, got, want, tol=1e-5):
        self.assertEqual(list(got.shape), [len(want), len(want[0])])
        self.assertLess(max_diff(got, torch.tensor(want)), tol)

    def test_config(self):
        c = self.m.config
        self.assertEqual(c["model_type"], "strata_recursive_llama")
        self.assertEqual((c["num_hidden_layers"], c["num_loops"],
                          c["lora_rank"]), (2, 3, 4))
        self.assertNotEqual(c["num_attention_heads"],
                            c["num_key_value_heads"])

    def test_reference_json(self):
        _, records, generated = rm.generate(self.m, self.ref["prompt_ids"],
                                            len(self.ref["steps"]) - 1)
        self.assertEqual(generated, self.ref["generated_ids"])
        for r, want in zip(records, self.ref["steps"]):
            self.assertEqual(r["input_ids"], want["input_ids"])
            self.assertEqual(r["start_position"], want["start_position"])
            self.check_rows(r["logits"], want["logits"])

    def test_forced_exits_json(self):
        forced = {int(s): l for s, l in self.forced["forced_exits"].items()}
        for policy in rm.KV_POLICIES:
            want = self.forced["policies"][policy]
            cache, records, generated = rm.generate(
                self.m, self.forced["prompt_ids"], len(want["steps"]), policy,
                forced=forced)
            self.assertEqual(generated, want["generated_ids"])
            for s, (r, w) in enumerate(zip(records[1:], want["steps"]), 1):
                self.assertEqual(r["exit_loop"], forced.get(s, 2))
                self.assertEqual(r["exit_loop"], w["exit_loop"])
                self.check_rows(r["logits"], w["logits"])
                for kind in rm.CONFIDENCES:
                    got = [rm.confidence(x, kind) for x in r["loop_logits"]]
                    self.assertLess(max(abs(a - b) for a, b in
                                        zip(got, w["confidence"][kind])),
                                    1e-7)
            for kv in want["kv"]:
                k, v = cache.get(kv["kv_layer"], kv["position"])
                self.check_rows(k, kv["k"])
                self.check_rows(v, kv["v"])

    def test_threshold_run(self):
        t = self.forced["threshold_run"]
        rule = rm.threshold_rule(t["threshold"], t["confidence"],
                                 t["min_loops"])
        _, records, generated = rm.generate(
            self.m, self.forced["prompt_ids"], len(t["steps"]),
            t["kv_policy"], rule=rule)
        self.assertEqual(generated, t["generated_ids"])
        exits = [r["exit_loop"] for r in records[1:]]
        self.assertEqual(exits, [s["exit_loop"] for s in t["steps"]])
        self.assertEqual(len(set(exits)), 3)  # every loop is an exit here

    def test_fixture_is_reproducible(self):
        config, weights = make_fixtures.make_model(9)
        self.assertEqual(config["num_loops"], self.m.num_loops)
        stored = rf.load_weights(TINY_REC)
        self.assertEqual(sorted(stored), sorted(weights))
        for n, t in weights.items():
            self.assertTrue(torch.equal(
                stored[n], t.to(torch.bfloat16).to(torch.float64)), n)


@unittest.skipUnless(os.path.exists(os.path.join(BUNDLED, "config.json")),
                     "bundled model not trained yet")
class BundledModelTest(unittest.TestCase):

    def test_bundled_model_is_complete(self):
        with open(os.path.join(BUNDLED, "config.json")) as f:
            c = json.load(f)
        w = rf.load_weights(BUNDLED)
        names = set(w)
        K, N, r = c["num_hidden_layers"], c["num_loops"], c["lora_rank"]
        shapes = recursive_lm.proj_shapes(c)
        for k in range(K):
            for proj, (out_f, in_f) in shapes.items():
                name = "model.layers.%d.%s.weight" % (k, rm.proj_name(proj))
                self.assertEqual(list(w[name].shape), [out_f, in_f])
                for l in range(N):
                    a, b = rm.lora_names(l, k, proj)
                    self.assertEqual(list(w[a].shape), [r, in_f])
                    self.assertEqual(list(w[b].shape), [out_f, r])
                    names -= {a, b}
                names.discard(name)
            names -= {"model.layers.%d.input_layernorm.weight" % k,
                      "model.layers.%d.post_attention_layernorm.weight" % k}
        self.assertEqual(names, {"model.embed_tokens.weight",
                                 "model.norm.weight"})
        self.assertTrue(c["tie_word_embeddings"])
        size = os.path.getsize(os.path.join(BUNDLED, "model.safetensors"))
        self.assertLess(size, 25 * 1024 * 1024)
        self.assertTrue(math.isfinite(float(w["model.norm.weight"].sum())))

    def test_bundled_exit_classifier_and_thresholds(self):
        with open(os.path.join(BUNDLED, "config.json")) as f:
            c = json.load(f)
        if "exit_classifier" not in c:
            self.skipTest("no exit classifier")
        m = rm.RecursiveModel.load(BUNDLED)
        w, b = m.classifier
        self.assertEqual(list(w.shape), [c["num_loops"] - 1,
                                         c["hidden_size"]])
        self.assertEqual(list(b.shape), [c["num_loops"] - 1])
        for kind, t in c.get("exit_thresholds", {}).items():
            self.assertIn(kind, rm.CONFIDENCES)
            self.assertTrue(0.0 <= t <= 1.0, (kind, t))


if __name__ == "__main__":
    unittest.main()

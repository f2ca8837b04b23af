#!/usr/bin/python3
"""Self-tests for the reference tools and the committed fixtures.

Run: /usr/bin/python3 tools/test_tools.py   (needs torch, numpy, regex)
"""

import json
import math
import os
import struct
import sys
import tempfile
import unittest

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bpe  # noqa: E402
import check_reference  # noqa: E402
import reference_forward  # noqa: E402
import reference_tokenizer  # noqa: E402
import safetensors_io  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data")


class ByteLevelTest(unittest.TestCase):

    def test_alphabet_is_a_bijection(self):
        m = reference_tokenizer.BYTE_TO_CHAR
        self.assertEqual(len(set(m.values())), 256)
        self.assertEqual(m[ord("A")], "A")
        self.assertEqual(m[ord(" ")], "\u0120")  # the familiar "Ġ"
        self.assertEqual(m[ord("\n")], "\u010a")  # "Ċ"


class ReferenceTokenizerTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tok = reference_tokenizer.load(
            os.path.join(DATA, "tiny-llama", "tokenizer.json"))

    def test_merge_lowest_rank_first(self):
        ranks = {("a", "b"): 1, ("b", "c"): 0, ("a", "bc"): 2}
        self.assertEqual(reference_tokenizer.bpe_merge(list("abc"), ranks),
                         ["abc"])
        self.assertEqual(reference_tokenizer.bpe_merge(list("abab"), ranks),
                         ["ab", "ab"])
        self.assertEqual(reference_tokenizer.bpe_merge(list("xy"), ranks),
                         ["x", "y"])

    def test_isolated_split_keeps_everything(self):
        import regex
        pat = regex.compile(reference_tokenizer.LLAMA3_PATTERN)
        text = "Hello  world's 12345\n\n  x\t!!"
        pieces = reference_tokenizer.split_isolated(pat, text)
        self.assertEqual("".join(pieces), text)
        self.assertEqual(pieces, ["Hello", " ", " world", "'s", " ", "123",
                                  "45", "\n\n", " ", " x", "\t", "!!"])

    def test_specials_are_literal_and_longest_first(self):
        ids = self.tok.encode("<|begin_of_text|>hi<|eot_id|>")
        self.assertEqual(ids[0], self.tok.added["<|begin_of_text|>"])
        self.assertEqual(ids[-1], self.tok.added["<|eot_id|>"])
        broken = self.tok.encode("<|begin_of_text|")
        self.assertNotIn(self.tok.added["<|begin_of_text|>"], broken)
        self.assertEqual(self.tok.decode(broken), "<|begin_of_text|")
        plain = self.tok.encode("<|eot_id|>", parse_special=False)
        self.assertNotIn(self.tok.added["<|eot_id|>"], plain)

    def test_fixture_ids_reproduce_and_round_trip(self):
        with open(os.path.join(DATA, "tokenizer", "multilingual.ids.json"),
                  encoding="utf-8") as f:
            fixture = json.load(f)
        with open(os.path.join(DATA, "tokenizer", "multilingual.txt"),
                  "rb") as f:
            text = f.read().decode("utf-8")
        self.assertIn("\r\n", text)
        self.assertEqual(self.tok.encode(text), fixture["whole_file"]["ids"])
        self.assertEqual(self.tok.decode(fixture["whole_file"]["ids"]), text)
        self.assertEqual([e["text"] for e in fixture["lines"]],
                         text.split("\n")[:-1])
        for entry in fixture["lines"]:
            self.assertEqual(self.tok.encode(entry["text"]), entry["ids"])
            self.assertEqual(self.tok.decode(entry["ids"]), entry["text"])

    def test_every_vocab_entry_is_reachable_by_its_merge(self):
        # Each merged token is the concatenation of a merge's two parts.
        produced = {a + b for a, b in (m.split(" ") for m in
                                       json.load(open(os.path.join(
                                           DATA, "tiny-llama",
                                           "tokenizer.json")))["model"]
                                       ["merges"])}
        for token, i in self.tok.vocab.items():
            if i >= 256:
                self.assertIn(token, produced)


class BpeTrainerTest(unittest.TestCase):

    def test_most_frequent_pair_first_ties_by_order(self):
        words = [list("abab"), list("cd")]
        vocab, merges = bpe.train(words, [3, 3], 256 + 2)
        self.assertEqual(merges[0], ("a", "b"))  # 6 occurrences
        self.assertEqual(merges[1], ("ab", "ab"))  # 3, tie with ("c", "d") by order
        self.assertEqual(vocab[256:], ["ab", "abab"])

    def test_tokenizer_json_layout(self):
        vocab = [reference_tokenizer.BYTE_TO_CHAR[b] for b in range(256)]
        tj = bpe.tokenizer_json(vocab, [], bpe.CHATML_SPECIALS)
        self.assertEqual(tj["model"]["type"], "BPE")
        self.assertEqual([t["id"] for t in tj["added_tokens"]],
                         [256, 257, 258])
        self.assertEqual(tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]
                         ["Regex"], reference_tokenizer.LLAMA3_PATTERN)


class SafetensorsTest(unittest.TestCase):

    def test_round_trip_all_dtypes(self):
        t = {
            "a": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7,
            "b": torch.tensor([1.5, -2.25, 3.0e38], dtype=torch.bfloat16),
            "c": torch.tensor([[0.5], [65504.0]], dtype=torch.float16),
        }
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.safetensors")
            safetensors_io.save(t, path, {"format": "pt"})
            with open(path, "rb") as f:
                raw = f.read()
            (n,) = struct.unpack("<Q", raw[:8])
            self.assertEqual(n % 8, 0)
            header = json.loads(raw[8:8 + n])
            self.assertEqual(header["b"]["dtype"], "BF16")
            self.assertEqual(header["a"]["data_offsets"], [0, 24])
            back = safetensors_io.load(path)
        for k in t:
            self.assertEqual(back[k].dtype, t[k].dtype)
            self.assertTrue(torch.equal(back[k], t[k]))


class ReferenceForwardTest(unittest.TestCase):

    def test_llama3_rope_scaling_branches(self):
        config = json.load(open(os.path.join(DATA, "tiny-llama",
                                             "config.json")))
        scaled = reference_forward.rope_inv_freq(config)
        plain = reference_forward.rope_inv_freq(
            dict(config, rope_scaling=None))
        self.assertEqual(scaled.shape, (8,))
        self.assertAlmostEqual(float(plain[1]), 500000.0**(-2 / 16))
        self.assertEqual(float(scaled[0]), float(plain[0]))  # kept
        self.assertTrue(float(plain[1]) / 8 < float(scaled[1]) <
                        float(plain[1]))  # smoothed
        for i in range(2, 8):  # divided by the factor
            self.assertAlmostEqual(float(scaled[i]), float(plain[i]) / 8)

    def test_rope_rotates_pairs_i_and_i_plus_half(self):
        x = torch.zeros(1, 1, 4, dtype=torch.float64)
        x[0, 0, 0] = 1.0
        inv = torch.tensor([1.0, 0.5], dtype=torch.float64)
        y = reference_forward.apply_rope(x, torch.tensor([1]), inv)
        self.assertAlmostEqual(float(y[0, 0, 0]), math.cos(1.0))
        self.assertAlmostEqual(float(y[0, 0, 2]), math.sin(1.0))
        self.assertEqual(float(y[0, 0, 1]), 0.0)

    def test_causal_prefix_logits_do_not_depend_on_later_tokens(self):
        model = reference_forward.ReferenceModel(os.path.join(DATA,
                                                              "tiny-qwen2"))
        a = model.forward([5, 6, 7, 8])
        b = model.forward([5, 6, 7, 9, 10])
        self.assertTrue(torch.allclose(a[:3], b[:3], atol=1e-12))
        self.assertFalse(torch.allclose(a[3], b[3]))

    def test_fixture_references_match_kv_cache_forward(self):
        for name in ("tiny-llama", "tiny-qwen2"):
            ref = json.load(open(os.path.join(DATA, name, "reference.json")))
            self.assertEqual(len(ref["steps"]), 21)
            self.assertEqual(len(ref["generated_ids"]), 21)
            model = check_reference.CachedModel(os.path.join(DATA, name))
            vocab = model.lm_head.shape[0]
            for step in ref["steps"][:4]:
                for j, token in enumerate(step["input_ids"]):
                    got = model.step(token, step["start_position"] + j)
                    want = torch.tensor(step["logits"][j])
                    self.assertEqual(len(step["logits"][j]), vocab)
                    self.assertLess(float((got - want).abs().max()), 1e-4)


if __name__ == "__main__":
    unittest.main()

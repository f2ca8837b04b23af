#!/usr/bin/python3
"""Config and model-directory helpers shared by the recursive-model tools.

`recursive_config()` turns a Llama config.json dict into a Strata recursive
one (docs/recursive-models.md); `write_model_dir()` writes a complete HF-layout
directory (config.json, generation_config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with the Llama 3 chat template).
"""

import json
import os
import shutil
import sys

import torch

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, TOOLS)
import make_random_llama  # noqa: E402
import safetensors_io  # noqa: E402

ARCHITECTURE = "StrataRecursiveLlamaForCausalLM"
MODEL_TYPE = "strata_recursive_llama"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}


def recursive_config(base, num_loops, lora_rank, lora_alpha, num_layers=None):
    """A recursive config from a Llama config dict (copied, not modified).

    num_layers: K, the unique layers stored (default: keep the base value).
    """
    c = dict(base)
    c["architectures"] = [ARCHITECTURE]
    c["model_type"] = MODEL_TYPE
    if num_layers is not None:
        c["num_hidden_layers"] = num_layers
    c["num_loops"] = num_loops
    c["lora_rank"] = lora_rank
    c["lora_alpha"] = float(lora_alpha) if lora_rank else 0.0
    return c


def write_json(obj, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def llama3_tokenizer_config(tokenizer_json, model_max_length):
    """tokenizer_config.json for a Llama 3 specials tokenizer."""
    added = {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
             for t in tokenizer_json["added_tokens"]}
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": added,
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "chat_template": make_random_llama.LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_ids(tokenizer_json):
    return {t["content"]: t["id"] for t in tokenizer_json["added_tokens"]}


def write_model_dir(out, config, weights, tokenizer_path, dtype="bf16",
                    metadata=None):
    """Writes config, weights (converted to dtype) and tokenizer files.

    The tokenizer must carry the Llama 3 specials; bos/eos ids in the config
    are set from it.
    """
    os.makedirs(out, exist_ok=True)
    with open(tokenizer_path, encoding="utf-8") as f:
        tok = json.load(f)
    ids = special_ids(tok)
    config = dict(config)
    config["torch_dtype"] = DTYPE_NAMES[dtype]
    config["bos_token_id"] = ids["<|begin_of_text|>"]
    config["eos_token_id"] = [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    write_json(config, os.path.join(out, "config.json"))
    write_json({"bos_token_id": config["bos_token_id"],
                "eos_token_id": config["eos_token_id"]},
               os.path.join(out, "generation_config.json"))
    write_json(llama3_tokenizer_config(tok,
                                       config["max_position_embeddings"]),
               os.path.join(out, "tokenizer_config.json"))
    dst = os.path.join(out, "tokenizer.json")
    if os.path.abspath(tokenizer_path) != os.path.abspath(dst):
        shutil.copyfile(tokenizer_path, dst)
    meta = {"format": "pt"}
    meta.update(metadata or {})
    tmp = os.path.join(out, "model.safetensors.tmp")
    safetensors_io.save({n: t.detach().to(DTYPES[dtype]).contiguous()
                         for n, t in weights.items()}, tmp, meta)
    os.replace(tmp, os.path.join(out, "model.safetensors"))

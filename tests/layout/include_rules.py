#!/usr/bin/env python3
"""Checks the include direction of the source tree (run by ctest).

Dependencies point one way: server -> scheduler -> engine -> kernels, with
text/ used by server/ and common/ by all (docs/engine.md, README's layout).
Every project include ("folder/...") in a source file must be allowed by
the most specific rule for the file's folder below. Device #ifdefs stay
inside engine/backends/. Exit status 1 lists every violation.
"""
import os
import re
import sys

# Folder of the including file -> prefixes it may include. Longest folder
# match wins. System and library includes (<...>, "absl/...", "grpc...",
# "nlohmann/...", "prometheus/...", generated "strata/v1/...") are checked
# separately below.
RULES = {
    "common/": ["common/"],
    "kernels/cpu/": ["common/", "kernels/cpu/"],
    "kernels/cuda/": ["common/", "kernels/cuda/"],
    "text/": ["common/", "text/"],
    # The engine proper: the forward pass written against Backend only.
    "engine/": ["common/", "engine/"],
    "engine/loader/": ["common/", "engine/loader/", "engine/step.h",
                       "engine/exit_policy.h"],
    "engine/kv_cache/": ["common/", "engine/kv_cache/", "engine/step.h",
                         "engine/exit_policy.h", "engine/backends/backend.h",
                         "engine/loader/"],
    "engine/backends/": ["common/", "engine/backends/", "engine/step.h",
                         "engine/exit_policy.h", "engine/softmax_stats.h",
                         "engine/loader/"],
    "engine/backends/cpu/": ["common/", "engine/backends/backend.h",
                             "engine/backends/backend_options.h",
                             "engine/backends/cpu/", "engine/step.h",
                             "engine/exit_policy.h", "engine/loader/",
                             "kernels/cpu/"],
    "engine/backends/cuda/": ["common/", "engine/backends/backend.h",
                              "engine/backends/backend_options.h",
                              "engine/backends/cuda/", "engine/step.h",
                              "engine/exit_policy.h", "engine/loader/",
                              "kernels/cuda/"],
    # The scheduler sees the engine only through the step interface.
    "scheduler/": ["common/", "scheduler/", "engine/step.h",
                   "engine/exit_policy.h"],
    "server/": ["common/", "server/", "scheduler/", "engine/", "text/",
                "strata/v1/", "grpc/"],
    "client/": ["common/", "client/", "server/status_util.h", "strata/v1/",
                "grpc/"],
}
# Files that may break their folder's rule, each with the reason.
EXCEPTIONS = {
    # The registry is the one place that names every backend.
    "engine/backends/backend_registry.cc": ["engine/backends/cpu/",
                                            "engine/backends/cuda/"],
}
# Engine files outside backends/ must not reach a backend's implementation.
ENGINE_PRIVATE = ["engine/backends/cpu/", "engine/backends/cuda/", "kernels/"]
EXTERNAL = re.compile(r'^(absl/|grpc|nlohmann/|prometheus/|gtest/|gmock/|'
                      r'google/protobuf/|cuda|cublas)')
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
DEVICE_IFDEF = re.compile(r'^\s*#\s*if(def|\s+defined)?\s*\(?\s*STRATA_WITH_CUDA',
                          re.M)


def rule_for(path):
    best = None
    for folder in RULES:
        if path.startswith(folder) and (best is None or len(folder) > len(best)):
            best = folder
    return best


def main(root):
    errors = []
    checked = 0
    for dirpath, _, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir.startswith(("build", ".git", "tests", "bench", "tools",
                               "models", "proto", "docs", "deploy")):
            continue
        for name in files:
            if not name.endswith((".h", ".cc", ".cu", ".cuh")):
                continue
            path = os.path.normpath(os.path.join(rel_dir, name))
            folder = rule_for(path)
            if folder is None:
                continue
            checked += 1
            text = open(os.path.join(root, path), encoding="utf-8").read()
            allowed = RULES[folder] + EXCEPTIONS.get(path, [])
            own = path.rsplit(".", 1)[0] + ".h"
            for inc in INCLUDE.findall(text):
                if EXTERNAL.match(inc) or inc == own:
                    continue
                if not any(inc.startswith(p) for p in allowed):
                    errors.append(f"{path}: includes \"{inc}\" "
                                  f"(a {folder} file may include {allowed})")
                if (folder == "engine/" and path.count("/") == 1 and
                        any(inc.startswith(p) for p in ENGINE_PRIVATE)):
                    errors.append(f"{path}: includes \"{inc}\": the model "
                                  "computes through its Backend only")
            if DEVICE_IFDEF.search(text) and not path.startswith(
                    "engine/backends/"):
                errors.append(f"{path}: a device #ifdef outside "
                              "engine/backends/")
    for e in errors:
        print(e)
    print(f"include_rules: {checked} files checked, {len(errors)} violations")
    return 1 if errors or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))

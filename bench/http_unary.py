#!/usr/bin/python3
"""Non-streamed load on stratad's HTTP API, for figures without per-token
delivery.

strata-bench streams every token, so on a small machine its client threads,
gRPC's and the daemon's output worker share the cores the forward pass runs
on. This script sends whole-completion requests (POST /v1/completions,
"stream": false) from closed-loop client threads and prints the output
tokens per second, so that a streamed figure can be set beside one whose
client does one read per request.

  bench/http_unary.py --port=8080 --clients=8 --requests=160 \
      --input_len=16 --output_len=192 --range_ratio=0.5 \
      [--exit_confidence=classifier] [--exit_threshold=T]

With --tpot it instead measures the decode time per token of one client:
per round a 1-token request and an --output_len request with the same
prompt length, (t_n - t_1) / (n - 1), which leaves the prefill out.

Standard library only (run with /usr/bin/python3 or any python3). Exit
status: 0 done, 1 a request failed (the daemon's message is printed).
"""

import argparse
import json
import random
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request


def model_name(base):
    with urllib.request.urlopen(base + "/v1/models", timeout=30) as r:
        return json.loads(r.read())["data"][0]["id"]


def complete(base, body, timeout):
    request = urllib.request.Request(
        base + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as r:
        return json.loads(r.read())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True,
                   help="stratad's --http_port")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--input_len", type=int, default=16)
    p.add_argument("--output_len", type=int, default=128)
    p.add_argument("--range_ratio", type=float, default=0.0,
                   help="output lengths uniform in output_len * [1 - r, "
                   "1 + r], as strata-bench's random workload")
    p.add_argument("--min_token_id", type=int, default=300)
    p.add_argument("--max_token_id", type=int, default=1500)
    p.add_argument("--exit_confidence", default=None)
    p.add_argument("--exit_threshold", type=float, default=None)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--timeout_s", type=float, default=300)
    p.add_argument("--tpot", action="store_true",
                   help="one client: decode ms per token, --requests rounds")
    args = p.parse_args()
    if args.clients < 1 or args.requests < 1 or args.output_len < 2:
        sys.exit("--clients and --requests must be >= 1, --output_len >= 2")

    base = "http://%s:%d" % (args.host, args.port)
    rng = random.Random(args.seed)
    model = model_name(base)

    def body(max_tokens):
        b = {"model": model, "max_tokens": max_tokens, "temperature": 0,
             "ignore_eos": True,
             "prompt": [rng.randint(args.min_token_id, args.max_token_id)
                        for _ in range(args.input_len)]}
        if args.exit_confidence is not None:
            b["exit_confidence"] = args.exit_confidence
        if args.exit_threshold is not None:
            b["exit_threshold"] = args.exit_threshold
        return b

    try:
        complete(base, body(2), args.timeout_s)  # warm-up
        if args.tpot:
            tpots = []
            for _ in range(args.requests):
                t0 = time.monotonic()
                complete(base, body(1), args.timeout_s)
                t1 = time.monotonic()
                out = complete(base, body(args.output_len), args.timeout_s)
                tn = time.monotonic() - t1
                n = out["usage"]["completion_tokens"]
                tpots.append((tn - (t1 - t0)) / (n - 1) * 1e3)
                print("decode ms per token: %.3f" % tpots[-1], flush=True)
            print("median decode ms per token: %.3f" %
                  statistics.median(tpots))
            return
        lo = max(1, round(args.output_len * (1 - args.range_ratio)))
        hi = max(lo, round(args.output_len * (1 + args.range_ratio)))
        bodies = [body(rng.randint(lo, hi)) for _ in range(args.requests)]
    except urllib.error.HTTPError as e:
        sys.exit("request failed: HTTP %d: %s" % (e.code, e.read().decode()))

    lock = threading.Lock()
    state = {"next": 0, "tokens": 0, "error": None}

    def client():
        while True:
            with lock:
                if state["next"] >= len(bodies) or state["error"]:
                    return
                b = bodies[state["next"]]
                state["next"] += 1
            try:
                out = complete(base, b, args.timeout_s)
            except (urllib.error.URLError, OSError) as e:
                detail = e.read().decode() if isinstance(
                    e, urllib.error.HTTPError) else str(e)
                with lock:
                    state["error"] = detail
                return
            with lock:
                state["tokens"] += out["usage"]["completion_tokens"]

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    if state["error"]:
        sys.exit("request failed: " + state["error"])
    print("requests: %d, output tokens: %d, %.2f s" %
          (len(bodies), state["tokens"], elapsed))
    print("Output token throughput (tok/s): %.2f" %
          (state["tokens"] / elapsed))


if __name__ == "__main__":
    main()

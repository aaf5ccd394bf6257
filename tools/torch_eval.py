#!/usr/bin/env python3
"""Perplexity of tools/export_llama.py's model in PyTorch on the GPU, under the protocol of
`qconvert eval` (non-overlapping windows of SEQLEN, one window per forward, every position but
the first scored): the framework baseline of bench/cuda_e2e.sh beside ONNX Runtime's CUDA provider.

The model is rebuilt from the same dimensions and seed as the export (the same weights), moved to
the GPU in the export's dtype. Timed per window: the forward, the NLL on the GPU and reading it
back (qconvert eval's work for a window). A first window warms up cuBLAS and is not counted.

Usage: python3 tools/torch_eval.py IDS.npy SEQLEN MAX_WINDOWS [--preset tinyllama-1.1b] [--dtype float32|float16|bfloat16] [--seed S]
Prints one JSON object: {ppl, windows, tokens_scored, seconds, tokens_per_second, torch_version}.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_llama import DTYPES, PRESETS, build_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ids")
    ap.add_argument("seqlen", type=int)
    ap.add_argument("max_windows", type=int)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tinyllama-1.1b")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ids = torch.from_numpy(np.load(args.ids).astype(np.int64).reshape(-1))
    windows = min(ids.shape[0] // args.seqlen, args.max_windows)
    model = build_model(dict(PRESETS[args.preset]), args.dtype, args.seed).cuda()

    def window_nll(w):
        x = ids[w * args.seqlen: (w + 1) * args.seqlen].cuda().view(1, -1)
        logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").double().item()

    with torch.inference_mode():
        window_nll(0)  # warm-up, not timed
        torch.cuda.synchronize()
        nll, t0 = 0.0, time.perf_counter()
        for w in range(windows):
            nll += window_nll(w)
        seconds = time.perf_counter() - t0
    scored = windows * (args.seqlen - 1)
    print(json.dumps({"ppl": float(np.exp(nll / scored)), "windows": windows, "tokens_scored": scored, "seconds": seconds,
                      "tokens_per_second": windows * args.seqlen / seconds, "torch_version": torch.__version__}))


if __name__ == "__main__":
    sys.exit(main())

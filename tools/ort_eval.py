#!/usr/bin/env python3
"""Perplexity with ONNX Runtime's Python package under the protocol of `qconvert eval` (and of
tools/ort_eval.js): non-overlapping windows of SEQLEN, one window per run, every position but the
first scored, ppl = exp(mean NLL). For the GPU machine, where onnxruntime has the CUDA provider.

Only session.run is timed (it includes copying the logits to the host, as `qconvert eval` does);
the scoring runs in numpy, in float64, outside the timer. A first run on the first window warms
the session up (cuDNN/cuBLAS handles, memory arena) and is not counted, as qconvert's session
creation is not either.

Usage: python3 tools/ort_eval.py MODEL.onnx IDS.npy SEQLEN MAX_WINDOWS [--provider cuda|cpu]
Prints one JSON object: {ppl, windows, tokens_scored, seconds, tokens_per_second, provider, ort_version};
ONNX Runtime itself warns on stderr when nodes are not assigned to the CUDA provider.
"""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def feeds_for(session, window):
    """ids; ones for attention_mask; 0..S-1 for position_ids (the binding qconvert uses)."""
    seq = window.shape[0]
    feeds = {}
    for inp in session.get_inputs():
        if "input_ids" in inp.name:
            feeds[inp.name] = window.reshape(1, seq).astype(np.int64)
        elif "attention_mask" in inp.name:
            feeds[inp.name] = np.ones((1, seq), np.int64)
        elif "position_ids" in inp.name:
            feeds[inp.name] = np.arange(seq, dtype=np.int64).reshape(1, seq)
        else:
            raise SystemExit(f"ort_eval: cannot fill input {inp.name}")
    return feeds


def window_nll(logits, window):
    x = logits[0, :-1].astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
    return float((lse - x[np.arange(x.shape[0]), window[1:]]).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("ids")
    ap.add_argument("seqlen", type=int)
    ap.add_argument("max_windows", type=int)
    ap.add_argument("--provider", choices=["cuda", "cpu"], default="cuda")
    args = ap.parse_args()

    ids = np.load(args.ids).astype(np.int64).reshape(-1)
    windows = min(ids.shape[0] // args.seqlen, args.max_windows)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.provider == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    session = ort.InferenceSession(args.model, options, providers=providers)
    if args.provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise SystemExit(f"ort_eval: CUDA provider not available ({session.get_providers()})")
    names = [o.name for o in session.get_outputs()]
    out = "logits" if "logits" in names else names[0]

    session.run([out], feeds_for(session, ids[: args.seqlen]))  # warm-up, not timed
    nll, scored, run_seconds = 0.0, 0, 0.0
    for w in range(windows):
        window = ids[w * args.seqlen: (w + 1) * args.seqlen]
        feeds = feeds_for(session, window)
        t0 = time.perf_counter()
        logits = session.run([out], feeds)[0]
        run_seconds += time.perf_counter() - t0
        nll += window_nll(logits, window)
        scored += args.seqlen - 1
    print(json.dumps({"ppl": float(np.exp(nll / scored)), "windows": windows, "tokens_scored": scored,
                      "seconds": run_seconds, "tokens_per_second": windows * args.seqlen / run_seconds,
                      "provider": session.get_providers()[0], "ort_version": ort.__version__}))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Exports tiny random-weight decoders with KV-cache inputs to ONNX, plus their PyTorch logits.

Generates the fixtures in tests/data/kv/: for each architecture a decoder-with-past export
(inputs input_ids, attention_mask, [position_ids,] past_key_values.N.key/value; outputs logits,
present.N.key/value: the interface of Optimum and ONNX Runtime GenAI exports), the same model
merged Optimum-style (one If node on a `use_cache_branch` input choosing between the no-past and
the with-past graph, initializers shared in the outer graph), token ids, and PyTorch's logits for
a prefill with an empty past and for one decode step with the prefill's past.

Needs torch, transformers, onnx and onnxruntime (the GPU machine has them; nothing runs on the
GPU: CPU float32 keeps the reference deterministic). Every file is checked with ONNX Runtime
against PyTorch before it is written; the max |diff| values go to manifest.json.

Usage: python3 tools/export_kv_fixtures.py OUT_DIR [--archs llama,gpt2,...]
"""
import argparse
import hashlib
import json
import os
import re
import sys
import time
import traceback

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from onnx import TensorProto, helper, numpy_helper

SEED = 1234
BATCH = 2
PREFILL_LEN = 16  # tokens of the stored prefill
# Example shapes used while tracing. All >= 2 and pairwise distinct: torch.export specialises
# sizes 0 and 1 and unifies dims whose example sizes are equal ("duck sizing").
TRACE_PAST, TRACE_SEQ = 3, 5
OPSET_DYNAMO = 18
OPSET_TORCHSCRIPT = 17
VOCAB = 256
MAX_POS = 128

# Archs exported by default (the checked-in fixtures); the others are optional extras.
DEFAULT_ARCHS = ["llama", "gpt2"]


def make_model(arch):
    """Returns (model, uses_position_ids) for a seeded 2-layer decoder of hidden size 64."""
    t = transformers
    common = dict(vocab_size=VOCAB, max_position_embeddings=MAX_POS, num_hidden_layers=2)
    uses_pos = True
    if arch == "llama":  # GQA: 4 query heads share 2 key/value heads
        cfg = t.LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=False, **common)
    elif arch == "mistral":
        cfg = t.MistralConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                              sliding_window=None, tie_word_embeddings=False, **common)
    elif arch == "qwen2":
        cfg = t.Qwen2Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            tie_word_embeddings=False, **common)
    elif arch == "gemma":
        cfg = t.GemmaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=16, **common)
    elif arch == "phi":
        cfg = t.PhiConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, partial_rotary_factor=0.5,
                          **common)
    elif arch == "gpt_neox":
        cfg = t.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, rotary_pct=0.5,
                              tie_word_embeddings=False, **common)
    elif arch == "opt":
        cfg = t.OPTConfig(vocab_size=VOCAB, max_position_embeddings=MAX_POS, num_hidden_layers=2, hidden_size=64,
                          ffn_dim=128, num_attention_heads=4, word_embed_proj_dim=64)
        uses_pos = False
    elif arch == "gpt2":  # Optimum's GPT-2 decoder takes no position_ids: they follow from the past length
        cfg = t.GPT2Config(vocab_size=VOCAB, n_positions=MAX_POS, n_embd=64, n_layer=2, n_head=4, n_inner=128)
        uses_pos = False
    else:
        raise ValueError(f"unknown arch {arch}")
    torch.manual_seed(SEED)
    model = t.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    reinit(model)
    return model, uses_pos


@torch.no_grad()
def reinit(model):
    """Weights of unit-scale activations: HF's std 0.02 gives near-uniform logits of size ~1e-3,
    which would make a 1e-3 tolerance meaningless. Linear weights get std 1/sqrt(fan_in)."""
    gen = torch.Generator().manual_seed(SEED)

    def normal(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    conv1d = getattr(transformers.pytorch_utils, "Conv1D", ())
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            normal(module.weight, module.in_features ** -0.5)
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif conv1d and isinstance(module, conv1d):  # GPT-2: weight is [in, out]
            normal(module.weight, module.weight.shape[0] ** -0.5)
            normal(module.bias, 0.1)
        elif isinstance(module, torch.nn.Embedding):
            normal(module.weight, 0.5)
        elif "norm" in type(module).__name__.lower() or isinstance(module, torch.nn.LayerNorm):
            for name, p in module.named_parameters(recurse=False):
                normal(p, 0.1, 1.0 if name == "weight" and "Gemma" not in type(module).__name__ else 0.0)


def new_cache(config):
    try:
        return transformers.DynamicCache(config=config)
    except TypeError:
        return transformers.DynamicCache()


def layer_kv(cache, i):
    if hasattr(cache, "layers"):
        return cache.layers[i].keys, cache.layers[i].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[i], cache.value_cache[i]
    return cache[i]


class DecoderWrapper(torch.nn.Module):
    """Flat-tensor interface around a HF causal LM: past tensors in, logits and presents out."""

    def __init__(self, model, n_layers, uses_pos, with_past):
        super().__init__()
        self.model, self.n_layers, self.uses_pos, self.with_past = model, n_layers, uses_pos, with_past

    def run(self, input_ids, attention_mask, *rest):
        rest = list(rest)
        position_ids = rest.pop(0) if self.uses_pos else None
        cache = new_cache(self.model.config)
        if self.with_past:
            for i in range(self.n_layers):
                cache.update(rest[2 * i], rest[2 * i + 1], i)
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        out = self.model(**kwargs)
        flat = [out.logits]
        for i in range(self.n_layers):
            flat += list(layer_kv(out.past_key_values, i))
        return tuple(flat)


def input_names(n_layers, uses_pos, with_past):
    names = ["input_ids", "attention_mask"] + (["position_ids"] if uses_pos else [])
    if with_past:
        names += [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    return names


def output_names(n_layers):
    return ["logits"] + [f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]


def make_wrapper(model, n_layers, uses_pos, with_past):
    # torch.export binds dynamic_shapes to forward's parameter names, so forward gets one named
    # parameter per ONNX input instead of *args.
    params = [n.replace(".", "_") for n in input_names(n_layers, uses_pos, with_past)]
    ns = {}
    exec(f"def forward(self, {', '.join(params)}):\n    return self.run({', '.join(params)})\n", ns)
    cls = type("Decoder", (DecoderWrapper,), {"forward": ns["forward"]})
    return cls(model, n_layers, uses_pos, with_past).eval(), params


def optimum_axes(n_layers, uses_pos, with_past):
    """Optimum's dynamic-axis names (TextDecoderOnnxConfig)."""
    total = "past_sequence_length + sequence_length" if with_past else "sequence_length"
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"}, "attention_mask": {0: "batch_size", 1: total},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    if uses_pos:
        axes["position_ids"] = {0: "batch_size", 1: "sequence_length"}
    for i in range(n_layers):
        for kv in ("key", "value"):
            if with_past:
                axes[f"past_key_values.{i}.{kv}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kv}"] = {0: "batch_size", 2: total}
    return axes


def rename_dims(model, axes):
    """Renames the exporter's symbolic dims (s0, s17, ...) on graph inputs/outputs to Optimum's.
    The mapping is read off the graph inputs and applied token by token to every dim_param, so
    expressions like 's3 + s7' on outputs become 'past_sequence_length + sequence_length'."""
    g = model.graph
    mapping = {}
    for vi in g.input:
        for axis, new in axes.get(vi.name, {}).items():
            d = vi.type.tensor_type.shape.dim[axis]
            if d.HasField("dim_param") and d.dim_param not in mapping:
                mapping[d.dim_param] = new

    def fix(d):
        if not d.HasField("dim_param"):
            return
        if d.dim_param in mapping:
            d.dim_param = mapping[d.dim_param]
        else:
            d.dim_param = re.sub(r"[A-Za-z_][A-Za-z0-9_]*", lambda m: mapping.get(m.group(0), m.group(0)), d.dim_param)

    for vi in list(g.input) + list(g.output) + list(g.value_info):
        for d in vi.type.tensor_type.shape.dim:
            fix(d)
    return mapping


def strip_node_metadata(graph):
    """Drops the dynamo exporter's per-node metadata (stack traces, FX node text, class
    hierarchy): about 40% of these tiny files and nothing a runtime reads."""
    for n in graph.node:
        del n.metadata_props[:]
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                strip_node_metadata(a.g)


def export(wrapper, params, args, in_names, out_names, axes, path, log):
    """Exports with the dynamo exporter, falling back to TorchScript. Returns the exporter used."""
    errors = []
    try:
        auto = torch.export.Dim.AUTO
        dyn = {p: {a: auto for a in axes.get(n, {})} or None for p, n in zip(params, in_names)}
        torch.onnx.export(wrapper, tuple(args), path, input_names=in_names, output_names=out_names,
                          dynamic_shapes=dyn, dynamo=True, opset_version=OPSET_DYNAMO, external_data=False,
                          optimize=True)
        return "dynamo"
    except Exception as e:  # noqa: BLE001 - any exporter failure means: try the other one
        errors.append(f"dynamo: {type(e).__name__}: {e}")
        log(f"  dynamo export failed: {type(e).__name__}: {str(e)[:1500]}")
    try:
        torch.onnx.export(wrapper, tuple(args), path, input_names=in_names, output_names=out_names,
                          dynamic_axes={n: axes[n] for n in in_names + out_names if n in axes}, dynamo=False,
                          opset_version=OPSET_TORCHSCRIPT)
        return "torchscript"
    except Exception as e:  # noqa: BLE001
        errors.append(f"torchscript: {type(e).__name__}: {e}")
        log(f"  torchscript export failed: {type(e).__name__}: {str(e)[:1500]}")
    raise RuntimeError("; ".join(errors))


def merge(no_past, with_past):
    """Optimum's merged decoder: If(use_cache_branch) with then = with-past graph, else = no-past
    graph. Subgraphs read the outer graph's inputs and its deduplicated initializers; their own
    values get a prefix so the two branches and the outer scope never share a name."""
    outer_inputs = [vi.name for vi in with_past.graph.input]
    used = set(outer_inputs) | {"use_cache_branch"}
    inits, by_content = [], {}

    def canonical(init):
        arr = numpy_helper.to_array(init)
        key = (init.data_type, tuple(init.dims), hashlib.sha256(arr.tobytes()).hexdigest())
        if key not in by_content:
            name = init.name
            while name in used:
                name += "_"
            t = TensorProto()
            t.CopyFrom(init)
            t.name = name
            inits.append(t)
            used.add(name)
            by_content[key] = name
        return by_content[key]

    def rename_refs(graph, ren):  # nested subgraphs: only outer references change
        for n in graph.node:
            n.input[:] = [ren.get(x, x) for x in n.input]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    rename_refs(a.g, ren)

    def branch(model, prefix, name):
        g = model.graph
        ren = {i.name: canonical(i) for i in g.initializer}
        for n in g.node:
            for o in n.output:
                if o:
                    ren[o] = prefix + o
        nodes = []
        for n in g.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            m.name = prefix + n.name if n.name else ""
            m.input[:] = [ren.get(x, x) if x else x for x in n.input]
            m.output[:] = [ren.get(x, x) if x else x for x in n.output]
            for a in m.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    rename_refs(a.g, ren)
            nodes.append(m)
        outs = []
        for o in g.output:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(o)
            vi.name = ren.get(o.name, o.name)
            if vi.name == o.name or vi.name in outer_inputs:  # a pass-through output needs a node
                vi.name = prefix + "out_" + o.name
                nodes.append(helper.make_node("Identity", [ren.get(o.name, o.name)], [vi.name]))
            outs.append(vi)
        return helper.make_graph(nodes, name, [], outs)

    then_g = branch(with_past, "with_past/", "decoder_with_past")
    else_g = branch(no_past, "no_past/", "decoder_no_past")
    flag = helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])
    node = helper.make_node("If", ["use_cache_branch"], [o.name for o in with_past.graph.output],
                            name="optimum::if", then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph([node], "merged_decoder", list(with_past.graph.input) + [flag],
                              list(with_past.graph.output), initializer=inits)
    opsets = {}
    for m in (with_past, no_past):
        for o in m.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    merged = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                               producer_name="qconvert tools/export_kv_fixtures.py")
    merged.ir_version = max(with_past.ir_version, no_past.ir_version)
    seen = set()
    for m in (with_past, no_past):
        for f in m.functions:
            if (f.domain, f.name) not in seen:
                seen.add((f.domain, f.name))
                merged.functions.append(f)
    return merged


def op_histogram(model):
    hist = {}

    def walk(g):
        for n in g.node:
            key = (n.domain + "." if n.domain else "") + n.op_type
            hist[key] = hist.get(key, 0) + 1
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)

    walk(model.graph)
    return dict(sorted(hist.items()))


def ort_outputs(path, feeds):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def export_arch(arch, out_dir, log):
    model, uses_pos = make_model(arch)
    n_layers = model.config.num_hidden_layers
    rec = {"arch": arch, "class": type(model).__name__, "uses_position_ids": uses_pos,
           "params": sum(p.numel() for p in model.parameters())}
    d = os.path.join(out_dir, arch)
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(SEED)

    # PyTorch references: a prefill of PREFILL_LEN tokens with an empty past, then one decode step.
    ids = rng.integers(0, VOCAB, size=(BATCH, PREFILL_LEN), dtype=np.int64)
    next_ids = rng.integers(0, VOCAB, size=(BATCH, 1), dtype=np.int64)
    pos = np.tile(np.arange(PREFILL_LEN, dtype=np.int64), (BATCH, 1))
    with torch.no_grad():
        kw = dict(attention_mask=torch.ones(BATCH, PREFILL_LEN, dtype=torch.long), use_cache=True)
        if uses_pos:
            kw["position_ids"] = torch.from_numpy(pos)
        out = model(input_ids=torch.from_numpy(ids), **kw)
        logits = out.logits.numpy()
        cache = out.past_key_values
        kv_shape = list(layer_kv(cache, 0)[0].shape)
        kw = dict(attention_mask=torch.ones(BATCH, PREFILL_LEN + 1, dtype=torch.long), past_key_values=cache,
                  use_cache=True)
        if uses_pos:
            kw["position_ids"] = torch.full((BATCH, 1), PREFILL_LEN, dtype=torch.long)
        decode_logits = model(input_ids=torch.from_numpy(next_ids), **kw).logits.numpy()
    rec["kv_shape_after_prefill"] = kv_shape
    rec["logits_abs_max"] = float(np.abs(logits).max())
    np.save(os.path.join(d, "input_ids.npy"), ids)
    np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
    np.save(os.path.join(d, "decode_input_ids.npy"), next_ids)
    np.save(os.path.join(d, "decode_logits.npy"), decode_logits.astype(np.float32))

    # Trace inputs.
    def trace_args(with_past):
        past = TRACE_PAST if with_past else 0
        a = [torch.randint(0, VOCAB, (BATCH, TRACE_SEQ)), torch.ones(BATCH, past + TRACE_SEQ, dtype=torch.long)]
        if uses_pos:
            a.append(torch.arange(past, past + TRACE_SEQ).repeat(BATCH, 1))
        if with_past:
            shape = [BATCH, kv_shape[1], TRACE_PAST, kv_shape[3]]
            a += [torch.randn(shape) for _ in range(2 * n_layers)]
        return a

    paths = {}
    for with_past in (True, False):
        wrapper, params = make_wrapper(model, n_layers, uses_pos, with_past)
        in_n, out_n = input_names(n_layers, uses_pos, with_past), output_names(n_layers)
        axes = optimum_axes(n_layers, uses_pos, with_past)
        path = os.path.join(d, "model.onnx" if with_past else "no_past.onnx")
        t0 = time.time()
        exporter = export(wrapper, params, trace_args(with_past), in_n, out_n, axes, path, log)
        m = onnx.load(path)
        strip_node_metadata(m.graph)
        mapping = rename_dims(m, axes)
        onnx.save(m, path)
        kind = "with_past" if with_past else "no_past"
        rec[f"exporter_{kind}"] = exporter
        rec[f"dim_rename_{kind}"] = mapping
        log(f"  {kind}: {exporter} export in {time.time() - t0:.1f}s, dims {mapping}")
        paths[kind] = path

    wp, nop = onnx.load(paths["with_past"]), onnx.load(paths["no_past"])
    merged = merge(nop, wp)
    try:
        onnx.checker.check_model(merged)
        rec["merged_checker"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded; ORT below is the real test
        rec["merged_checker"] = f"{type(e).__name__}: {e}"[:500]
    merged_path = os.path.join(d, "model_merged.onnx")
    onnx.save(merged, merged_path)
    os.remove(paths["no_past"])  # only the merged file carries the no-past graph onward

    rec["ops_model"] = op_histogram(wp)
    rec["ops_merged"] = op_histogram(merged)
    rec["inputs"] = [(vi.name, vi.type.tensor_type.elem_type,
                      [x.dim_param or x.dim_value for x in vi.type.tensor_type.shape.dim]) for vi in wp.graph.input]
    rec["outputs"] = [(vi.name, vi.type.tensor_type.elem_type,
                       [x.dim_param or x.dim_value for x in vi.type.tensor_type.shape.dim]) for vi in wp.graph.output]
    rec["bytes"] = {f: os.path.getsize(os.path.join(d, f)) for f in sorted(os.listdir(d))}

    # ONNX Runtime against PyTorch: empty past, then the decode step on ORT's own presents.
    empty = np.zeros([BATCH, kv_shape[1], 0, kv_shape[3]], np.float32)
    past_names = [f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")]

    def feeds(step_ids, past, flag=None):
        past_len = past[past_names[0]].shape[2]
        f = {"input_ids": step_ids, "attention_mask": np.ones((BATCH, past_len + step_ids.shape[1]), np.int64)}
        if uses_pos:
            f["position_ids"] = np.tile(np.arange(past_len, past_len + step_ids.shape[1], dtype=np.int64), (BATCH, 1))
        f.update(past)
        if flag is not None:
            f["use_cache_branch"] = np.array([flag])
        return f

    diffs = {}
    for name, path, flags in (("model", os.path.join(d, "model.onnx"), (None, None)),
                              ("merged", merged_path, (False, True))):
        try:
            o = ort_outputs(path, feeds(ids, {n: empty for n in past_names}, flags[0]))
            diffs[f"{name}_prefill"] = max_diff(o["logits"], logits)
            past = {p: o[p.replace("past_key_values", "present")] for p in past_names}
            o2 = ort_outputs(path, feeds(next_ids, past, flags[1]))
            diffs[f"{name}_decode"] = max_diff(o2["logits"], decode_logits)
        except Exception as e:  # noqa: BLE001
            diffs[f"{name}_error"] = f"{type(e).__name__}: {e}"[:1000]
    rec["ort_vs_torch_max_abs_diff"] = diffs
    log(f"  ORT vs PyTorch max |diff|: {diffs}")
    log(f"  bytes: {rec['bytes']}")
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--archs", default=",".join(DEFAULT_ARCHS))
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    def log(msg):
        print(msg, flush=True)

    manifest = {"command": "python3 tools/export_kv_fixtures.py " + " ".join(sys.argv[1:]),
                "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                             "transformers": transformers.__version__, "onnx": onnx.__version__,
                             "onnxruntime": ort.__version__, "numpy": np.__version__},
                "seed": SEED, "batch": BATCH, "prefill_len": PREFILL_LEN, "fixtures": {}}
    log(f"versions: {manifest['versions']}")
    torch.set_num_threads(4)
    for arch in args.archs.split(","):
        log(f"== {arch}")
        t0 = time.time()
        try:
            manifest["fixtures"][arch] = export_arch(arch, args.out_dir, log)
        except Exception as e:  # noqa: BLE001 - one arch failing must not lose the others
            traceback.print_exc()
            manifest["fixtures"][arch] = {"error": f"{type(e).__name__}: {e}"[:3000]}
        log(f"  {arch}: {time.time() - t0:.1f}s")
        with open(os.path.join(args.out_dir, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

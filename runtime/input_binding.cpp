// Input binding for prefill runs of decoder exports (plain, Optimum-style, KV-cache).
#include "runtime/input_binding.h"

#include <algorithm>

namespace qc {
namespace {

bool Contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

StatusOr<Tensor> IntTensor(const ValueInfo& info, const Shape& shape, const std::function<int64_t(int64_t b, int64_t s)>& value) {
  if (info.dtype != DType::kInt64 && info.dtype != DType::kInt32 && info.dtype != DType::kUndefined)
    return InvalidArgument("input '" + info.name + "' has dtype " + DTypeName(info.dtype) + "; expected int32 or int64");
  if (info.has_shape && info.shape.size() != shape.size())
    return InvalidArgument("input '" + info.name + "' has rank " + std::to_string(info.shape.size()) + "; expected rank " + std::to_string(shape.size()));
  const DType dtype = info.dtype == DType::kInt32 ? DType::kInt32 : DType::kInt64;
  Tensor t(dtype, shape);
  const int64_t batch = shape[0], seq = shape.size() > 1 ? shape[1] : 1;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s) {
      int64_t v = value(b, s);
      if (dtype == DType::kInt32) t.mutable_data<int32_t>()[b * seq + s] = static_cast<int32_t>(v);
      else t.mutable_data<int64_t>()[b * seq + s] = v;
    }
  return t;
}

// An empty past: the sequence axis has length 0, the other axes come from the declared shape.
// The sequence axis is the one symbolic axis after the batch axis, whatever its name: Optimum
// calls it "past_sequence_length", a torch.onnx dynamo export without named dims "s17". Only when
// several axes are symbolic does the name decide (a "seq"/"past"/"len" one), and the others must
// come from --input since neither the file nor its shape says their size.
StatusOr<Tensor> EmptyPast(const ValueInfo& info, int64_t batch) {
  if (!info.has_shape || info.shape.empty())
    return InvalidArgument("input '" + info.name + "' (KV cache) declares no shape; cannot build an empty past");
  auto is_symbolic = [](const Dim& dim) { return dim.value < 0 || !dim.param.empty(); };
  auto named_like_seq = [](const Dim& dim) {
    return dim.param.empty() || Contains(dim.param, "seq") || Contains(dim.param, "past") || Contains(dim.param, "len");
  };
  std::vector<int> symbolic;
  for (size_t d = 1; d < info.shape.size(); ++d)
    if (is_symbolic(info.shape[d])) symbolic.push_back(static_cast<int>(d));
  if (symbolic.empty()) return InvalidArgument("input '" + info.name + "' (KV cache) has no symbolic sequence axis");
  int seq_axis = symbolic.size() == 1 ? symbolic[0] : -1, named = 0;
  if (symbolic.size() > 1) {
    for (int d : symbolic) {
      if (!named_like_seq(info.shape[d])) continue;
      seq_axis = d;
      ++named;
    }
  }
  if (symbolic.size() > 1 && named != 1)
    return InvalidArgument("input '" + info.name + "' (KV cache) has several symbolic dimensions; cannot tell the sequence axis");
  Shape shape;
  for (size_t d = 0; d < info.shape.size(); ++d) {
    const Dim& dim = info.shape[d];
    if (d == 0) {
      shape.push_back(batch);
    } else if (static_cast<int>(d) == seq_axis) {
      shape.push_back(0);
    } else if (!is_symbolic(dim)) {
      shape.push_back(dim.value);
    } else {
      return InvalidArgument("input '" + info.name + "' (KV cache) dimension " + std::to_string(d) + " is symbolic ('" + dim.param +
                             "'); pass it with --input " + info.name + "=FILE.npy");
    }
  }
  DType dtype = info.dtype == DType::kUndefined ? DType::kFloat32 : info.dtype;
  return Tensor(dtype, shape);
}

}  // namespace

StatusOr<NamedTensors> BindInputs(const Session& session, const Tensor& input_ids, const NamedTensors& overrides) {
  if (input_ids.rank() != 2 || (input_ids.dtype() != DType::kInt64 && input_ids.dtype() != DType::kInt32))
    return InvalidArgument("input ids must be int32/int64 of shape [batch, seq], got " + DTypeName(input_ids.dtype()) + " " +
                           ShapeToString(input_ids.shape()));
  const int64_t batch = input_ids.dim(0), seq = input_ids.dim(1);
  const std::vector<int64_t> ids = input_ids.ToInt64s();
  NamedTensors feeds;
  bool bound_ids = false;
  for (const ValueInfo& info : session.inputs()) {
    auto over = std::find_if(overrides.begin(), overrides.end(), [&](const auto& kv) { return kv.first == info.name; });
    if (over != overrides.end()) {
      feeds.push_back(*over);
      bound_ids |= Contains(info.name, "input_ids");
      continue;
    }
    const std::string& n = info.name;
    StatusOr<Tensor> t = InvalidArgument("");
    if (n == "input_ids" || (!bound_ids && Contains(n, "input_ids")) || (!bound_ids && session.inputs().size() == 1)) {
      t = IntTensor(info, {batch, seq}, [&](int64_t b, int64_t s) { return ids[b * seq + s]; });
      bound_ids = true;
    } else if (Contains(n, "attention_mask")) {
      t = IntTensor(info, {batch, seq}, [](int64_t, int64_t) { return int64_t{1}; });
    } else if (Contains(n, "position_ids")) {
      t = IntTensor(info, {batch, seq}, [](int64_t, int64_t s) { return s; });
    } else if (Contains(n, "past_key_values") || Contains(n, "past_key") || Contains(n, "past_value") || Contains(n, ".past")) {
      t = EmptyPast(info, batch);
    } else if (Contains(n, "use_cache_branch")) {
      Tensor flag(DType::kBool, {1});
      t = flag;  // false: no cache on a prefill
    } else {
      return InvalidArgument("cannot fill model input '" + n + "'; pass it with --input " + n + "=FILE.npy");
    }
    if (!t.ok()) return t.status();
    feeds.emplace_back(n, *t);
  }
  for (const auto& [name, tensor] : overrides) {
    bool known = std::any_of(session.inputs().begin(), session.inputs().end(), [&](const ValueInfo& v) { return v.name == name; });
    if (!known) return InvalidArgument("--input " + name + ": the model has no such input");
  }
  if (!bound_ids) return InvalidArgument("the model has no 'input_ids' input");
  return feeds;
}

int LogitsOutputIndex(const Session& session) {
  const auto& outs = session.outputs();
  for (size_t i = 0; i < outs.size(); ++i)
    if (outs[i].name == "logits") return static_cast<int>(i);
  return 0;
}

}  // namespace qc

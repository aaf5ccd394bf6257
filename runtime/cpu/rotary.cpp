// com.microsoft.RotaryEmbedding: rotates (pairs of) head dimensions by position-dependent angles
// read from cos/sin caches, following ONNX Runtime's CPU kernel.
#include "runtime/cpu/rotary.h"

#include <string>

#include "runtime/cpu/dispatch.h"

namespace qc {

StatusOr<RotaryArgs> ParseRotary(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(4, 4));
  for (int i = 1; i < 4; ++i)
    if (!ctx.has_input(i)) return ctx.Error("inputs position_ids, cos_cache and sin_cache are required");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  const Tensor& pos = ctx.input(1);
  const Tensor& cos = ctx.input(2);
  const Tensor& sin = ctx.input(3);
  if (!IsFloatingPoint(x.dtype())) return ctx.UnsupportedDType(x.dtype());
  if (cos.dtype() != x.dtype() || sin.dtype() != x.dtype())
    return ctx.Error("cos_cache and sin_cache must have the input's dtype " + DTypeName(x.dtype()));
  if (pos.dtype() != DType::kInt64) return ctx.Error("position_ids must be int64, got " + DTypeName(pos.dtype()));
  if (x.rank() != 3 && x.rank() != 4)
    return ctx.Error("input must be 3-D [batch, seq, hidden] or 4-D [batch, heads, seq, head_size], got " +
                     ShapeToString(x.shape()));
  if (cos.rank() != 2 || cos.shape() != sin.shape())
    return ctx.Error("cos_cache and sin_cache must be 2-D of equal shape, got " + ShapeToString(cos.shape()) +
                     " and " + ShapeToString(sin.shape()));
  RotaryArgs r;
  r.interleaved = ctx.node.GetInt("interleaved", 0) != 0;
  const int64_t num_heads_attr = ctx.node.GetInt("num_heads", 0);
  const int64_t rotary_attr = ctx.node.GetInt("rotary_embedding_dim", 0);
  if (rotary_attr < 0 || num_heads_attr < 0) return ctx.Error("num_heads and rotary_embedding_dim must be >= 0");
  if (rotary_attr > 0 && num_heads_attr == 0)
    return ctx.Error("num_heads must be provided if rotary_embedding_dim is specified");
  r.batch = x.dim(0);
  int64_t hidden;
  if (x.rank() == 4) {
    r.seq = x.dim(2);
    hidden = x.dim(1) * x.dim(3);
  } else {
    r.seq = x.dim(1);
    hidden = x.dim(2);
  }
  r.max_seq = cos.dim(0);
  if (rotary_attr == 0) {
    r.head_size = cos.dim(1) * 2;
  } else {
    if (hidden % num_heads_attr != 0)
      return ctx.Error("hidden size " + std::to_string(hidden) + " is not a multiple of num_heads");
    r.head_size = hidden / num_heads_attr;
  }
  r.rotary_dim = rotary_attr > 0 ? rotary_attr : r.head_size;
  if (r.head_size <= 0 || hidden % r.head_size != 0)
    return ctx.Error("hidden size " + std::to_string(hidden) + " is not a multiple of head size " +
                     std::to_string(r.head_size));
  if (r.rotary_dim > r.head_size || r.rotary_dim % 2 != 0)
    return ctx.Error("rotary_embedding_dim " + std::to_string(r.rotary_dim) + " must be even and <= head size " +
                     std::to_string(r.head_size));
  if (cos.dim(1) != r.rotary_dim / 2)
    return ctx.Error("cos_cache dimension 1 is " + std::to_string(cos.dim(1)) + ", expected rotary_dim / 2 = " +
                     std::to_string(r.rotary_dim / 2));
  r.heads = num_heads_attr > 0 ? num_heads_attr : hidden / r.head_size;
  if (x.rank() == 4 && (x.dim(1) != r.heads || x.dim(3) != r.head_size))
    return ctx.Error("4-D input " + ShapeToString(x.shape()) + " does not match num_heads " +
                     std::to_string(r.heads) + " and head size " + std::to_string(r.head_size));
  if (pos.numel() == 1 && pos.rank() <= 1) {
    r.per_token_positions = false;
  } else if (pos.rank() == 2 && pos.dim(0) == r.batch && pos.dim(1) == r.seq) {
    r.per_token_positions = true;
  } else {
    return ctx.Error("position_ids must have 1 element or shape [batch, seq], got " + ShapeToString(pos.shape()));
  }
  // Every position must index the caches.
  const int64_t* pp = pos.data<int64_t>();
  for (int64_t i = 0; i < pos.numel() && r.seq > 0; ++i) {
    const bool ok = pp[i] >= 0 && pp[i] < r.max_seq && (r.per_token_positions || r.seq <= r.max_seq - pp[i]);
    if (!ok)
      return ctx.Error("position id " + std::to_string(pp[i]) + (r.per_token_positions ? "" : " + sequence length") +
                       " outside the cos/sin cache of " + std::to_string(r.max_seq) + " positions");
  }
  if (x.rank() == 4) {
    r.seq_stride = r.head_size;
    r.head_stride = r.seq * r.seq_stride;
    r.batch_stride = r.heads * r.head_stride;
  } else {
    r.head_stride = r.head_size;
    r.seq_stride = r.heads * r.head_stride;
    r.batch_stride = r.seq * r.seq_stride;
  }
  return r;
}

namespace {

template <typename T>
void RotaryImpl(const RotaryArgs& r, const T* x, const int64_t* pos, const T* cos_cache, const T* sin_cache, T* y,
                bool parallel) {
  const int64_t half = r.rotary_dim / 2;
  const int64_t total = r.batch * r.seq * r.heads;
#pragma omp parallel for schedule(static) if (parallel && total * r.head_size > 65536)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t b = t / (r.seq * r.heads);
    const int64_t s = (t / r.heads) % r.seq;
    const int64_t h = t % r.heads;
    const int64_t off = b * r.batch_stride + s * r.seq_stride + h * r.head_stride;
    const T* xi = x + off;
    T* yo = y + off;
    const int64_t p = r.per_token_positions ? pos[b * r.seq + s] : pos[0] + s;
    const T* c = cos_cache + p * half;
    const T* sn = sin_cache + p * half;
    for (int64_t i = 0; i < r.rotary_dim; ++i) {
      int64_t ci, j;
      T sign;
      if (r.interleaved) {
        // Pairs (2i, 2i+1) rotate together.
        ci = i / 2;
        sign = (i % 2 == 0) ? T(-1) : T(1);
        j = (i % 2 == 0) ? i + 1 : i - 1;
      } else {
        // The first half rotates with the second half.
        ci = i % half;
        sign = (i < half) ? T(-1) : T(1);
        j = (i + half) % r.rotary_dim;
      }
      yo[i] = xi[i] * c[ci] + sign * xi[j] * sn[ci];
    }
    // Dimensions beyond rotary_embedding_dim pass through unchanged.
    for (int64_t i = r.rotary_dim; i < r.head_size; ++i) yo[i] = xi[i];
  }
}

Status RunRotary(KernelContext& ctx, bool parallel) {
  QC_ASSIGN_OR_RETURN(RotaryArgs r, ParseRotary(ctx));
  const Tensor& x = ctx.input(0);
  // float16/bfloat16 run widened (runtime/cpu/half_widening.h); ParseRotary accepts them for the GPU.
  if (x.dtype() != DType::kFloat32 && x.dtype() != DType::kFloat64) return ctx.UnsupportedDType(x.dtype());
  Tensor y(x.dtype(), x.shape());
  DispatchFloat(x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    RotaryImpl<T>(r, x.data<T>(), ctx.input(1).data<int64_t>(), ctx.input(2).data<T>(), ctx.input(3).data<T>(),
                  y.mutable_data<T>(), parallel);
  });
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace

Status RotaryEmbeddingRef(KernelContext& ctx) { return RunRotary(ctx, false); }
Status RotaryEmbeddingFast(KernelContext& ctx) { return RunRotary(ctx, true); }

}  // namespace qc

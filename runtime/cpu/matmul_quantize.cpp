// Linear (de)quantisation of matmul operands: QuantizeLinear, DequantizeLinear (per-tensor,
// per-axis, blocked; 8/16-bit and packed 4-bit), DynamicQuantizeLinear and MatMulInteger.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/gemm_core.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/matmul_shape.h"

namespace qc {
namespace {

bool IsQuantType(DType t) {
  return t == DType::kInt8 || t == DType::kUInt8 || t == DType::kInt16 || t == DType::kUInt16 ||
         t == DType::kInt4 || t == DType::kUInt4 || t == DType::kInt32;
}

// Range of a quantised type.
void QuantRange(DType t, int64_t* lo, int64_t* hi) {
  switch (t) {
    case DType::kInt8: *lo = -128; *hi = 127; break;
    case DType::kUInt8: *lo = 0; *hi = 255; break;
    case DType::kInt16: *lo = -32768; *hi = 32767; break;
    case DType::kUInt16: *lo = 0; *hi = 65535; break;
    case DType::kInt4: *lo = -8; *hi = 7; break;
    case DType::kUInt4: *lo = 0; *hi = 15; break;
    default: *lo = std::numeric_limits<int32_t>::min(); *hi = std::numeric_limits<int32_t>::max(); break;
  }
}

// Element i of a quantised tensor as int32 (4-bit types: two per byte, low nibble first).
int32_t LoadQ(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kInt8: return static_cast<const int8_t*>(p)[i];
    case DType::kUInt8: return static_cast<const uint8_t*>(p)[i];
    case DType::kInt16: return static_cast<const int16_t*>(p)[i];
    case DType::kUInt16: return static_cast<const uint16_t*>(p)[i];
    case DType::kInt32: return static_cast<const int32_t*>(p)[i];
    case DType::kInt4:
    case DType::kUInt4: {
      const uint8_t byte = static_cast<const uint8_t*>(p)[i / 2];
      int32_t v = (i % 2 == 0) ? (byte & 0xF) : (byte >> 4);
      if (t == DType::kInt4 && v >= 8) v -= 16;
      return v;
    }
    default: return 0;
  }
}

void StoreQ(DType t, void* p, int64_t i, int32_t v) {
  switch (t) {
    case DType::kInt8: static_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case DType::kUInt8: static_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case DType::kInt16: static_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case DType::kUInt16: static_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(v); break;
    case DType::kInt32: static_cast<int32_t*>(p)[i] = v; break;
    case DType::kInt4:
    case DType::kUInt4: {
      uint8_t& byte = static_cast<uint8_t*>(p)[i / 2];
      const uint8_t nib = static_cast<uint8_t>(v) & 0xF;
      byte = (i % 2 == 0) ? static_cast<uint8_t>((byte & 0xF0) | nib) : static_cast<uint8_t>((byte & 0x0F) | (nib << 4));
      break;
    }
    default: break;
  }
}

// Maps an element index of x to the index of its scale / zero point.
struct QuantParamIndex {
  enum Mode { kTensor, kAxis, kBlock } mode = kTensor;
  int64_t inner = 1, dim = 1, block = 1, nblk = 1;
  int64_t operator()(int64_t e) const {
    if (mode == kTensor) return 0;
    const int64_t a = (e / inner) % dim;
    if (mode == kAxis) return a;
    const int64_t outer = e / (inner * dim);
    return (outer * nblk + a / block) * inner + e % inner;
  }
};

// Validates scale (and zero point) against x for the per-tensor / per-axis / blocked layouts.
StatusOr<QuantParamIndex> PlanQuantParams(const KernelContext& ctx, const Tensor& x, const Tensor& scale,
                                          const Tensor* zp) {
  if (zp && zp->shape() != scale.shape())
    return ctx.Error("zero point shape " + ShapeToString(zp->shape()) + " differs from scale shape " +
                     ShapeToString(scale.shape()));
  QuantParamIndex q;
  const int64_t block_size = ctx.node.GetInt("block_size", 0);
  if (block_size < 0) return ctx.Error("block_size must be >= 0");
  if (scale.numel() == 1 && scale.rank() <= 1 && block_size == 0) return q;
  const int64_t rank = x.rank();
  int64_t axis = ctx.node.GetInt("axis", 1);
  if (axis < -rank || axis >= rank)
    return ctx.Error("axis " + std::to_string(axis) + " out of range for input of shape " + ShapeToString(x.shape()));
  if (axis < 0) axis += rank;
  q.dim = x.dim(axis);
  for (int64_t d = axis + 1; d < rank; ++d) q.inner *= x.dim(d);
  if (block_size == 0) {
    if (scale.rank() != 1 || scale.dim(0) != q.dim)
      return ctx.Error("per-axis scale must be 1-D of size " + std::to_string(q.dim) + " (axis " +
                       std::to_string(axis) + "), got " + ShapeToString(scale.shape()));
    q.mode = QuantParamIndex::kAxis;
    return q;
  }
  q.mode = QuantParamIndex::kBlock;
  q.block = block_size;
  q.nblk = (q.dim + block_size - 1) / block_size;
  Shape expect = x.shape();
  expect[axis] = q.nblk;
  if (scale.shape() != expect)
    return ctx.Error("blocked scale must have shape " + ShapeToString(expect) + " for block_size " +
                     std::to_string(block_size) + ", got " + ShapeToString(scale.shape()));
  return q;
}

// Values of a float-like tensor as float.
std::vector<float> FloatsOf(const Tensor& t) { return t.ToFloats(); }

}  // namespace

Status QuantizeLinearRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 3));
  if (!ctx.has_input(1)) return ctx.Error("input y_scale is missing");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const Tensor* zp = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  if (!IsFloatingPoint(x.dtype()) && x.dtype() != DType::kInt32) return ctx.UnsupportedDType(x.dtype());
  if (!IsFloatingPoint(scale.dtype())) return ctx.Error("y_scale must be floating point, got " + DTypeName(scale.dtype()));
  DType out_type = DType::kUInt8;
  const int64_t output_dtype = ctx.node.GetInt("output_dtype", 0);
  if (output_dtype != 0) out_type = static_cast<DType>(output_dtype);
  if (zp) {
    if (output_dtype != 0 && zp->dtype() != out_type)
      return ctx.Error("output_dtype " + DTypeName(out_type) + " differs from y_zero_point dtype " +
                       DTypeName(zp->dtype()));
    out_type = zp->dtype();
  }
  if (!IsQuantType(out_type) || out_type == DType::kInt32)
    return Unimplemented(ctx.node.Describe() + ": unsupported quantised output type " + DTypeName(out_type));
  QC_ASSIGN_OR_RETURN(QuantParamIndex qi, PlanQuantParams(ctx, x, scale, zp));
  int64_t lo, hi;
  QuantRange(out_type, &lo, &hi);
  const std::vector<float> xs = FloatsOf(x);
  const std::vector<float> ss = FloatsOf(scale);
  Tensor y(out_type, x.shape());
  void* yp = y.mutable_raw();
  const void* zpp = zp ? zp->raw() : nullptr;
  for (int64_t e = 0; e < x.numel(); ++e) {
    const int64_t p = qi(e);
    const float q = std::nearbyint(xs[e] / ss[p]);  // default rounding mode: half to even
    const float z = zp ? static_cast<float>(LoadQ(out_type, zpp, p)) : 0.0f;
    float v = q + z;
    v = std::isnan(v) ? 0.0f : std::min(std::max(v, static_cast<float>(lo)), static_cast<float>(hi));
    StoreQ(out_type, yp, e, static_cast<int32_t>(v));
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status DequantizeLinearRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 3));
  if (!ctx.has_input(1)) return ctx.Error("input x_scale is missing");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& x = ctx.input(0);
  const Tensor& scale = ctx.input(1);
  const Tensor* zp = ctx.has_input(2) ? &ctx.input(2) : nullptr;
  if (!IsQuantType(x.dtype())) return ctx.UnsupportedDType(x.dtype());
  if (!IsComputeFloat(scale.dtype()))
    return ctx.Error("x_scale must be float32/float16/bfloat16, got " + DTypeName(scale.dtype()));
  if (zp && zp->dtype() != x.dtype())
    return ctx.Error("x_zero_point dtype " + DTypeName(zp->dtype()) + " differs from x dtype " + DTypeName(x.dtype()));
  QC_ASSIGN_OR_RETURN(QuantParamIndex qi, PlanQuantParams(ctx, x, scale, zp));
  if (zp && x.dtype() == DType::kInt32)
    for (int64_t i = 0; i < zp->numel(); ++i)
      if (LoadQ(DType::kInt32, zp->raw(), i) != 0) return ctx.Error("int32 input requires a zero point of 0");
  const std::vector<float> ss = FloatsOf(scale);
  Tensor y(scale.dtype(), x.shape());
  const int64_t n = x.numel();
  const DType xt = x.dtype();
  const void* xp = x.raw();
  const void* zpp = zp ? zp->raw() : nullptr;
  auto value = [&](int64_t e) {
    const int64_t p = qi(e);
    const int32_t z = zp ? LoadQ(xt, zpp, p) : 0;
    // int32 inputs may span the full range: subtract in 64 bits.
    return static_cast<float>(static_cast<int64_t>(LoadQ(xt, xp, e)) - z) * ss[p];
  };
  if (scale.dtype() == DType::kFloat32) {
    float* yp = y.mutable_data<float>();
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t e = 0; e < n; ++e) yp[e] = value(e);
  } else {
    uint16_t* yp = static_cast<uint16_t*>(y.mutable_raw());
    const bool half = scale.dtype() == DType::kFloat16;
    for (int64_t e = 0; e < n; ++e) yp[e] = half ? FloatToHalf(value(e)) : FloatToBFloat16(value(e));
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

Status DynamicQuantizeLinearRef(KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(1, 1));
  if (ctx.num_outputs() < 3) return ctx.Error("expected 3 outputs (y, y_scale, y_zero_point)");
  const Tensor& x = ctx.input(0);
  if (x.dtype() != DType::kFloat32) return ctx.UnsupportedDType(x.dtype());
  const float* xp = x.data<float>();
  const int64_t n = x.numel();
  // The range always includes 0 so that 0 is exactly representable.
  float mn = 0.0f, mx = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    mn = std::min(mn, xp[i]);
    mx = std::max(mx, xp[i]);
  }
  constexpr float kQmin = 0.0f, kQmax = 255.0f;
  // Like ONNX Runtime, an all-zero input gets scale 1 rather than dividing by zero.
  const float scale = mx == mn ? 1.0f : (mx - mn) / (kQmax - kQmin);
  const float zp = std::nearbyint(std::min(kQmax, std::max(kQmin, kQmin - mn / scale)));
  Tensor y(DType::kUInt8, x.shape());
  uint8_t* yp = y.mutable_data<uint8_t>();
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(xp[i] / scale) + zp;
    v = std::isnan(v) ? 0.0f : std::min(kQmax, std::max(kQmin, v));
    yp[i] = static_cast<uint8_t>(v);
  }
  ctx.outputs[0] = std::move(y);
  ctx.outputs[1] = Tensor::Scalar<float>(scale);
  ctx.outputs[2] = Tensor::Scalar<uint8_t>(static_cast<uint8_t>(zp));
  return Status::Ok();
}

namespace {

struct MatMulIntegerArgs {
  MatMulPlan plan;
  std::vector<int32_t> a_zp;  // size 1 (per tensor) or m (per row)
  std::vector<int32_t> b_zp;  // size 1 (per tensor) or n (per column)
};

StatusOr<MatMulIntegerArgs> ParseMatMulInteger(const KernelContext& ctx) {
  QC_RETURN_IF_ERROR(ctx.ExpectInputs(2, 4));
  if (!ctx.has_input(1)) return ctx.Error("input B is missing");
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  for (const Tensor* t : {&a, &b})
    if (t->dtype() != DType::kInt8 && t->dtype() != DType::kUInt8)
      return ctx.Error("A and B must be int8 or uint8, got " + DTypeName(t->dtype()));
  MatMulIntegerArgs r;
  QC_ASSIGN_OR_RETURN(r.plan, PlanMatMul(ctx, a.shape(), b.shape()));
  auto zero_point = [&](int index, const Tensor& of, int64_t per_len, const char* what,
                        std::vector<int32_t>* out) -> Status {
    if (!ctx.has_input(index)) {
      out->assign(1, 0);
      return Status::Ok();
    }
    const Tensor& z = ctx.input(index);
    if (z.dtype() != of.dtype())
      return ctx.Error(std::string(what) + " dtype " + DTypeName(z.dtype()) + " differs from its operand's");
    const bool scalar = z.numel() == 1 && z.rank() <= 1;
    if (!scalar && !(z.rank() == 1 && z.dim(0) == per_len))
      return ctx.Error(std::string(what) + " must be a scalar or 1-D of size " + std::to_string(per_len) + ", got " +
                       ShapeToString(z.shape()));
    out->resize(z.numel());
    for (int64_t i = 0; i < z.numel(); ++i) (*out)[i] = LoadQ(z.dtype(), z.raw(), i);
    return Status::Ok();
  };
  QC_RETURN_IF_ERROR(zero_point(2, a, r.plan.m, "a_zero_point", &r.a_zp));
  QC_RETURN_IF_ERROR(zero_point(3, b, r.plan.n, "b_zero_point", &r.b_zp));
  return r;
}

}  // namespace

Status MatMulIntegerRef(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(MatMulIntegerArgs r, ParseMatMulInteger(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const MatMulPlan& p = r.plan;
  Tensor y(DType::kInt32, p.out_shape);
  int32_t* yp = y.mutable_data<int32_t>();
  for (int64_t t = 0; t < p.batch(); ++t)
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) {
        const int32_t az = r.a_zp[r.a_zp.size() == 1 ? 0 : i];
        const int32_t bz = r.b_zp[r.b_zp.size() == 1 ? 0 : j];
        int64_t s = 0;
        for (int64_t q = 0; q < p.k; ++q)
          s += static_cast<int64_t>(LoadQ(a.dtype(), a.raw(), p.a_offsets[t] + i * p.k + q) - az) *
               (LoadQ(b.dtype(), b.raw(), p.b_offsets[t] + q * p.n + j) - bz);
        yp[(t * p.m + i) * p.n + j] = static_cast<int32_t>(s);
      }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

namespace {

// Writes src[e] - zero_point as float and returns max |src[e] - zero_point|. The zero point of
// element e is zp[0] (per tensor) or zp[(e / inner) % zp.size()]: A's zero point is per row
// (inner = K), B's per column (inner = 1).
template <typename T>
int32_t ShiftToFloat(const T* src, int64_t count, const std::vector<int32_t>& zp, int64_t inner, float* dst) {
  const int64_t nz = static_cast<int64_t>(zp.size());
  int32_t max_abs = 0;
#pragma omp parallel for schedule(static) reduction(max : max_abs) if (count > 65536)
  for (int64_t e = 0; e < count; ++e) {
    const int32_t v = static_cast<int32_t>(src[e]) - zp[nz == 1 ? 0 : (e / inner) % nz];
    dst[e] = static_cast<float>(v);
    max_abs = std::max(max_abs, v < 0 ? -v : v);
  }
  return max_abs;
}

int32_t ShiftQuantToFloat(const Tensor& t, const std::vector<int32_t>& zp, int64_t inner, float* dst) {
  if (t.dtype() == DType::kInt8) return ShiftToFloat(t.data<int8_t>(), t.numel(), zp, inner, dst);
  return ShiftToFloat(t.data<uint8_t>(), t.numel(), zp, inner, dst);
}

}  // namespace

// Fast: the zero-point-shifted operands are integers of magnitude <= 255, exact in float32, and
// a float32 GEMM is exact as long as every partial sum it forms is an integer of magnitude <=
// 2^24 (float32's contiguous-integer range): then every add and FMA is exact whatever the
// summation order, blocking or vector width. That holds for any K-chunk of
// c <= 2^24 / (max|a| * max|b|) terms (1040 for int8 codes in [-127, 127], 258 for raw uint8), so
// K is split into such chunks, each one float32 GEMM, and the chunks are summed in int64. The
// result is bit-identical to MatMulIntegerRef.
Status MatMulIntegerFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(MatMulIntegerArgs r, ParseMatMulInteger(ctx));
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  const MatMulPlan& p = r.plan;
  const int64_t m = p.m, n = p.n, k = p.k;
  Tensor y = Tensor::Uninitialized(DType::kInt32, p.out_shape);
  int32_t* yp = y.mutable_data<int32_t>();
  const int64_t out_count = p.batch() * m * n;
  if (k == 0 || out_count == 0) {
    std::fill(yp, yp + out_count, 0);
    ctx.outputs[0] = std::move(y);
    return Status::Ok();
  }
  // Scratch operands left uninitialised: every element is written before it is read.
  std::unique_ptr<float[]> af(new float[a.numel()]), bf(new float[b.numel()]);
  const int64_t max_a = ShiftQuantToFloat(a, r.a_zp, k, af.get());
  const int64_t max_b = ShiftQuantToFloat(b, r.b_zp, 1, bf.get());
  constexpr int64_t kExactFloatInteger = int64_t{1} << 24;
  const int64_t chunk = max_a * max_b == 0 ? k : std::max<int64_t>(1, kExactFloatInteger / (max_a * max_b));
  // A's matrices are consecutive when B is shared: one [batch * m, k] x [k, n] product.
  const int64_t products = p.b_shared ? 1 : p.batch();
  const int64_t rows = p.b_shared ? p.batch() * m : m;
  const int64_t count = rows * n;
  std::unique_ptr<float[]> part(chunk >= k ? nullptr : new float[count]);
  std::unique_ptr<int64_t[]> sum(chunk >= k ? nullptr : new int64_t[count]);
  for (int64_t t = 0; t < products; ++t) {
    const float* ap = af.get() + p.a_offsets[t];
    const float* bp = bf.get() + p.b_offsets[t];
    int32_t* out = yp + t * count;
    if (chunk >= k) {
      // One product, written as float into the int32 output's own storage (both 4 bytes) and
      // converted in place; memcpy keeps the type punning well defined.
      static_assert(sizeof(float) == sizeof(int32_t));
      float* out_f = reinterpret_cast<float*>(static_cast<void*>(out));
      GemmF32(false, false, rows, n, k, 1.0f, ap, k, bp, n, 0.0f, out_f, n, /*threaded=*/true);
#pragma omp parallel for schedule(static) if (count > 65536)
      for (int64_t i = 0; i < count; ++i) {
        float v;
        std::memcpy(&v, out + i, sizeof(v));
        const int32_t q = static_cast<int32_t>(v);
        std::memcpy(out + i, &q, sizeof(q));
      }
      continue;
    }
    std::fill(sum.get(), sum.get() + count, 0);
    for (int64_t k0 = 0; k0 < k; k0 += chunk) {
      const int64_t kc = std::min(chunk, k - k0);
      GemmF32(false, false, rows, n, kc, 1.0f, ap + k0, k, bp + k0 * n, n, 0.0f, part.get(), n, /*threaded=*/true);
#pragma omp parallel for schedule(static) if (count > 65536)
      for (int64_t i = 0; i < count; ++i) sum[i] += static_cast<int64_t>(part[i]);
    }
    // Wraps like the reference when the exact sum leaves int32 (K beyond ~130000 int8 terms).
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<int32_t>(sum[i]);
  }
  ctx.outputs[0] = std::move(y);
  return Status::Ok();
}

}  // namespace qc

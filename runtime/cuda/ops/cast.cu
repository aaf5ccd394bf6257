// Cast on the GPU between float32, float16, bfloat16, int64, int32, int8, uint8 and bool, with the
// CPU's conversion rules (runtime/cpu/elementwise_cast.cpp, the numeric spec): floats to integers
// truncate toward zero, saturate at the integer's range and map NaN to 0; anything to bool is
// `!= 0`; the 16-bit floats go through float32 with round-to-nearest-even.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cuda/std/limits>
#include <type_traits>

#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

// Device storage of the 16-bit floats (the host's Float16/BFloat16 bits).
struct Half {
  uint16_t bits;
};
struct BHalf {
  uint16_t bits;
};

template <typename T>
constexpr bool kIsFloatLike = std::is_same_v<T, float> || std::is_same_v<T, Half> || std::is_same_v<T, BHalf>;

template <typename T>
__device__ __forceinline__ auto Load(T v) {
  if constexpr (std::is_same_v<T, Half>) return __half2float(__ushort_as_half(v.bits));
  else if constexpr (std::is_same_v<T, BHalf>) return __bfloat162float(__ushort_as_bfloat16(v.bits));
  else return v;
}

template <typename To, typename From>
__device__ __forceinline__ To Convert(From raw) {
  const auto v = Load(raw);  // float for the float-like types, the value itself otherwise
  if constexpr (std::is_same_v<To, Half>) {
    return Half{__half_as_ushort(__float2half_rn(static_cast<float>(v)))};
  } else if constexpr (std::is_same_v<To, BHalf>) {
    return BHalf{__bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(v)))};
  } else if constexpr (std::is_same_v<To, bool>) {
    return v != decltype(v)(0);
  } else if constexpr (kIsFloatLike<From> && std::is_integral_v<To>) {
    if (v != v) return To(0);
    // 2^bits bounds are exact in float; To's max is not (for 32/64-bit integers).
    constexpr float kHi = static_cast<float>(::cuda::std::numeric_limits<To>::max()) + (sizeof(To) < 4 ? 1.0f : 0.0f);
    constexpr float kLo = static_cast<float>(::cuda::std::numeric_limits<To>::lowest());
    if (v >= kHi) return ::cuda::std::numeric_limits<To>::max();
    if (v <= kLo) return ::cuda::std::numeric_limits<To>::lowest();
    return static_cast<To>(v);
  } else {
    return static_cast<To>(v);
  }
}

template <typename From, typename To>
__global__ void CastKernel(const From* x, To* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = Convert<To>(x[i]);
}

// Calls fn(T{}) with the device storage type of `t`; false for dtypes without a CUDA cast.
template <typename Fn>
bool DispatchCastType(DType t, Fn&& fn) {
  switch (t) {
    case DType::kFloat32: fn(float{}); return true;
    case DType::kFloat16: fn(Half{}); return true;
    case DType::kBFloat16: fn(BHalf{}); return true;
    case DType::kInt64: fn(int64_t{}); return true;
    case DType::kInt32: fn(int32_t{}); return true;
    case DType::kInt8: fn(int8_t{}); return true;
    case DType::kUInt8: fn(uint8_t{}); return true;
    case DType::kBool: fn(bool{}); return true;
    default: return false;
  }
}

}  // namespace

Status CastCuda(OpContext& ctx) {
  if (!ctx.has_input(0)) return ctx.Error("expected 1 input");
  const Tensor& x = ctx.input(0);
  const DType to = static_cast<DType>(ctx.node.GetInt("to", 0));
  const DType from = x.dtype();
  auto supported = [](DType t) { return DispatchCastType(t, [](auto) {}); };
  if (!supported(from) || !supported(to)) return ctx.Decline(DTypeName(from) + " -> " + DTypeName(to));
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, to, x.shape()));
  const int64_t n = x.numel();
  if (n == 0) return Status::Ok();
  if (to == from) {
    QC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(y->mutable_raw(), x.raw(), x.nbytes(), cudaMemcpyDeviceToDevice, ctx.cuda.stream()));
    return Status::Ok();
  }
  DispatchCastType(from, [&](auto from_tag) {
    using From = decltype(from_tag);
    DispatchCastType(to, [&](auto to_tag) {
      using To = decltype(to_tag);
      CastKernel<<<BlocksFor(n), kThreads, 0, ctx.cuda.stream()>>>(static_cast<const From*>(x.raw()), static_cast<To*>(y->mutable_raw()), n);
    });
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("CastKernel");
  return Status::Ok();
}

}  // namespace qc::cuda

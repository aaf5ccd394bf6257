// qconvert.eval.NextTokenNll on the GPU: one block per scored position, so a perplexity window
// returns seq-1 doubles to the host instead of its [seq, vocab] logits (runtime/perplexity.h).
// runtime/cpu/next_token_nll.cpp is the numeric spec: max in float, exp(x - max) in float,
// summed in double (here per thread in float over ~vocab/256 terms in (0, 1], then in double).
#include "runtime/cuda/ops/common.cuh"

namespace qc::cuda {
namespace {

constexpr int kNllThreads = 256;

// Block r scores position t = r % (seq - 1) of batch row b = r / (seq - 1) against target
// targets[b, t + 1], read on the device; one outside [0, vocab) sets kTokenOutOfVocabulary (the run
// fails) and scores NaN.
template <typename T, typename I>
__global__ void NextTokenNllKernel(const T* logits, const I* targets, double* out, int64_t seq, int64_t vocab, unsigned* errors) {
  __shared__ float scratch_f[32];
  __shared__ double scratch_d[32];
  const int64_t r = blockIdx.x, scored = seq - 1;
  const int64_t b = r / scored, t = r % scored;
  const T* row = logits + (b * seq + t) * vocab;
  float mx = -INFINITY;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) mx = fmaxf(mx, LoadValue(row[v]));
  mx = BlockMax(mx, scratch_f);
  float partial = 0.0f;
  for (int64_t v = threadIdx.x; v < vocab; v += blockDim.x) partial += expf(LoadValue(row[v]) - mx);
  const double sum = BlockSum(static_cast<double>(partial), scratch_d);
  if (threadIdx.x != 0) return;
  const int64_t target = static_cast<int64_t>(targets[b * seq + t + 1]);
  if (target < 0 || target >= vocab) {
    atomicOr(errors, kTokenOutOfVocabulary);
    out[r] = NAN;
    return;
  }
  out[r] = log(sum) + static_cast<double>(mx) - static_cast<double>(LoadValue(row[target]));
}

}  // namespace

Status NextTokenNllCuda(OpContext& ctx) {
  if (!ctx.has_input(0) || !ctx.has_input(1)) return ctx.Error("expected 2 inputs");
  const Tensor& logits = ctx.input(0);
  const Tensor& targets = ctx.input(1);
  const DType t = logits.dtype();
  if (!IsKernelFloat(t)) return ctx.Decline("dtype " + DTypeName(t));
  if (targets.dtype() != DType::kInt32 && targets.dtype() != DType::kInt64)
    return ctx.Error("targets must be int32 or int64, got " + DTypeName(targets.dtype()));
  if (logits.rank() != 3 || targets.rank() != 2 || targets.dim(0) != logits.dim(0) || targets.dim(1) != logits.dim(1))
    return ctx.Error("expected logits [B, S, V] and targets [B, S], got " + ShapeToString(logits.shape()) + " and " +
                     ShapeToString(targets.shape()));
  const int64_t batch = logits.dim(0), seq = logits.dim(1), vocab = logits.dim(2);
  const int64_t scored = seq > 0 ? seq - 1 : 0;
  QC_ASSIGN_OR_RETURN(Tensor * y, ctx.Output(0, DType::kFloat64, {batch, scored}));
  const int64_t rows = batch * scored;
  if (rows == 0 || vocab == 0) return Status::Ok();
  if (rows > 0x7fffffff) return ctx.Decline("more than 2^31 positions");
  double* out = y->mutable_device_data<double>();
  DispatchFloat(t, [&](auto tag) {
    using T = decltype(tag);
    auto run = [&](const auto* ip) {
      NextTokenNllKernel<<<static_cast<unsigned>(rows), kNllThreads, 0, ctx.cuda.stream()>>>(static_cast<const T*>(logits.raw()), ip, out, seq,
                                                                                            vocab, ctx.cuda.device_errors());
    };
    if (targets.dtype() == DType::kInt64) run(targets.device_data<int64_t>());
    else run(targets.device_data<int32_t>());
  });
  QC_CUDA_RETURN_IF_LAUNCH_ERROR("NextTokenNllKernel");
  return Status::Ok();
}

}  // namespace qc::cuda

// Row-major GEMM: a packed, cache-blocked float32 kernel (AVX-512 or AVX2+FMA, picked at run
// time) with OpenMP across output tiles; Eigen for float64 and for CPUs without AVX2.
#include "runtime/cpu/gemm_core.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <utility>

#include <Eigen/Dense>

#include "formats/status.h"

namespace qc {
namespace {

// ---- Eigen path (float64, and float32 on CPUs without AVX2) ----------------------------------

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using ConstMap = Eigen::Map<const RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <typename T>
using MutMap = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;

template <typename T>
void GemmEigen(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
               const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  MutMap<T> cm(c, m, n, Eigen::OuterStride<>(ldc));
  ConstMap<T> am(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  ConstMap<T> bm(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  // Each branch names its operands' orientation so no transposed copy is materialised; Eigen
  // folds alpha into its GEMM and parallelises it unless already inside a parallel region.
  auto run = [&](const auto& lhs, const auto& rhs) {
    if (beta == T(0)) {
      cm.noalias() = alpha * (lhs * rhs);
    } else {
      if (beta != T(1)) cm *= beta;
      cm.noalias() += alpha * (lhs * rhs);
    }
  };
  if (!trans_a && !trans_b) run(am, bm);
  else if (trans_a && !trans_b) run(am.transpose(), bm);
  else if (!trans_a && trans_b) run(am, bm.transpose());
  else run(am.transpose(), bm.transpose());
}

// ---- Packed float32 GEMM ---------------------------------------------------------------------
//
// BLIS-style blocking: for each MC-row block and KC-deep slice, A is packed into MR-tall slivers
// once; then for each NC-wide column panel B is packed into NR-wide slivers and every MR x NR tile
// of C is computed by the register-tile microkernel (A sliver outer, B slivers inner). Threads own
// disjoint strips of C.

// The A sliver being multiplied (MR x KC) stays in L1 while the packed B panel (KC x NC) streams
// from L2 and the C tiles from L3/memory.
// KC = 256: an A sliver is 12 KiB (AVX-512) and a B panel row of slivers streams 128 B per step.
constexpr int64_t kKc = 256;
// MC = 960 rows of A are packed per K slice (960 KiB, L2/L3) and reused by every column panel, so
// B is packed only once per 960 rows of C.
constexpr int64_t kMcMax = 960;
// NC = 768: the packed B panel (256 x 768 floats = 768 KiB) fits a 1 MiB L2 with room for A.
constexpr int64_t kNc = 768;
// Tallest register tile of any microkernel.
constexpr int kMaxMr = 12;

struct AlignedBuffer {
  std::unique_ptr<float, decltype(&std::free)> p{nullptr, &std::free};
  size_t size = 0;
  float* Get(size_t n) {
    if (n > size) {
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      p.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
      QC_CHECK(p != nullptr);
      size = n;
    }
    return p.get();
  }
};

// Operand accessors: element (row, col) of op(X) with X row-major of leading dimension ld.
struct Operand {
  const float* p;
  int64_t ld;
  bool trans;
  float At(int64_t r, int64_t c) const { return trans ? p[c * ld + r] : p[r * ld + c]; }
};

// Packs op(A)[i0:i0+mc, p0:p0+kc] into MR-row slivers: dst[s][p][i], zero-padded to MR rows.
void PackA(const Operand& a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, int mr, float* dst) {
  for (int64_t s = 0; s < mc; s += mr) {
    const int rows = static_cast<int>(std::min<int64_t>(mr, mc - s));
    if (!a.trans) {
      // Walk the MR source rows side by side so the packed sliver is written contiguously.
      const float* src[kMaxMr];
      for (int i = 0; i < mr; ++i) src[i] = a.p + (i0 + s + std::min(i, rows - 1)) * a.ld + p0;
      for (int64_t p = 0; p < kc; ++p) {
        float* d = dst + p * mr;
        for (int i = 0; i < rows; ++i) d[i] = src[i][p];
        for (int i = rows; i < mr; ++i) d[i] = 0.0f;
      }
    } else {
      for (int64_t p = 0; p < kc; ++p) {
        const float* src = a.p + (p0 + p) * a.ld + i0 + s;
        float* d = dst + p * mr;
        for (int i = 0; i < rows; ++i) d[i] = src[i];
        for (int i = rows; i < mr; ++i) d[i] = 0.0f;
      }
    }
    dst += kc * mr;
  }
}

// Packs sliver `s` (columns j0 + s*NR ...) of op(B)[p0:p0+kc, :] into dst[p][j], zero-padded.
void PackBSliver(const Operand& b, int64_t p0, int64_t kc, int64_t j0, int64_t cols, int nr, float* dst) {
  if (!b.trans) {
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b.p + (p0 + p) * b.ld + j0;
      float* d = dst + p * nr;
      int64_t j = 0;
      for (; j < cols; ++j) d[j] = src[j];
      for (; j < nr; ++j) d[j] = 0.0f;
    }
  } else {
    for (int64_t j = 0; j < nr; ++j) {
      if (j < cols) {
        const float* src = b.p + (j0 + j) * b.ld + p0;
        for (int64_t p = 0; p < kc; ++p) dst[p * nr + j] = src[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) dst[p * nr + j] = 0.0f;
      }
    }
  }
}

// Microkernels: C[0:rows, 0:cols] = alpha * (Ap * Bp) + beta * C over kc steps, where Ap is an
// MR-tall packed sliver and Bp an NR-wide one. beta == 0 never reads C.
using MicroKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols,
                             float alpha, float beta);

// AVX-512: 12 x 32 tile = 24 zmm accumulators + 2 B vectors + 1 broadcast, within 32 registers.
constexpr int kMr512 = 12, kNr512 = 32;

template <int R>
__attribute__((target("avx512f"))) void TileAvx512(int64_t kc, const float* a, const float* b, float* c,
                                                     int64_t ldc, int cols, float alpha, float beta) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    // B streams from L2: fetch the sliver 8 steps (1 KiB) ahead.
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr512), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + 8 * kNr512 + 16), _MM_HINT_T0);
    const __m512 b0 = _mm512_load_ps(b);
    const __m512 b1 = _mm512_load_ps(b + 16);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_set1_ps(a[r]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
    a += kMr512;
    b += kNr512;
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __mmask16 m0 = cols >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << cols) - 1);
  const __mmask16 m1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : static_cast<__mmask16>((1u << (cols - 16)) - 1);
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    __m512 v0 = _mm512_mul_ps(acc0[r], va), v1 = _mm512_mul_ps(acc1[r], va);
    if (beta != 0.0f) {
      v0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, cr), vb, v0);
      v1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, cr + 16), vb, v1);
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

template <int... Rs>
__attribute__((target("avx512f"))) void KernelAvx512Impl(std::integer_sequence<int, Rs...>, int64_t kc,
                                                           const float* a, const float* b, float* c, int64_t ldc,
                                                           int rows, int cols, float alpha, float beta) {
  // Dispatch on the live row count so every tile height is fully unrolled.
  ((rows == Rs + 1 ? (TileAvx512<Rs + 1>(kc, a, b, c, ldc, cols, alpha, beta), 0) : 0), ...);
}

void KernelAvx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols, float alpha,
                  float beta) {
  KernelAvx512Impl(std::make_integer_sequence<int, kMr512>{}, kc, a, b, c, ldc, rows, cols, alpha, beta);
}

// AVX2: 6 x 16 tile = 12 ymm accumulators + 2 B vectors + 1 broadcast, within 16 registers.
constexpr int kMr256 = 6, kNr256 = 16;

template <int R>
__attribute__((target("avx2,fma"))) void TileAvx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                                                   int cols, float alpha, float beta) {
  __m256 acc0[R], acc1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(b);
    const __m256 b1 = _mm256_load_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
    a += kMr256;
    b += kNr256;
  }
  alignas(32) float tmp[16];
  for (int r = 0; r < R; ++r) {
    float* cr = c + r * ldc;
    _mm256_store_ps(tmp, acc0[r]);
    _mm256_store_ps(tmp + 8, acc1[r]);
    if (cols == 16) {
      __m256 v0 = _mm256_mul_ps(acc0[r], _mm256_set1_ps(alpha));
      __m256 v1 = _mm256_mul_ps(acc1[r], _mm256_set1_ps(alpha));
      if (beta != 0.0f) {
        v0 = _mm256_fmadd_ps(_mm256_loadu_ps(cr), _mm256_set1_ps(beta), v0);
        v1 = _mm256_fmadd_ps(_mm256_loadu_ps(cr + 8), _mm256_set1_ps(beta), v1);
      }
      _mm256_storeu_ps(cr, v0);
      _mm256_storeu_ps(cr + 8, v1);
    } else {
      for (int j = 0; j < cols; ++j) cr[j] = alpha * tmp[j] + (beta != 0.0f ? beta * cr[j] : 0.0f);
    }
  }
}

template <int... Rs>
__attribute__((target("avx2,fma"))) void KernelAvx2Impl(std::integer_sequence<int, Rs...>, int64_t kc,
                                                         const float* a, const float* b, float* c, int64_t ldc,
                                                         int rows, int cols, float alpha, float beta) {
  ((rows == Rs + 1 ? (TileAvx2<Rs + 1>(kc, a, b, c, ldc, cols, alpha, beta), 0) : 0), ...);
}

void KernelAvx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int rows, int cols, float alpha,
                float beta) {
  KernelAvx2Impl(std::make_integer_sequence<int, kMr256>{}, kc, a, b, c, ldc, rows, cols, alpha, beta);
}

struct KernelChoice {
  MicroKernel fn = nullptr;
  int mr = 0, nr = 0;
};

KernelChoice DetectKernel() {
  KernelChoice k;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    k = {&KernelAvx512, kMr512, kNr512};
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    k = {&KernelAvx2, kMr256, kNr256};
  }
  return k;
}

// The kernel in use; only ForceGemmKernelForTesting changes it after start-up.
KernelChoice& ActiveKernel() {
  static KernelChoice choice = DetectKernel();
  return choice;
}

// Single-threaded blocked GEMM on private packing buffers; threads run it on disjoint strips of C.
void GemmSerial(const KernelChoice& kern, const Operand& a, const Operand& b, int64_t m, int64_t n, int64_t k,
                float alpha, float beta, float* c, int64_t ldc) {
  const int mr = kern.mr, nr = kern.nr;
  // Equal-sized K slices and M blocks, so no slice or block is a sliver.
  const int64_t k_slices = (k + kKc - 1) / kKc;
  const int64_t kc_max = (k + k_slices - 1) / k_slices;
  const int64_t m_blocks = (m + kMcMax - 1) / kMcMax;
  const int64_t mc_max = ((m + m_blocks - 1) / m_blocks + mr - 1) / mr * mr;
  static thread_local AlignedBuffer a_buf, b_buf;
  float* ap = a_buf.Get(static_cast<size_t>(mc_max) * kc_max);
  float* bp = b_buf.Get(static_cast<size_t>(kc_max) * std::min<int64_t>(kNc, (n + nr - 1) / nr * nr));
  for (int64_t i0 = 0; i0 < m; i0 += mc_max) {
    const int64_t mc = std::min(mc_max, m - i0);
    for (int64_t p0 = 0; p0 < k; p0 += kc_max) {
      const int64_t kc = std::min(kc_max, k - p0);
      // Later K slices accumulate onto the first one's result.
      const float beta_eff = p0 == 0 ? beta : 1.0f;
      // A block packed once per K slice and reused across all column panels.
      PackA(a, i0, mc, p0, kc, mr, ap);
      for (int64_t j0 = 0; j0 < n; j0 += kNc) {
        const int64_t nc = std::min(kNc, n - j0);
        const int64_t slivers = (nc + nr - 1) / nr;
        for (int64_t s = 0; s < slivers; ++s)
          PackBSliver(b, p0, kc, j0 + s * nr, std::min<int64_t>(nr, nc - s * nr), nr, bp + s * kc * nr);
        for (int64_t i = 0; i < mc; i += mr) {
          const int rows = static_cast<int>(std::min<int64_t>(mr, mc - i));
          for (int64_t s = 0; s < slivers; ++s) {
            const int cols = static_cast<int>(std::min<int64_t>(nr, nc - s * nr));
            kern.fn(kc, ap + i * kc, bp + s * kc * nr, c + (i0 + i) * ldc + j0 + s * nr, ldc, rows, cols, alpha,
                    beta_eff);
          }
        }
      }
    }
  }
}

// Operand restricted to rows [r0, ...) and columns [c0, ...) of op(X).
Operand SubOperand(const Operand& x, int64_t r0, int64_t c0) {
  const int64_t off = x.trans ? c0 * x.ld + r0 : r0 * x.ld + c0;
  return Operand{x.p + off, x.ld, x.trans};
}

}  // namespace

bool ForceGemmKernelForTesting(const std::string& name) {
  __builtin_cpu_init();
  KernelChoice& k = ActiveKernel();
  if (name == "avx512" && __builtin_cpu_supports("avx512f")) {
    k = {&KernelAvx512, kMr512, kNr512};
  } else if (name == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    k = {&KernelAvx2, kMr256, kNr256};
  } else if (name == "eigen") {
    k = KernelChoice{};
  } else if (name == "auto") {
    k = DetectKernel();
  } else {
    return false;
  }
  return true;
}

int KernelThreads() { return omp_get_max_threads() > 0 ? omp_get_max_threads() : 1; }

void GemmF32(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
             int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc, bool threaded) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const KernelChoice kern = ActiveKernel();
  if (!kern.fn) {
    GemmEigen<float>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  // Below ~64K multiply-adds a thread team costs more than it saves.
  int threads = (threaded && !omp_in_parallel()) ? KernelThreads() : 1;
  if (static_cast<double>(m) * n * k < 65536) threads = 1;
  const Operand oa{a, lda, trans_a}, ob{b, ldb, trans_b};
  if (m < 4) {
    // Matrix-vector shapes are bound by reading B once; packing it would triple the traffic.
    // Threads split the columns.
    const int64_t strips = std::min<int64_t>(threads, std::max<int64_t>(1, n / 256));
#pragma omp parallel for num_threads(static_cast<int>(strips)) schedule(static, 1)
    for (int64_t t = 0; t < strips; ++t) {
      const int64_t j0 = n * t / strips, j1 = n * (t + 1) / strips;
      const Operand sb = SubOperand(ob, 0, j0);
      GemmEigen<float>(trans_a, trans_b, m, j1 - j0, k, alpha, a, lda, sb.p, ldb, beta, c + j0, ldc);
    }
    return;
  }
  if (threads <= 1) {
    GemmSerial(kern, oa, ob, m, n, k, alpha, beta, c, ldc);
    return;
  }
  // Independent strips of C, one per thread, need no barriers: column strips (each thread packs
  // its own part of B and all of A, which is the cheaper operand to repack) unless C is too narrow.
  const int64_t slivers = (n + kern.nr - 1) / kern.nr;
  const bool split_n = slivers >= 2 * threads;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    if (split_n) {
      const int64_t j0 = std::min(n, slivers * t / threads * kern.nr);
      const int64_t j1 = std::min(n, slivers * (t + 1) / threads * kern.nr);
      if (j1 > j0) GemmSerial(kern, oa, SubOperand(ob, 0, j0), m, j1 - j0, k, alpha, beta, c + j0, ldc);
    } else {
      const int64_t row_tiles = (m + kern.mr - 1) / kern.mr;
      const int64_t i0 = std::min(m, row_tiles * t / threads * kern.mr);
      const int64_t i1 = std::min(m, row_tiles * (t + 1) / threads * kern.mr);
      if (i1 > i0) GemmSerial(kern, SubOperand(oa, i0, 0), ob, i1 - i0, n, k, alpha, beta, c + i0 * ldc, ldc);
    }
  }
}

void GemmF64(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
             int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc, bool threaded) {
  (void)threaded;  // Eigen stays single-threaded inside the callers' parallel regions by itself
  if (m <= 0 || n <= 0) return;
  MutMap<double> cm(c, m, n, Eigen::OuterStride<>(ldc));
  if (k <= 0) {
    if (beta == 0.0) cm.setZero();
    else cm *= beta;
    return;
  }
  GemmEigen<double>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace qc

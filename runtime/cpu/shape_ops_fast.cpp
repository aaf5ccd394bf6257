// Fast data-movement kernels for the LLM-hot ops (Transpose, Concat, Slice, Gather, Expand): contiguous-run memcpy, blocked transposes, OpenMP over rows.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "runtime/cpu/broadcast.h"
#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/shape_ops_internal.h"

namespace qc {

using shape_ops::kParallelMinElements;
using shape_ops::RowMajorStrides;

namespace {

// Calls fn(std::integral_constant<int, B>) for the element size B in {1, 2, 4, 8}. Kernels copy
// elements with memcpy of the constant B: one load/store after inlining, bit-exact for any
// dtype, and free of the aliasing questions a cast to an integer type would raise.
template <typename Fn>
void DispatchElementBytes(int bytes, Fn&& fn) {
  switch (bytes) {
    case 1: fn(std::integral_constant<int, 1>{}); break;
    case 2: fn(std::integral_constant<int, 2>{}); break;
    case 4: fn(std::integral_constant<int, 4>{}); break;
    default: QC_CHECK(bytes == 8); fn(std::integral_constant<int, 8>{}); break;
  }
}

// Unravels `flat` over `grid` (row-major) into idx.
void Unravel(int64_t flat, const Shape& grid, std::vector<int64_t>& idx) {
  for (int d = static_cast<int>(grid.size()) - 1; d >= 0; --d) {
    idx[d] = flat % grid[d];
    flat /= grid[d];
  }
}

// Number of contiguous row chunks to hand to OpenMP: a few per thread balances uneven rows.
int64_t NumChunks(int64_t rows, bool parallel) {
  if (!parallel) return 1;
  return std::max<int64_t>(1, std::min<int64_t>(rows, 4 * static_cast<int64_t>(omp_get_max_threads())));
}

// For every row r of the row-major `grid`, with multi-index idx, visits
// fn(r, base + sum_d idx_d * strides_d). Rows are split in chunks over OpenMP when `parallel`.
template <typename Fn>
void ForEachRow(const Shape& grid, const std::vector<int64_t>& strides, int64_t base, bool parallel, Fn&& fn) {
  const int64_t rows = NumElements(grid);
  const int64_t chunks = NumChunks(rows, parallel);
  const int64_t per_chunk = (rows + chunks - 1) / chunks;
  const int g = static_cast<int>(grid.size());
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * per_chunk, end = std::min(rows, begin + per_chunk);
    if (begin >= end) continue;
    std::vector<int64_t> idx(g, 0);
    Unravel(begin, grid, idx);
    int64_t off = base;
    for (int d = 0; d < g; ++d) off += idx[d] * strides[d];
    for (int64_t r = begin; r < end; ++r) {
      fn(r, off);
      // Odometer step, keeping the offset in sync.
      for (int d = g - 1; d >= 0; --d) {
        off += strides[d];
        if (++idx[d] < grid[d]) break;
        off -= strides[d] * grid[d];
        idx[d] = 0;
      }
    }
  }
}

// ---- Transpose ----

// Drops size-1 dims and merges input dims that stay adjacent and in order in the output, e.g.
// [B,S,H,D] perm [0,2,3,1] becomes [B,S,H*D] perm [0,2,1].
void CoalesceTranspose(const Shape& in_shape, const std::vector<int>& perm, Shape* shape, std::vector<int>* out_perm) {
  const int r = static_cast<int>(in_shape.size());
  std::vector<int> new_index(r, -1);
  Shape kept;
  for (int d = 0; d < r; ++d)
    if (in_shape[d] != 1) {
      new_index[d] = static_cast<int>(kept.size());
      kept.push_back(in_shape[d]);
    }
  std::vector<int> p;
  for (int j = 0; j < r; ++j)
    if (new_index[perm[j]] >= 0) p.push_back(new_index[perm[j]]);
  // Groups of consecutive output dims reading consecutive input dims.
  std::vector<std::pair<int, int>> groups;  // [first input dim, last input dim], in output order
  for (size_t j = 0; j < p.size(); ++j) {
    if (!groups.empty() && groups.back().second + 1 == p[j]) {
      groups.back().second = p[j];
    } else {
      groups.push_back({p[j], p[j]});
    }
  }
  std::vector<int> by_input(groups.size());
  for (size_t i = 0; i < groups.size(); ++i) by_input[i] = static_cast<int>(i);
  std::sort(by_input.begin(), by_input.end(), [&](int a, int b) { return groups[a].first < groups[b].first; });
  std::vector<int> rank_of(groups.size());
  shape->clear();
  for (size_t i = 0; i < by_input.size(); ++i) {
    const auto [first, last] = groups[by_input[i]];
    int64_t size = 1;
    for (int d = first; d <= last; ++d) size *= kept[d];
    shape->push_back(size);
    rank_of[by_input[i]] = static_cast<int>(i);
  }
  out_perm->clear();
  for (size_t i = 0; i < groups.size(); ++i) out_perm->push_back(rank_of[i]);
}

// Square tile of the blocked 2-D transpose: 32x32 elements of up to 8 bytes is 8 KiB per side,
// so source and destination tiles stay in L1 while rows are streamed.
constexpr int64_t kTile = 32;

template <int B>
void BlockedTranspose(const Shape& s, const std::vector<int>& p, const char* src, char* dst, bool parallel) {
  const int r = static_cast<int>(s.size());
  const std::vector<int64_t> in_strides = RowMajorStrides(s);
  Shape out_shape(r);
  for (int j = 0; j < r; ++j) out_shape[j] = s[p[j]];
  const std::vector<int64_t> out_strides = RowMajorStrides(out_shape);
  const int a = p[r - 1];                                          // input dim that becomes innermost
  const int q = static_cast<int>(std::find(p.begin(), p.end(), r - 1) - p.begin());  // where input's innermost goes
  const int64_t m = s[a], n = s[r - 1];
  const int64_t sa = in_strides[a], so = out_strides[q];
  Shape grid;
  std::vector<int64_t> grid_in, grid_out;
  for (int j = 0; j < r; ++j)
    if (j != r - 1 && j != q) {
      grid.push_back(out_shape[j]);
      grid_in.push_back(in_strides[p[j]]);
      grid_out.push_back(out_strides[j]);
    }
  const int64_t combos = NumElements(grid);
  const int64_t m_tiles = (m + kTile - 1) / kTile;
  const int64_t tasks = combos * m_tiles;
  const int g = static_cast<int>(grid.size());
#pragma omp parallel for schedule(static) if (parallel && tasks > 1)
  for (int64_t task = 0; task < tasks; ++task) {
    std::vector<int64_t> idx(g, 0);
    Unravel(task / m_tiles, grid, idx);
    int64_t base_in = 0, base_out = 0;
    for (int d = 0; d < g; ++d) {
      base_in += idx[d] * grid_in[d];
      base_out += idx[d] * grid_out[d];
    }
    const int64_t i0 = (task % m_tiles) * kTile, i1 = std::min(m, i0 + kTile);
    for (int64_t j0 = 0; j0 < n; j0 += kTile) {
      const int64_t j1 = std::min(n, j0 + kTile);
      // out[i + j*so] = in[i*sa + j]: write output rows contiguously; the strided input reads stay in the tile.
      for (int64_t j = j0; j < j1; ++j) {
        char* out_row = dst + (base_out + j * so) * B;
        const char* in_col = src + (base_in + j) * B;
        for (int64_t i = i0; i < i1; ++i) std::memcpy(out_row + i * B, in_col + i * sa * B, B);
      }
    }
  }
}

}  // namespace

Status TransposeFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::TransposePlan plan, shape_ops::PlanTranspose(ctx));
  const Tensor& x = ctx.input(0);
  Tensor out = Tensor::Uninitialized(x.dtype(), plan.out_shape);  // every element is copied below
  const int64_t n = x.numel();
  const int es = plan.elem_bytes;
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  Shape s;
  std::vector<int> p;
  CoalesceTranspose(x.shape(), plan.perm, &s, &p);
  const int r = static_cast<int>(s.size());
  const bool parallel = n >= kParallelMinElements;
  if (n == 0) {
    // nothing to copy
  } else if (r <= 1) {
    std::memcpy(dst, src, n * es);
  } else if (p[r - 1] == r - 1) {
    // The innermost dim stays innermost (e.g. [B,S,H,D] -> [B,H,S,D]): memcpy whole rows.
    const std::vector<int64_t> in_strides = RowMajorStrides(s);
    Shape grid;
    std::vector<int64_t> strides;
    for (int j = 0; j < r - 1; ++j) {
      grid.push_back(s[p[j]]);
      strides.push_back(in_strides[p[j]]);
    }
    const int64_t row_bytes = s[r - 1] * es;
    ForEachRow(grid, strides, 0, parallel,
               [&](int64_t row, int64_t off) { std::memcpy(dst + row * row_bytes, src + off * es, row_bytes); });
  } else {
    DispatchElementBytes(es, [&](auto bytes) { BlockedTranspose<decltype(bytes)::value>(s, p, src, dst, parallel); });
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status ConcatFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::ConcatPlan plan, shape_ops::PlanConcat(ctx));
  Tensor out = Tensor::Uninitialized(plan.parts[0]->dtype(), plan.out_shape);  // every element is copied below
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < plan.axis; ++d) outer *= plan.out_shape[d];
  for (size_t d = plan.axis + 1; d < plan.out_shape.size(); ++d) inner *= plan.out_shape[d];
  const int64_t row_bytes = plan.out_shape[plan.axis] * inner * plan.elem_bytes;
  char* dst = static_cast<char*>(out.mutable_raw());
  const bool parallel = out.numel() >= kParallelMinElements && outer > 1;
  // Each output row [o, :, ...] is the inputs' rows [o, :, ...] side by side.
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t o = 0; o < outer; ++o) {
    int64_t at = 0;
    for (const Tensor* part : plan.parts) {
      const int64_t bytes = part->shape()[plan.axis] * inner * plan.elem_bytes;
      if (bytes > 0) std::memcpy(dst + o * row_bytes + at, static_cast<const char*>(part->raw()) + o * bytes, bytes);
      at += bytes;
    }
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status SliceFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::SlicePlan plan, shape_ops::PlanSlice(ctx));
  const Tensor& x = ctx.input(0);
  const int r = x.rank();
  // k: the innermost dim the slice does not keep whole; everything inside it is contiguous.
  int k = r - 1;
  while (k >= 0 && plan.starts[k] == 0 && plan.steps[k] == 1 && plan.out_shape[k] == x.shape()[k]) --k;
  if (k < 0) {
    ctx.outputs[0] = x;  // the whole tensor: tensors are immutable, so alias it
    return Status::Ok();
  }
  Tensor out = Tensor::Uninitialized(x.dtype(), plan.out_shape);  // every element is copied below
  if (out.numel() == 0) {
    ctx.outputs[0] = std::move(out);
    return Status::Ok();
  }
  const int es = plan.elem_bytes;
  const std::vector<int64_t> in_strides = RowMajorStrides(x.shape());
  int64_t base = 0;
  for (int d = 0; d < r; ++d) base += plan.starts[d] * in_strides[d];
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const bool parallel = out.numel() >= kParallelMinElements;
  // A unit step on dim k extends the contiguous run over it; other steps iterate it.
  const int grid_dims = plan.steps[k] == 1 ? k : k + 1;
  Shape grid(plan.out_shape.begin(), plan.out_shape.begin() + grid_dims);
  std::vector<int64_t> strides;
  for (int d = 0; d < grid_dims; ++d) strides.push_back(plan.steps[d] * in_strides[d]);
  const int64_t run = out.numel() / NumElements(grid);
  const int64_t run_bytes = run * es;
  if (run > 1) {
    ForEachRow(grid, strides, base, parallel,
               [&](int64_t row, int64_t off) { std::memcpy(dst + row * run_bytes, src + off * es, run_bytes); });
  } else {
    // Single elements (a strided innermost slice): fixed-size copies beat a memcpy call each.
    DispatchElementBytes(es, [&](auto bytes) {
      constexpr int B = decltype(bytes)::value;
      ForEachRow(grid, strides, base, parallel,
                 [&](int64_t row, int64_t off) { std::memcpy(dst + row * B, src + off * B, B); });
    });
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status GatherFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::GatherPlan plan, shape_ops::PlanGather(ctx));
  const Tensor& data = ctx.input(0);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < plan.axis; ++d) outer *= data.shape()[d];
  for (int d = plan.axis + 1; d < data.rank(); ++d) inner *= data.shape()[d];
  const int64_t dim = data.shape()[plan.axis];
  const int64_t n = static_cast<int64_t>(plan.indices.size());
  const int64_t row_bytes = inner * plan.elem_bytes;
  Tensor out = Tensor::Uninitialized(data.dtype(), plan.out_shape);  // every row is copied below
  const char* src = static_cast<const char*>(data.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const int64_t rows = outer * n;
  // Axis 0 is the embedding lookup: one memcpy per token row.
#pragma omp parallel for schedule(static) if (out.numel() >= kParallelMinElements && rows > 1)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t o = row / n, j = row % n;
    std::memcpy(dst + row * row_bytes, src + (o * dim + plan.indices[j]) * row_bytes, row_bytes);
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

Status ExpandFast(KernelContext& ctx) {
  QC_ASSIGN_OR_RETURN(shape_ops::ExpandPlan plan, shape_ops::PlanExpand(ctx));
  const Tensor& x = ctx.input(0);
  Tensor out = Tensor::Uninitialized(x.dtype(), plan.out_shape);  // every element is copied below
  if (out.numel() == 0) {
    ctx.outputs[0] = std::move(out);
    return Status::Ok();
  }
  const std::vector<int64_t> bstrides = BroadcastStrides(x.shape(), plan.out_shape);
  // Coalesce: drop size-1 output dims, merge neighbours that are both broadcast or both not
  // (and contiguous in the input), e.g. [B,1,S,D] -> [B,H,S,D] becomes [B,1,S*D] -> [B,H,S*D].
  Shape dims;
  std::vector<int64_t> strides;
  for (size_t d = 0; d < plan.out_shape.size(); ++d) {
    const int64_t size = plan.out_shape[d], stride = bstrides[d];
    if (size == 1) continue;
    if (!dims.empty() && ((stride == 0 && strides.back() == 0) || (stride != 0 && strides.back() == stride * size))) {
      dims.back() *= size;
      strides.back() = stride;
    } else {
      dims.push_back(size);
      strides.push_back(stride);
    }
  }
  const int es = plan.elem_bytes;
  const char* src = static_cast<const char*>(x.raw());
  char* dst = static_cast<char*>(out.mutable_raw());
  const bool parallel = out.numel() >= kParallelMinElements;
  if (dims.empty()) {
    std::memcpy(dst, src, es);
  } else {
    const int64_t row = dims.back();
    const bool broadcast_row = strides.back() == 0;
    dims.pop_back();
    strides.pop_back();
    DispatchElementBytes(es, [&](auto bytes) {
      constexpr int B = decltype(bytes)::value;
      ForEachRow(dims, strides, 0, parallel, [&](int64_t r, int64_t off) {
        char* y = dst + r * row * B;
        if (broadcast_row) {
          for (int64_t i = 0; i < row; ++i) std::memcpy(y + i * B, src + off * B, B);  // replicate one element
        } else {
          std::memcpy(y, src + off * B, row * B);
        }
      });
    });
  }
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc

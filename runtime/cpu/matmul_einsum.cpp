// Einsum: the general sum of products over labelled axes (explicit and implicit output, ellipsis
// broadcasting, repeated labels as diagonals); a scalar reference loop over every label.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "runtime/cpu/dispatch.h"
#include "runtime/cpu/kernel.h"
#include "runtime/cpu/matmul_shape.h"

namespace qc {
namespace {

// Labels are 'a'..'z', 'A'..'Z' (0..51); ellipsis dims get labels 52.. counted from the right.
constexpr int kEllipsisBase = 52;

struct EinsumPlan {
  std::vector<std::vector<int>> in_labels;  // per input, one label per dim
  std::vector<int> out_labels;
  std::vector<int64_t> size;                // per label; -1 when unused
  Shape out_shape;
};

int LetterLabel(char c) {
  if (c >= 'a' && c <= 'z') return c - 'a';
  if (c >= 'A' && c <= 'Z') return 26 + (c - 'A');
  return -1;
}

std::string Trim(const std::string& s) {
  std::string out;
  for (char c : s)
    if (c != ' ') out += c;
  return out;
}

// Parses one term into labels for a tensor of `rank` dims (ellipsis_rank < 0: not known yet).
Status ParseTerm(const KernelContext& ctx, const std::string& term, int rank, std::vector<int>* labels,
                 int* ellipsis_dims) {
  labels->clear();
  int letters = 0;
  bool ellipsis = false;
  for (size_t i = 0; i < term.size(); ++i) {
    if (term[i] == '.') {
      if (ellipsis || term.compare(i, 3, "...") != 0) return ctx.Error("malformed ellipsis in term '" + term + "'");
      ellipsis = true;
      i += 2;
    } else if (LetterLabel(term[i]) >= 0) {
      ++letters;
    } else {
      return ctx.Error(std::string("invalid character '") + term[i] + "' in equation");
    }
  }
  const int edims = ellipsis ? rank - letters : 0;
  if (rank >= 0 && (edims < 0 || (!ellipsis && letters != rank)))
    return ctx.Error("term '" + term + "' does not match an input of rank " + std::to_string(rank));
  *ellipsis_dims = edims;
  for (size_t i = 0; i < term.size(); ++i) {
    if (term[i] == '.') {
      for (int e = edims; e-- > 0;) labels->push_back(kEllipsisBase + e);
      i += 2;
    } else {
      labels->push_back(LetterLabel(term[i]));
    }
  }
  return Status::Ok();
}

StatusOr<EinsumPlan> PlanEinsum(const KernelContext& ctx) {
  if (!ctx.node.HasAttr("equation")) return ctx.Error("attribute 'equation' is required");
  const std::string eq = Trim(ctx.node.GetString("equation", ""));
  if (ctx.num_inputs() < 1) return ctx.Error("expected at least 1 input");
  for (int i = 0; i < ctx.num_inputs(); ++i)
    if (!ctx.has_input(i)) return ctx.Error("input " + std::to_string(i) + " is missing");
  const size_t arrow = eq.find("->");
  const std::string lhs = eq.substr(0, arrow);
  std::vector<std::string> terms;
  size_t start = 0;
  while (true) {
    const size_t comma = lhs.find(',', start);
    terms.push_back(lhs.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (static_cast<int>(terms.size()) != ctx.num_inputs())
    return ctx.Error("equation has " + std::to_string(terms.size()) + " terms but the node has " +
                     std::to_string(ctx.num_inputs()) + " inputs");
  EinsumPlan p;
  p.size.assign(kEllipsisBase + 64, -1);
  int max_edims = 0;
  p.in_labels.resize(terms.size());
  for (size_t t = 0; t < terms.size(); ++t) {
    const Tensor& x = ctx.input(static_cast<int>(t));
    int edims = 0;
    QC_RETURN_IF_ERROR(ParseTerm(ctx, terms[t], x.rank(), &p.in_labels[t], &edims));
    if (edims > 64) return ctx.Error("too many ellipsis dimensions");
    max_edims = std::max(max_edims, edims);
    for (int d = 0; d < x.rank(); ++d) {
      const int l = p.in_labels[t][d];
      const int64_t s = x.dim(d);
      if (l >= kEllipsisBase) {
        // Ellipsis dims broadcast numpy-style across inputs.
        if (p.size[l] < 0 || p.size[l] == 1) p.size[l] = s;
        else if (s != 1 && s != p.size[l])
          return ctx.Error("ellipsis dimensions of term '" + terms[t] + "' do not broadcast");
      } else if (p.size[l] < 0) {
        p.size[l] = s;
      } else if (p.size[l] != s) {
        return ctx.Error("dimension sizes disagree for a label in term '" + terms[t] + "'");
      }
    }
  }
  if (arrow != std::string::npos) {
    // Validate the output term's characters; its ellipsis stands for all broadcast ellipsis dims
    // (ellipsis dims it omits are summed over).
    int edims = 0;
    QC_RETURN_IF_ERROR(ParseTerm(ctx, eq.substr(arrow + 2), -1, &p.out_labels, &edims));
    const std::string out_term = eq.substr(arrow + 2);
    p.out_labels.clear();
    for (size_t i = 0; i < out_term.size(); ++i) {
      if (out_term[i] == '.') {
        for (int e = max_edims; e-- > 0;) p.out_labels.push_back(kEllipsisBase + e);
        i += 2;
      } else {
        p.out_labels.push_back(LetterLabel(out_term[i]));
      }
    }
    for (size_t i = 0; i < p.out_labels.size(); ++i)
      for (size_t j = i + 1; j < p.out_labels.size(); ++j)
        if (p.out_labels[i] == p.out_labels[j]) return ctx.Error("output label repeated in equation");
    for (int l : p.out_labels)
      if (p.size[l] < 0) return ctx.Error("output label does not appear in any input");
  } else {
    // Implicit output: ellipsis dims, then labels seen exactly once, alphabetically.
    for (int e = max_edims; e-- > 0;) p.out_labels.push_back(kEllipsisBase + e);
    std::map<int, int> count;
    for (const auto& ls : p.in_labels)
      for (int l : ls)
        if (l < kEllipsisBase) ++count[l];
    // Letters sort as in ASCII: uppercase before lowercase.
    std::vector<int> once;
    for (auto [l, c] : count)
      if (c == 1) once.push_back(l);
    std::sort(once.begin(), once.end(), [](int a, int b) {
      const char ca = a < 26 ? static_cast<char>('a' + a) : static_cast<char>('A' + a - 26);
      const char cb = b < 26 ? static_cast<char>('a' + b) : static_cast<char>('A' + b - 26);
      return ca < cb;
    });
    p.out_labels.insert(p.out_labels.end(), once.begin(), once.end());
  }
  int64_t total = 1;
  for (int l : p.out_labels) {
    p.out_shape.push_back(p.size[l]);
    if (p.size[l] > 0 && total > kMaxOutputElements / p.size[l]) return ctx.Error("output too large");
    total *= p.size[l];
  }
  return p;
}

template <typename T>
void EinsumRefImpl(const KernelContext& ctx, const EinsumPlan& p, Tensor& out) {
  // Every label in use, output labels first so each output element's sum is contiguous.
  std::vector<int> labels = p.out_labels;
  std::vector<bool> seen(p.size.size(), false);
  for (int l : labels) seen[l] = true;
  for (const auto& ls : p.in_labels)
    for (int l : ls)
      if (!seen[l]) {
        seen[l] = true;
        labels.push_back(l);
      }
  const size_t n_out = p.out_labels.size();
  // Per input and label: the element stride that label contributes (0 for broadcast dims).
  std::vector<std::vector<int64_t>> strides(p.in_labels.size(), std::vector<int64_t>(labels.size(), 0));
  for (size_t t = 0; t < p.in_labels.size(); ++t) {
    const Tensor& x = ctx.input(static_cast<int>(t));
    int64_t st = 1;
    for (int d = x.rank(); d-- > 0;) {
      const int l = p.in_labels[t][d];
      const size_t li = std::find(labels.begin(), labels.end(), l) - labels.begin();
      if (x.dim(d) != 1) strides[t][li] += st;  // size-1 dims broadcast
      st *= x.dim(d);
    }
  }
  std::vector<int64_t> sizes;
  for (int l : labels) sizes.push_back(p.size[l]);
  T* op = out.mutable_data<T>();
  const int64_t out_n = out.numel();
  int64_t sum_n = 1;
  for (size_t i = n_out; i < labels.size(); ++i) sum_n *= sizes[i];
  std::vector<int64_t> idx(labels.size(), 0);
  using Acc = std::conditional_t<std::is_floating_point_v<T>, double, int64_t>;
  for (int64_t o = 0; o < out_n; ++o) {
    // Unravel o over the output labels.
    int64_t rem = o;
    for (size_t i = n_out; i-- > 0;) {
      idx[i] = rem % sizes[i];
      rem /= sizes[i];
    }
    for (size_t i = n_out; i < labels.size(); ++i) idx[i] = 0;
    Acc acc = 0;
    for (int64_t s = 0; s < sum_n; ++s) {
      Acc prod = 1;
      for (size_t t = 0; t < p.in_labels.size(); ++t) {
        int64_t off = 0;
        for (size_t i = 0; i < labels.size(); ++i) off += idx[i] * strides[t][i];
        prod *= static_cast<Acc>(ctx.input(static_cast<int>(t)).data<T>()[off]);
      }
      acc += prod;
      for (size_t i = labels.size(); i-- > n_out;) {
        if (++idx[i] < sizes[i]) break;
        idx[i] = 0;
      }
    }
    op[o] = static_cast<T>(acc);
  }
}

}  // namespace

Status EinsumRef(KernelContext& ctx) {
  if (ctx.num_outputs() < 1) return ctx.Error("expected 1 output");
  QC_ASSIGN_OR_RETURN(EinsumPlan p, PlanEinsum(ctx));
  const DType t = ctx.input(0).dtype();
  for (int i = 1; i < ctx.num_inputs(); ++i)
    if (ctx.input(i).dtype() != t) return ctx.Error("all inputs must share one dtype");
  if (t == DType::kBool) return ctx.UnsupportedDType(t);
  Tensor out(t, p.out_shape);
  if (!DispatchNumeric(t, [&](auto tag) {
        using T = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<T, bool>) EinsumRefImpl<T>(ctx, p, out);
      }))
    return ctx.UnsupportedDType(t);
  ctx.outputs[0] = std::move(out);
  return Status::Ok();
}

}  // namespace qc

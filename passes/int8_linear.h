// The W8A8 encoding of a linear layer shared by `smoothquant` and `outlier-split`: int8 weights
// per output channel, int8 activations per token computed in the graph at run time, integer
// products through the standard MatMulInteger (docs/FORMAT.md, "W8A8").
//
//   before:  X ──► MatMul / Gemm ◄── W (float32)                                   ──► Y
//   after (once per X, shared by every layer reading it: q/k/v, gate/up):
//            m   = Max(ReduceMax(Abs(X), axes=[-1], keepdims=1), tiny)             [.., 1]
//            s_x = Div(m, 127)                                                     [.., 1]
//            X_q = Cast<uint8>(Add(Round(Div(X, s_x)), 128))                       [.., K]
//   (per layer):
//            Y = Mul(Mul(Cast<float>(MatMulInteger(X_q, W_q, 128, 128)), s_w), s_x) [+ bias]
//
// with W_q = round(W / s_w) + 128 stored as uint8 [K, N] and s_w[n] = max_k |W[k, n]| / 127 (times
// Gemm's alpha). Both operands are int8 values shifted by the zero point 128, so the product is
// exactly sum_k q_x[k] q_w[k, n] in int32; uint8 x uint8 is the one combination every ONNX Runtime
// CPU kernel computes exactly and fast (see docs/FORMAT.md for why not int8 x int8 or uint8 x int8).
//
// Outlier split (LLM.int8, Dettmers et al. 2022, eq. 7): the input channels O stay float,
//            X_O = Gather(X, O, axis=-1), X_R = Gather(X, R, axis=-1)     (shared per X and O)
//            Y   = Add(W8A8(X_R, W[R, :]), MatMul(X_O, W[O, :]))  [+ bias]
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/graph.h"
#include "formats/linear_layers.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "passes/quant_options.h"
#include "passes/weight_quant.h"

namespace qc {

/// Largest int8 code of the symmetric encodings: codes lie in [-127, 127].
inline constexpr int32_t kInt8MaxCode = 127;
/// Zero point of the uint8 storage of int8 codes (stored = code + 128).
inline constexpr int32_t kInt8StorageZeroPoint = 128;
/// Lower bound of a token's max |x|: an all-zero token gets scale tiny / 127 instead of 0, so
/// X / s_x stays 0 rather than NaN. Any positive normal float works; this one leaves room below
/// float's range for the division.
inline constexpr float kTokenAbsMaxFloor = 1e-30f;

/// An int8 weight with one symmetric scale per output channel: W[k, n] ~ q[k * n_ + n] * scale[n].
struct Int8Weight {
  int64_t k = 0;
  int64_t n = 0;
  std::vector<int8_t> q;     // [K, N] row-major codes in [-127, 127]
  std::vector<float> scale;  // [N]: max_k |W[k, n]| / 127 (0 for an all-zero column)

  /// W~ as a row-major [K, N] float matrix.
  std::vector<float> Dequantize() const;
};

/// Per-output-channel symmetric int8 quantization of a row-major [K, N] weight; codes are
/// round-half-to-even(W / scale) (the rounding of ONNX Round, used for activations too).
Int8Weight QuantizeWeightInt8(const std::vector<float>& w, int64_t k, int64_t n);

/// The per-token activation quantization exactly as the graph computes it, for one token of `k`
/// values: m = max(max_j |x_j|, kTokenAbsMaxFloor), s = m / 127, q_j = round-half-even(x_j / s).
/// Writes the codes to `q` and returns s.
float QuantizeTokenInt8(const float* x, int64_t k, int8_t* q);

/// Scalar reference of a W8A8 layer as the graph computes it: for each of the `rows` tokens of
/// x ([rows, K] row-major), y[t, n] = (float(sum_k q_x[t, k] q_w[k, n]) * s_w[n]) * s_x[t]. Used
/// by tests and by the passes to measure the output error including the activation rounding.
std::vector<float> W8A8Reference(const std::vector<float>& x, int64_t rows, const Int8Weight& w);

/// One layer whose W8A8 output error MeasureW8A8Error measures.
struct W8A8Probe {
  const std::vector<float>* w = nullptr;  // the float weight, row-major [K, N]
  const Int8Weight* q = nullptr;  // the int8 weight of the non-outlier rows ([K - |O|, N])
  std::vector<int64_t> outliers;  // input channels kept float (sorted); empty: plain W8A8
};

/// The --exclude / --head-bits filter of a W8A8 pass: every layer, the output head included, is
/// int8; `--head-bits float` still leaves the head in float, other widths do not apply.
StatusOr<LayerFilter> W8A8LayerFilter(const QuantOptions& options);

/// Calibration windows whose activations MeasureW8A8Error sees in the passes' reports (the first
/// ones; 8 x 512 tokens cost about one tenth of the calibration pass on docs-llama-12m).
inline constexpr size_t kW8A8ErrorWindows = 8;

/// ||X W - Y~||_F / ||X W||_F and the SQNR of one layer over every token of `inputs` (the layer's
/// float32 input X, [.., K] per tensor), where Y~ is the W8A8 output of the same X: per-token int8
/// activations (of the non-outlier channels) times the int8 weight, plus the float outlier
/// channels. Both sides leave out a Gemm's alpha and bias. This is the error the artifact makes,
/// activation rounding included, which the Hessian cannot give.
StatusOr<OutputError> MeasureW8A8Error(const std::vector<const Tensor*>& inputs, const W8A8Probe& probe);

/// Rewrites linear layers into W8A8 (and outlier-split) subgraphs in place. Layers are replaced
/// in any order; Finish() then inserts the shared activation quantization of each input in front
/// of its first reader, splices the per-layer nodes in place of the MatMul/Gemm (keeping its
/// output value, so the graph interface and every other node are unchanged), and removes the
/// float weights and weight Transposes nothing reads any more (a tied embedding keeps its table).
/// In a float16/bfloat16 model (the layer's weight in that type) the subgraph computes in float32
/// between a Cast of X (shared by X's readers) and a Cast of the output back to the model's type:
/// the integer sums exceed float16's range, and ONNX Runtime runs the same float32 arithmetic.
class W8A8Rewriter {
 public:
  /// Fails when the model's default opset is below 11 (Round) or a linear layer is unsupported.
  static StatusOr<W8A8Rewriter> Create(Model& model);

  /// Replaces `layer` (from FindLinearLayers on this model, before Finish) by W8A8 of `w`.
  /// `doc` becomes the doc_string of the MatMulInteger node.
  Status Replace(const LinearLayer& layer, const Int8Weight& w, const std::string& doc);

  /// Replaces `layer` by the outlier split: the input channels `outliers` (sorted, unique, in
  /// [0, K)) read the float rows `w_outliers` ([|O|, N] row-major), the others the int8 weight
  /// `w_rest` ([K - |O|, N], rows in increasing channel order). No outliers is plain W8A8.
  Status ReplaceWithOutliers(const LinearLayer& layer, const std::vector<int64_t>& outliers,
                             const std::vector<float>& w_outliers, const Int8Weight& w_rest, const std::string& doc);

  /// Splices the new nodes in and removes dead weights. Call once, last.
  void Finish();

 private:
  explicit W8A8Rewriter(Model& model) : model_(&model) {}

  // Nodes shared by the layers reading one value, inserted in front of the first of them: the
  // activation quantization of X (or of some of its channels), or a Gather of channels of X.
  struct SharedNodes {
    std::string value;  // activation quantization: the uint8 codes (+128); Gather: the gathered X
    std::string s_x;    // activation quantization: the per-token scale [.., 1]
    int first_user = -1;
    std::vector<Node> nodes;
  };
  std::string UniqueName(const std::string& base);
  std::string AddInitializer(const std::string& base, Tensor t);
  std::string Int64s(const std::vector<int64_t>& values);
  std::string FloatScalar(float v);
  // The shared quantization of `x` (of its channels `channels` when non-empty).
  SharedNodes& QuantizeActivation(const std::string& x, const std::vector<int64_t>& channels, int user,
                               const std::string& scope);
  // `x` itself in a float32 model; else the shared Cast of `x` to float32.
  std::string AsFloat32(const std::string& x, DType type, int user, const std::string& scope);
  // The shared Gather of `channels` of `x`.
  std::string GatherChannels(const std::string& x, const std::vector<int64_t>& channels, int user,
                             const std::string& scope);
  Status CheckLayer(const LinearLayer& layer, int64_t k, int64_t n) const;
  // Appends the int8 product of `layer` to `out` and returns its float output value.
  std::string AppendInt8Product(const LinearLayer& layer, const SharedNodes& act, const Int8Weight& w, float alpha,
                                const std::string& doc, std::vector<Node>* out);
  // Adds beta * C to `product` when the layer is a Gemm with C; either way the last node of `out`
  // then writes the layer's own output value (through a Cast back to `type` when not float32).
  void AppendBias(const LinearLayer& layer, const std::string& product, DType type, std::vector<Node>* out);
  // The float type of the layer's weight (its activations' type too).
  DType LayerType(const LinearLayer& layer) const;
  void MarkReplaced(const LinearLayer& layer, std::vector<Node> nodes);

  Model* model_;
  int64_t opset_ = 0;
  std::set<std::string> names_;
  std::map<std::string, SharedNodes> casts_;    // key: x (16-bit models: X cast to float32)
  std::map<std::string, SharedNodes> act_;      // key: x + channel list
  std::map<std::string, SharedNodes> gathers_;  // key: x + channel list
  std::map<int, std::vector<Node>> replacement_;  // node index -> nodes replacing it
  std::set<std::string> dropped_weights_;
  std::set<std::string> dropped_transposes_;
  std::map<std::string, std::string> scalars_;    // shared constants (scalars, axes, zero point) by key
  bool finished_ = false;
};

}  // namespace qc

// Weight-only quantization shared by every weight-quantizing pass: group-wise scale / zero-point
// math, the QuantizedWeight they all produce, its com.microsoft.MatMulNBits encoding, and the graph
// rewrite that puts a MatMulNBits in place of a MatMul/Gemm (docs/FORMAT.md describes the encoding).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "calibrate/calibrator.h"
#include "formats/graph.h"
#include "formats/linear_layers.h"
#include "formats/report.h"
#include "formats/status.h"
#include "formats/tensor.h"
#include "passes/quant_options.h"
#include "passes/tied_embedding.h"

namespace qc {

/// How one weight is quantized. A group is `group_size` consecutive input rows (K) of one output
/// column (N); every group has its own scale and, when asymmetric, zero point.
struct WeightQuantSpec {
  int bits = 4;              // 2..8
  int64_t group_size = 128;  // a power of two >= 16, or -1 for one group per output channel
  bool sym = true;           // symmetric: zero point 2^(bits-1) implied
  /// Per group, try shrinking the range by the factors 1, 1 - s, 1 - 2s, ... (s = search_span /
  /// search_steps, search_steps candidates) and keep the one with the least squared error.
  bool scale_search = false;
  int search_steps = 100;
  float search_span = 0.2f;  // 100 steps of 0.002: factors 1.0 down to 0.802
};

/// The spec the command-line options ask for, with the pass's own symmetry.
WeightQuantSpec SpecFromOptions(const QuantOptions& options, bool sym);

/// Checks bits and group size; the message names the flag and what it accepts.
Status ValidateWeightQuantSpec(const WeightQuantSpec& spec);

/// "w4-g128-sym", "w4-perchannel-asym", "w3-g64-sym+search".
std::string SchemeName(const WeightQuantSpec& spec);

/// MatMulNBits block sizes ONNX Runtime's CPU kernel accepts: powers of two in [16, 256].
inline constexpr int64_t kMinBlockSize = 16;
inline constexpr int64_t kMaxBlockSize = 256;

/// MatMulNBits block_size for a group size: the smallest power of two >= the group's rows (K for
/// one group per channel), at most kMaxBlockSize; a wider group spans several blocks that repeat
/// its scale and zero point (so per-channel of K = 320 is two blocks of 256 with equal scales).
int64_t BlockSizeFor(int64_t group_size, int64_t k);

/// Largest code of a `bits`-wide unsigned code: 2^bits - 1.
inline int32_t MaxCode(int bits) { return (1 << bits) - 1; }
/// The zero point of symmetric quantization (ONNX Runtime's default): 2^(bits-1).
inline int32_t SymmetricZeroPoint(int bits) { return 1 << (bits - 1); }

/// Scale and zero point of one group: w ~ (q - zero_point) * scale with q in [0, 2^bits - 1].
struct GroupParams {
  float scale = 0;
  int32_t zero_point = 0;
};

/// Parameters covering [lo, hi].
/// Symmetric (ONNX Runtime's blockwise convention, MLAS range2scale): the signed extreme e (lo or
/// hi, whichever has the larger magnitude) maps to code 0, i.e. scale = e / -2^(b-1) (negative when
/// e > 0), so all 2^b levels are used; zero point 2^(b-1).
/// Asymmetric (MLAS range2scalezp): the range is widened to contain 0, scale = (hi - lo) /
/// (2^b - 1), zero point = clamp(round(-lo / scale), 0, 2^b - 1).
GroupParams ParamsFromRange(float lo, float hi, int bits, bool sym);

/// Parameters for the `count` values w[0], w[stride], ..., from their range, or with
/// spec.scale_search the shrunk range of least squared error (ties keep the wider range).
GroupParams ComputeGroupParams(const float* w, int64_t count, int64_t stride, const WeightQuantSpec& spec);

/// The code of w: clamp(round(w / scale) + zero_point, 0, 2^bits - 1); a zero scale gives the
/// zero point. Rounds half away from zero, as MLAS does.
int32_t QuantizeValue(float w, const GroupParams& p, int bits);
/// (q - zero_point) * scale.
inline float DequantizeValue(int32_t q, const GroupParams& p) {
  return static_cast<float>(q - p.zero_point) * p.scale;
}
/// Quantizes `count` values of one group with fixed parameters (GPTQ quantizes one input row of
/// all output columns at a time: pass one GroupParams per value via QuantizeValue instead).
/// Writes codes to `q` and dequantized values to `w_hat` (either may be null); returns the
/// squared error.
double QuantizeGroup(const float* w, int64_t count, int64_t stride, const GroupParams& p, int bits, uint8_t* q,
                     float* w_hat);

/// A quantized linear weight in logical [K, N] orientation; what every weight-only pass produces
/// and what PackMatMulNBits encodes. W~[k, n] = (q[n][k] - zp[n][g(k)]) * scales[n][g(k)], with
/// g(k) = g_idx[k] when act-order reordered the groups, else k / block_size.
struct QuantizedWeight {
  int bits = 4;
  int64_t k = 0;           // in features
  int64_t n = 0;           // out features
  int64_t block_size = 0;  // input rows per block of the encoding (see BlockSizeFor)
  int64_t group_size = 0;  // as requested (-1: per channel); for the report
  std::vector<uint8_t> q;            // [n][k] codes in [0, 2^bits - 1], unpacked
  std::vector<float> scales;         // [n][n_blocks]
  std::vector<uint8_t> zero_points;  // [n][n_blocks], or empty for symmetric (2^(bits-1))
  std::vector<int32_t> g_idx;        // [k] group of each input row, empty unless act-order

  int64_t n_blocks() const { return (k + block_size - 1) / block_size; }
  bool symmetric() const { return zero_points.empty(); }
  /// Group (scale index) of input row `row`.
  int64_t GroupOf(int64_t row) const { return g_idx.empty() ? row / block_size : g_idx[row]; }
  GroupParams Params(int64_t col, int64_t group) const;
  /// W~ as a row-major [K, N] float matrix.
  std::vector<float> Dequantize() const;
  /// Checks sizes and value ranges (codes, zero points, g_idx); for weights built by other passes.
  Status Validate() const;
};

/// Round-to-nearest of a row-major [K, N] weight, groups along K.
StatusOr<QuantizedWeight> QuantizeRtn(const std::vector<float>& w, int64_t k, int64_t n, const WeightQuantSpec& spec);

/// ||W - W~||_F / ||W||_F in double (0 when W is zero and W~ equals it).
double RelativeError(const std::vector<float>& w, const std::vector<float>& w_hat);
/// The same with W~ = qw.Dequantize() computed on the fly (bit-identical, without a third copy of
/// the layer in memory).
double RelativeError(const std::vector<float>& w, const QuantizedWeight& qw);

/// The layer's weight as a row-major [K, N] float matrix, whatever its stored layout. A mapped
/// weight's pages are released once copied (docs/MEMORY.md).
StatusOr<std::vector<float>> ReadLinearWeight(const Graph& graph, const LinearLayer& layer);

/// The tensors of one MatMulNBits node.
struct MatMulNBitsTensors {
  int storage_bits = 4;     // the node's `bits` attribute (see StorageBits)
  int64_t block_size = 0;
  Tensor b;                 // uint8 [N, n_blocks, block_size * storage_bits / 8]
  Tensor scales;            // float32 [N * n_blocks]
  Tensor zero_points;       // uint8 [N * ceil(n_blocks * storage_bits / 8)], undefined if symmetric;
                            // float32 [N * n_blocks] with g_idx (see PackMatMulNBits)
  Tensor g_idx;             // int32 [K], undefined unless act-order
};

/// Bits per stored code: ONNX Runtime's CPU kernel runs only 2, 4 and 8 bits, so 3-bit codes are
/// stored in 4-bit and 5..7-bit codes in 8-bit fields. The dequantized weight is exactly the same.
int StorageBits(int bits);

/// Encodes `qw` for MatMulNBits: codes packed low bits first along K within each block (the
/// first 4-bit code in the low nibble), blocks padded with the zero point's code; zero points
/// packed the same way per output column, except with g_idx, where they are float32 because
/// ONNX Runtime's reordered-group kernel ignores packed ones.
StatusOr<MatMulNBitsTensors> PackMatMulNBits(const QuantizedWeight& qw);

/// Why the layer cannot become a MatMulNBits (e.g. a float16 weight), or nullopt when it can.
std::optional<std::string> MatMulNBitsUnsupportedReason(const Graph& graph, const LinearLayer& layer);

/// Rewrites linear layers into MatMulNBits nodes in place:
///
///   before:  X ──► MatMul ◄── [Transpose ◄──] W (float [K, N] or [N, K])        ──► Y
///            X ──► Gemm(alpha, beta, transB) ◄── W, C                            ──► Y
///   after:   X ──► com.microsoft.MatMulNBits(K, N, bits, block_size) ◄── B, scales[, zero_points][, g_idx][, bias] ──► Y
///            (a Gemm's C becomes the bias when it is a constant [N]; otherwise Y = MatMulNBits + beta * C)
///
/// Replace() keeps the node's name, position and output, so node indices of other layers stay
/// valid; Finish() then points the row Gathers of a tied head's table at the head's codes
/// (passes/tied_embedding.h) and removes the Transposes and float weights that nothing reads any
/// more. Graph inputs and outputs are unchanged. The {"com.microsoft", 1} opset import is added.
class MatMulNBitsRewriter {
 public:
  explicit MatMulNBitsRewriter(Model& model);
  /// Replaces `layer` (found in this model before any Finish()) by a MatMulNBits of `qw`.
  /// `doc` becomes the node's doc_string (e.g. "qconvert absmax w4-g128-sym").
  Status Replace(const LinearLayer& layer, const QuantizedWeight& qw, const std::string& doc);
  /// Applies deferred insertions and removes dead Transposes and weights. Call once, last.
  void Finish();
  /// Takes note of the names other code added to the graph since this rewriter was created (a pass
  /// that inserts nodes between Replace calls), so the names it creates stay unique.
  void NoteGraphNames();

 private:
  std::string UniqueName(const std::string& base);
  /// Adds `t` as an initializer named `base` (or base_1, ...); reuses an equal existing one.
  std::string AddOrReuseInitializer(const std::string& base, const Tensor& t);

  Model& model_;
  std::set<std::string> names_;  // every value and node name in the graph
  std::set<std::string> dropped_weights_;
  std::set<std::string> dropped_transposes_;  // Transpose output values
  // The output value of a replaced node -> nodes to insert after it (a Gemm's bias Add). Keyed by
  // value, not node index: other code may insert nodes before Finish().
  std::map<std::string, std::vector<Node>> insert_after_;
  std::set<std::string> created_;                  // initializers added here (only these are shared)
  std::map<std::string, PackedTable> tied_tables_;  // tied table -> the head's codes its Gathers read
  bool finished_ = false;
};

/// A report entry naming `layer`: its node, weight, K and N, the pass and the scheme.
LayerReport StartLayerReport(const LinearLayer& layer, const std::string& pass, const std::string& scheme);

/// The report entry of a layer a weight-only pass is about to quantize: bits 0 and scheme "float"
/// with the reason when MatMulNBits cannot encode it, else notes on folded Gemm alpha/beta.
LayerReport WeightOnlyLayerReport(const Graph& g, const LinearLayer& layer, const std::string& pass,
                                  const std::string& scheme, const WeightQuantSpec& spec);

/// After a rewrite replaced linear layers: removes the Transposes (by output value) in
/// `transposes` and the initializers in `weights` that nothing reads any more, with their
/// value_infos. Shared by the MatMulNBits and W8A8 rewriters.
void RemoveDroppedWeights(Graph& g, const std::set<std::string>& transposes, const std::set<std::string>& weights);

/// Layers left in float by --exclude: a std::regex searched in the node name and the weight name.
class LayerFilter {
 public:
  /// `pattern` is --exclude: an empty one excludes nothing; an invalid one is an InvalidArgument
  /// naming it. `head_bits` is --head-bits (QuantOptions::head_bits): kHeadFloat excludes the
  /// output head too.
  static StatusOr<LayerFilter> Create(const std::string& pattern, int head_bits = kHeadLikeOthers);
  bool Excluded(const LinearLayer& layer) const;
  /// `base` with the head's bits for the output head; `base` for every other layer.
  WeightQuantSpec SpecFor(const LinearLayer& layer, const WeightQuantSpec& base) const;

 private:
  std::optional<std::regex> regex_;
  int head_bits_ = kHeadLikeOthers;
};

/// Notes every weight-only pass adds to a quantized layer's report: what a tied embedding's
/// Gather reads, the output head's own bits, codes stored in wider fields.
void AddWeightNotes(const LinearLayer& layer, const WeightQuantSpec& spec, LayerReport& report);

/// The round-to-nearest driver of `absmax` and `zeropoint`: quantizes every linear layer not
/// excluded, rewrites it to MatMulNBits and appends one LayerReport per layer (skipped layers
/// get a report with bits 0 and a note saying why). With a calibrator (optional for these
/// passes) the reports also carry each layer's output error on the calibration inputs.
/// `head_bits` is QuantOptions::head_bits.
Status RunRoundToNearest(Model& model, const std::string& pass_name, const WeightQuantSpec& spec,
                         const std::string& exclude_regex, std::vector<LayerReport>* reports,
                         const Calibrator* calibrator = nullptr, int head_bits = kHeadLikeOthers);

}  // namespace qc

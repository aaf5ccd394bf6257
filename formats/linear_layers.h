// Finds the quantizable linear layers of a graph: MatMul/Gemm nodes with a constant weight.
#pragma once

#include <string>
#include <vector>

#include "formats/graph.h"

namespace qc {

/// A linear layer y = x W (+ b). The weight is an initializer, used directly or through a
/// Transpose; `k` x `n` is the logical [in_features, out_features] shape.
struct LinearLayer {
  int node_index = -1;          // index into graph.nodes of the MatMul/Gemm
  std::string node_name;
  std::string op_type;          // "MatMul" or "Gemm"
  std::string input;            // the activation X (node input 0)
  std::string weight;           // initializer name
  int weight_input = 1;         // which node input carries the weight
  bool transposed = false;      // the stored tensor is [n, k] (Gemm transB=1 or a Transpose node)
  std::string transpose_node;   // name of the Transpose between weight and layer, if any
  std::string bias;             // Gemm's C input, "" if none
  int64_t k = 0;                // in features
  int64_t n = 0;                // out features
  bool tied = false;            // the weight is also read by a Gather (tied embedding)
  int consumers = 1;            // number of linear layers sharing this weight
  bool output_head = false;     // computes the logits (see FindLinearLayers)
};

/// Every linear layer of the main graph, in node order. The output head is the layer whose output
/// becomes the logits (the graph output named "logits", else the first output) through at most
/// shape ops (Reshape, Squeeze, Unsqueeze, Flatten, Identity, Cast) and constant-operand
/// elementwise ops (a softcap's Div/Tanh/Mul, a bias Add).
std::vector<LinearLayer> FindLinearLayers(const Graph& graph);

}  // namespace qc

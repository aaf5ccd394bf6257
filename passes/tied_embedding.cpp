// Tied embedding Gathers rewritten to GatherBlockQuantized over the head's packed codes.
#include "passes/tied_embedding.h"

#include <map>
#include <vector>

#include "formats/model_builder.h"
#include "passes/weight_quant.h"

namespace qc {
namespace {

// Gather(table, ids) along axis 0 of the [rows, cols] table: an embedding lookup.
bool IsRowGather(const Node& n, const std::string& table) {
  if (n.op_type != "Gather" || !n.domain.empty() || n.inputs.size() != 2 || n.inputs[0] != table) return false;
  const int64_t axis = n.GetInt("axis", 0);
  return axis == 0 || axis == -2;
}

template <typename Fn>
void ForEachGraph(Graph& graph, const Fn& fn) {
  fn(graph);
  for (Node& n : graph.nodes)
    for (auto& [key, attr] : n.attributes) {
      if (attr.g) ForEachGraph(*attr.g, fn);
      for (auto& sub : attr.graphs)
        if (sub) ForEachGraph(*sub, fn);
    }
}

bool OnlyRowGathersReadIn(const Graph& graph, const std::string& table) {
  for (const ValueInfo& o : graph.outputs)
    if (o.name == table) return false;
  for (const Node& n : graph.nodes) {
    for (size_t i = 0; i < n.inputs.size(); ++i)
      if (n.inputs[i] == table && !(i == 0 && IsRowGather(n, table))) return false;
    for (const auto& [key, attr] : n.attributes) {
      if (attr.g && !OnlyRowGathersReadIn(*attr.g, table)) return false;
      for (const auto& sub : attr.graphs)
        if (sub && !OnlyRowGathersReadIn(*sub, table)) return false;
    }
  }
  return true;
}

}  // namespace

std::optional<std::string> TiedTableStaysFloat(const LinearLayer& layer, int bits) {
  if (!layer.tied) return "not tied to a Gather";
  // Below 8 bits the lookups themselves lose quality: on docs-llama-12m (48 windows) sharing a
  // 4-bit head's codes costs +0.75% perplexity, a 3-bit head's +3.9%; at 8 bits +0.001%.
  if (bits < kMinSharedTableBits)
    return "the head's codes are " + std::to_string(bits) + "-bit; the embedding lookups share them only at " +
           std::to_string(kMinSharedTableBits) + " bits (--head-bits 8, the default)";
  if (!layer.transposed)
    return "the head reads the table as stored ([in, out]), so its blocks run down the table's columns, not along "
           "the rows a Gather reads";
  return std::nullopt;  // 8-bit codes: every table row is whole bytes
}

bool OnlyRowGathersRead(const Graph& main, const std::string& table) { return OnlyRowGathersReadIn(main, table); }

int QuantizeEmbeddingGathers(Graph& main, const PackedTable& p, int64_t opset,
                             const std::function<std::string(const std::string&)>& unique_name) {
  if (opset < 5) return 0;  // Reshape took its shape as an attribute; our runtime does not run that
  int count = 0;
  ForEachGraph(main, [&](Graph& g) {
    for (const Node& n : g.nodes) count += IsRowGather(n, p.table);
  });
  if (count == 0) return 0;

  const int64_t n_blocks = (p.cols + p.block_size - 1) / p.block_size;
  const int64_t block_bytes = n_blocks * p.block_size * p.bits / 8;  // a row of B, padding included
  const int64_t row_bytes = p.cols * p.bits / 8;
  std::vector<Node> prologue;
  auto constant = [&](const std::string& base, const std::vector<int64_t>& v) {
    const std::string name = unique_name(base);
    main.SetInitializer(name, Tensor::FromVector<int64_t>(v, {static_cast<int64_t>(v.size())}));
    return name;
  };
  auto node = [&](const std::string& op, std::vector<std::string> inputs, const std::string& out_base,
                  std::map<std::string, Attribute> attributes = {}) {
    Node n;
    n.name = unique_name(out_base + "/" + op);
    n.op_type = op;
    n.inputs = std::move(inputs);
    n.outputs = {unique_name(out_base)};
    n.attributes = std::move(attributes);
    prologue.push_back(n);
    return n.outputs[0];
  };
  const std::string base = p.table + "_gather";
  std::string data = node("Reshape", {p.b, constant(base + "_data_shape", {p.rows, block_bytes})}, base + "_data");
  if (row_bytes != block_bytes) {
    // The head pads each row to whole blocks; a row's first cols * bits / 8 bytes are its codes.
    if (opset >= 10) {
      data = node("Slice", {data, constant(base + "_starts", {0}), constant(base + "_ends", {row_bytes}),
                            constant(base + "_axes", {1})},
                  base + "_data_rows");
    } else {
      data = node("Slice", {data}, base + "_data_rows",
                  {{"starts", AttrInts({0})}, {"ends", AttrInts({row_bytes})}, {"axes", AttrInts({1})}});
    }
  }
  const std::string scales = node("Reshape", {p.scales, constant(base + "_scales_shape", {p.rows, n_blocks})},
                                  base + "_scales");
  std::string zero_points;
  if (!p.zero_points.empty())
    zero_points = node("Reshape",
                       {p.zero_points, constant(base + "_zero_points_shape", {p.rows, (n_blocks * p.bits + 7) / 8})},
                       base + "_zero_points");

  ForEachGraph(main, [&](Graph& g) {
    for (Node& n : g.nodes) {
      if (!IsRowGather(n, p.table)) continue;
      Node q;
      q.name = n.name;
      q.op_type = "GatherBlockQuantized";
      q.domain = "com.microsoft";
      q.inputs = {data, n.inputs[1], scales};
      if (!zero_points.empty()) q.inputs.push_back(zero_points);
      q.outputs = n.outputs;
      q.attributes["gather_axis"] = AttrInt(0);
      q.attributes["quantize_axis"] = AttrInt(1);
      q.attributes["block_size"] = AttrInt(p.block_size);
      q.attributes["bits"] = AttrInt(p.bits);
      q.doc_string = "qconvert: rows of '" + p.table + "' from the tied head's packed codes";
      q.metadata_props = n.metadata_props;
      n = std::move(q);
    }
  });
  // The prologue reads initializers only, so it may run first.
  main.nodes.insert(main.nodes.begin(), prologue.begin(), prologue.end());
  return count;
}

}  // namespace qc

// Corpus tool: rewrites a real ONNX model with every tensor cut down to a few elements, keeping the
// graph (nodes, attributes, subgraphs, value infos) byte for byte. Real exports make good seeds for
// onnx_reader_fuzzer only once their weights are gone. Usage: shrink_onnx IN.onnx OUT.onnx
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>

#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"

namespace {

qc::Tensor Shrink(const qc::Tensor& t) {
  qc::Shape shape = t.shape();
  for (int64_t& d : shape) d = d < 2 ? d : 2;  // <= 2^rank elements, rank kept
  if (qc::NumElements(shape) >= t.numel()) return t;
  qc::Tensor small(t.dtype(), shape);
  // The first elements of the row-major data: the values only need to be plausible.
  std::memcpy(small.mutable_raw(), t.raw(), small.nbytes());
  return small;
}

void ShrinkGraph(qc::Graph* g) {
  for (const std::string& name : std::vector<std::string>(g->initializer_names()))
    g->SetInitializer(name, Shrink(*g->FindInitializer(name)));
  for (qc::Node& n : g->nodes)
    for (auto& [key, a] : n.attributes) {
      if (a.t.defined()) a.t = Shrink(a.t);
      for (qc::Tensor& t : a.tensors) t = Shrink(t);
      if (a.g) ShrinkGraph(a.g.get());
      for (auto& sub : a.graphs) ShrinkGraph(sub.get());
    }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: shrink_onnx IN.onnx OUT.onnx\n");
    return 1;
  }
  qc::StatusOr<qc::Model> model = qc::ReadOnnxModel(argv[1]);
  if (!model.ok()) {
    std::fprintf(stderr, "shrink_onnx: %s\n", model.status().message().c_str());
    return 1;
  }
  ShrinkGraph(&model->graph);
  qc::StatusOr<std::string> bytes = qc::SerializeOnnxModel(*model);
  if (!bytes.ok()) {
    std::fprintf(stderr, "shrink_onnx: %s\n", bytes.status().message().c_str());
    return 1;
  }
  std::ofstream(argv[2], std::ios::binary) << *bytes;
  std::printf("%s: %zu bytes\n", argv[2], bytes->size());
  return 0;
}

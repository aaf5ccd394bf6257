// libFuzzer target: ONNX model bytes -> ParseOnnxModel and ReadOnnxModel (the bytes as a file,
// mapped and read), then what every command does next with a model that loaded (linear-layer
// discovery, reading initializer values, writing it back out).
//
// Invariants checked beyond "no crash, leak or hang": the three read paths agree; a model that
// parses serialises, the serialised model parses again, and a second round trip is byte-identical
// to the first.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "formats/linear_layers.h"
#include "formats/onnx_reader.h"
#include "formats/onnx_writer.h"

namespace {

// A model directory with one external-data file, so fuzzed external-data references (offsets,
// lengths, locations) reach the mmap path. Paths outside it must be refused by the reader.
std::string g_model_dir;

// Initializers up to this many elements are converted to float like a kernel would read them;
// larger ones (mapped external data, zero-filled typed data) only cost time.
constexpr int64_t kMaxReadElements = int64_t{1} << 16;

void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "onnx_reader_fuzzer: %s: %s\n", what, detail.c_str());
  std::abort();
}

// Reads the values the way kernels do: float tensors as floats, integer ones (indices, shapes) as int64.
void ReadValues(const qc::Tensor& t) {
  if (!t.defined() || t.numel() > kMaxReadElements) return;
  if (qc::IsFloatingPoint(t.dtype())) (void)t.ToFloats();
  else (void)t.ToInt64s();
}

void ReadValues(const qc::Graph& graph) {
  for (const std::string& name : graph.initializer_names()) ReadValues(*graph.FindInitializer(name));
  for (const qc::Node& n : graph.nodes)
    for (const auto& [key, a] : n.attributes) {
      ReadValues(a.t);
      for (const qc::Tensor& t : a.tensors) ReadValues(t);
      if (a.g) ReadValues(*a.g);
      for (const auto& g : a.graphs) ReadValues(*g);
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  char tmpl[] = "/tmp/qc_onnx_fuzz.XXXXXX";
  if (!::mkdtemp(tmpl)) Fail("mkdtemp", tmpl);
  g_model_dir = tmpl;
  std::ofstream data(g_model_dir + "/model.onnx.data", std::ios::binary);
  for (int i = 0; i < 4096; ++i) data.put(static_cast<char>(i * 37));
  std::filesystem::create_directory(g_model_dir + "/sub");
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(g_model_dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  qc::StatusOr<qc::Model> model = qc::ParseOnnxModel(bytes, g_model_dir);
  if (!model.ok() && model.status().code() == qc::StatusCode::kInternal)
    Fail("internal error on bad input", model.status().message());

  // The same bytes as a file: ReadOnnxModel maps it and cuts large inline raw_data out with its
  // own wire-format parser (formats/onnx_wire.cpp) before protobuf sees the rest. Both paths must
  // agree; the read (not mapped) path must too.
  const std::string path = g_model_dir + "/model.onnx";
  { std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes; }
  for (bool map : {true, false}) {
    qc::OnnxReadOptions options;
    options.map_external_data = map;
    qc::StatusOr<qc::Model> from_file = qc::ReadOnnxModel(path, options);
    if (from_file.ok() != model.ok())
      Fail(map ? "mapped file and bytes disagree" : "read file and bytes disagree",
           (from_file.ok() ? model : from_file).status().message());
    if (!from_file.ok()) continue;
    qc::StatusOr<std::string> a = qc::SerializeOnnxModel(*from_file), b = qc::SerializeOnnxModel(*model);
    if (!a.ok() || !b.ok() || *a != *b)
      Fail(map ? "mapped file and bytes give different models" : "read file and bytes give different models", path);
  }
  if (!model.ok()) return 0;

  (void)qc::FindLinearLayers(model->graph);
  ReadValues(model->graph);

  qc::StatusOr<std::string> written = qc::SerializeOnnxModel(*model);
  if (!written.ok()) Fail("a model that parsed does not serialise", written.status().message());
  qc::StatusOr<qc::Model> reread = qc::ParseOnnxModel(*written, g_model_dir);
  if (!reread.ok()) Fail("a model we wrote does not parse", reread.status().message());
  qc::StatusOr<std::string> rewritten = qc::SerializeOnnxModel(*reread);
  if (!rewritten.ok()) Fail("a re-read model does not serialise", rewritten.status().message());
  if (*rewritten != *written) Fail("round trip is not stable", std::to_string(written->size()) + " vs " + std::to_string(rewritten->size()) + " bytes");
  return 0;
}

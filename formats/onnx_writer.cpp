// IR -> ONNX protobuf. Initializers are written as raw_data, or to an external-data side file,
// streamed tensor by tensor: no message holding the weights is ever built.
#include "formats/onnx_writer.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <vector>

#include "formats/interrupt_cleanup.h"
#include "formats/onnx_wire.h"
#include "onnx/onnx_pb.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

// Protobuf messages cannot exceed 2 GB; leave headroom for the graph structure itself.
constexpr int64_t kMaxInlineBytes = int64_t{1900} << 20;
// Offsets in external data are aligned so mapped tensors are aligned for vector loads.
constexpr int64_t kExternalAlignment = 64;
// Tensor bytes are copied to the file in pieces of this size, each released from memory (if
// mapped) once written, so writing a large mapped tensor never makes all of it resident.
constexpr int64_t kWriteChunkBytes = int64_t{16} << 20;
// Field numbers of onnx.proto3 the streaming writer places itself.
constexpr int kModelGraphField = 7;
constexpr int kGraphInitializerField = 5;
constexpr int kTensorRawDataField = 9;

/// Writes the tensor's bytes to `out` chunk by chunk, dropping each written chunk of a mapped
/// tensor from memory (the values stay on disk).
Status StreamTensorBytes(const Tensor& t, std::ostream& out, const std::string& name) {
  const char* data = static_cast<const char*>(t.raw());
  for (int64_t done = 0; done < t.nbytes(); done += kWriteChunkBytes) {
    const int64_t n = std::min(kWriteChunkBytes, t.nbytes() - done);
    out.write(data + done, n);
    if (!out) return DataLoss("writing tensor '" + name + "' failed (disk full?)");
    t.ReleasePages(done, n);
  }
  return Status::Ok();
}

/// Appends tensors to the external-data side file.
struct ExternalSink {
  std::ofstream* out = nullptr;
  std::string location;  // file name relative to the model
  int64_t offset = 0;
  int64_t min_bytes = 0;
};

/// Name, dtype and dims: a TensorProto without its data.
void FillTensorHeader(const Tensor& t, const std::string& name, onnx::TensorProto* tp) {
  tp->set_name(name);
  tp->set_data_type(static_cast<int32_t>(t.dtype()));
  for (int64_t d : t.shape()) tp->add_dims(d);
}

Status FillTensor(const Tensor& t, const std::string& name, onnx::TensorProto* tp, ExternalSink* sink) {
  FillTensorHeader(t, name, tp);
  const int64_t nbytes = t.nbytes();
  if (sink && sink->out && nbytes >= sink->min_bytes) {
    int64_t pad = (kExternalAlignment - sink->offset % kExternalAlignment) % kExternalAlignment;
    static const char zeros[kExternalAlignment] = {};
    sink->out->write(zeros, pad);
    sink->offset += pad;
    QC_RETURN_IF_ERROR(StreamTensorBytes(t, *sink->out, name).WithContext("external data"));
    tp->set_data_location(onnx::TensorProto::EXTERNAL);
    auto add = [&](const char* k, const std::string& v) {
      auto* e = tp->add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add("location", sink->location);
    add("offset", std::to_string(sink->offset));
    add("length", std::to_string(nbytes));
    sink->offset += nbytes;
    return Status::Ok();
  }
  tp->set_raw_data(t.raw(), nbytes);
  return Status::Ok();
}

void FillValueInfo(const ValueInfo& v, onnx::ValueInfoProto* vp) {
  vp->set_name(v.name);
  if (!v.doc_string.empty()) vp->set_doc_string(v.doc_string);
  if (v.dtype == DType::kUndefined && !v.has_shape) return;
  auto* tt = vp->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(static_cast<int32_t>(v.dtype));
  if (v.has_shape) {
    auto* shape = tt->mutable_shape();
    for (const Dim& d : v.shape) {
      auto* dp = shape->add_dim();
      if (!d.param.empty()) dp->set_dim_param(d.param);
      else if (d.value >= 0) dp->set_dim_value(d.value);
    }
  }
}

Status FillGraph(const Graph& g, onnx::GraphProto* gp, ExternalSink* sink, bool with_initializers = true);

Status FillNode(const Node& n, onnx::NodeProto* np, ExternalSink* sink) {
  np->set_name(n.name);
  np->set_op_type(n.op_type);
  if (!n.domain.empty()) np->set_domain(n.domain);
  if (!n.doc_string.empty()) np->set_doc_string(n.doc_string);
  for (const auto& i : n.inputs) np->add_input(i);
  for (const auto& o : n.outputs) np->add_output(o);
  for (const auto& [key, a] : n.attributes) {
    auto* ap = np->add_attribute();
    ap->set_name(key);
    ap->set_type(static_cast<onnx::AttributeProto::AttributeType>(a.type));
    if (!a.ref_attr_name.empty()) ap->set_ref_attr_name(a.ref_attr_name);
    switch (a.type) {
      case Attribute::Type::kFloat: ap->set_f(a.f); break;
      case Attribute::Type::kInt: ap->set_i(a.i); break;
      case Attribute::Type::kString: ap->set_s(a.s); break;
      case Attribute::Type::kTensor: QC_RETURN_IF_ERROR(FillTensor(a.t, "", ap->mutable_t(), nullptr)); break;
      case Attribute::Type::kGraph: QC_RETURN_IF_ERROR(FillGraph(*a.g, ap->mutable_g(), sink)); break;
      case Attribute::Type::kFloats: for (float f : a.floats) ap->add_floats(f); break;
      case Attribute::Type::kInts: for (int64_t i : a.ints) ap->add_ints(i); break;
      case Attribute::Type::kStrings: for (const auto& s : a.strings) ap->add_strings(s); break;
      case Attribute::Type::kTensors:
        for (const auto& t : a.tensors) QC_RETURN_IF_ERROR(FillTensor(t, "", ap->add_tensors(), nullptr));
        break;
      case Attribute::Type::kGraphs:
        for (const auto& g : a.graphs) QC_RETURN_IF_ERROR(FillGraph(*g, ap->add_graphs(), sink));
        break;
      case Attribute::Type::kUndefined: break;
    }
  }
  return Status::Ok();
}

/// `with_initializers` false leaves the graph's own initializers out (the streaming writer adds
/// them itself); subgraphs always get theirs.
Status FillGraph(const Graph& g, onnx::GraphProto* gp, ExternalSink* sink, bool with_initializers) {
  gp->set_name(g.name);
  if (!g.doc_string.empty()) gp->set_doc_string(g.doc_string);
  for (const auto& n : g.nodes) QC_RETURN_IF_ERROR(FillNode(n, gp->add_node(), sink));
  if (with_initializers)
    for (const auto& name : g.initializer_names())
      QC_RETURN_IF_ERROR(FillTensor(*g.FindInitializer(name), name, gp->add_initializer(), sink));
  for (const auto& v : g.inputs) FillValueInfo(v, gp->add_input());
  for (const auto& v : g.outputs) FillValueInfo(v, gp->add_output());
  for (const auto& v : g.value_infos) FillValueInfo(v, gp->add_value_info());
  return Status::Ok();
}

Status FillModel(const Model& m, onnx::ModelProto* mp, ExternalSink* sink, bool with_initializers = true) {
  mp->set_ir_version(m.ir_version);
  if (!m.producer_name.empty()) mp->set_producer_name(m.producer_name);
  if (!m.producer_version.empty()) mp->set_producer_version(m.producer_version);
  if (!m.domain.empty()) mp->set_domain(m.domain);
  if (m.model_version) mp->set_model_version(m.model_version);
  if (!m.doc_string.empty()) mp->set_doc_string(m.doc_string);
  for (const auto& o : m.opset_imports) {
    auto* op = mp->add_opset_import();
    op->set_domain(o.domain);
    op->set_version(o.version);
  }
  for (const auto& [k, v] : m.metadata_props) {
    auto* e = mp->add_metadata_props();
    e->set_key(k);
    e->set_value(v);
  }
  for (const Function& f : m.functions) {
    auto* fp = mp->add_functions();
    fp->set_name(f.name);
    fp->set_domain(f.domain);
    if (!f.doc_string.empty()) fp->set_doc_string(f.doc_string);
    for (const auto& i : f.inputs) fp->add_input(i);
    for (const auto& o : f.outputs) fp->add_output(o);
    for (const auto& a : f.attribute_names) fp->add_attribute(a);
    for (const auto& o : f.opset_imports) {
      auto* op = fp->add_opset_import();
      op->set_domain(o.domain);
      op->set_version(o.version);
    }
    for (const auto& n : f.nodes) QC_RETURN_IF_ERROR(FillNode(n, fp->add_node(), nullptr));
  }
  return FillGraph(m.graph, mp->mutable_graph(), sink, with_initializers);
}

int64_t InitializerBytes(const Graph& g) {
  int64_t total = 0;
  for (const auto& name : g.initializer_names()) total += g.FindInitializer(name)->nbytes();
  for (const auto& n : g.nodes)
    for (const auto& [k, a] : n.attributes) {
      if (a.g) total += InitializerBytes(*a.g);
      for (const auto& sub : a.graphs) total += InitializerBytes(*sub);
    }
  return total;
}

/// A temp file beside `final_path`, renamed into place by Commit(), removed otherwise.
class AtomicFile {
 public:
  explicit AtomicFile(std::string final_path)
      : final_(std::move(final_path)), temp_(final_ + ".tmp." + std::to_string(::getpid())), cleanup_(temp_) {}
  ~AtomicFile() {
    if (!committed_) std::remove(temp_.c_str());
  }
  const std::string& temp() const { return temp_; }
  Status Commit() {
    if (std::rename(temp_.c_str(), final_.c_str()) != 0)
      return DataLoss("cannot rename '" + temp_ + "' to '" + final_ + "': " + std::strerror(errno));
    committed_ = true;
    cleanup_.Release();
    return Status::Ok();
  }

 private:
  std::string final_;
  std::string temp_;
  ScopedInterruptCleanup cleanup_;  // an interrupted write leaves no temp file
  bool committed_ = false;
};

}  // namespace

StatusOr<std::string> SerializeOnnxModel(const Model& model) {
  if (InitializerBytes(model.graph) > kMaxInlineBytes)
    return InvalidArgument("model weights exceed 2 GB; write with external data");
  onnx::ModelProto mp;
  QC_RETURN_IF_ERROR(FillModel(model, &mp, nullptr));
  std::string out;
  if (!mp.SerializeToString(&out)) return Internal("protobuf serialization failed");
  return out;
}

bool WritesExternalData(const Model& model, const OnnxWriteOptions& options) {
  return options.external_data || InitializerBytes(model.graph) > kMaxInlineBytes;
}

Status WriteOnnxModel(const Model& model, const std::string& path, const OnnxWriteOptions& options) {
  const bool external = WritesExternalData(model, options);
  AtomicFile model_file(path);
  std::unique_ptr<AtomicFile> data_file;
  std::ofstream data_out;
  ExternalSink sink;
  if (external) {
    const std::string data_path = path + ".data";
    data_file = std::make_unique<AtomicFile>(data_path);
    data_out.open(data_file->temp(), std::ios::binary | std::ios::trunc);
    if (!data_out) return NotFound("cannot create '" + data_path + "': " + std::strerror(errno));
    sink.out = &data_out;
    sink.location = fs::path(data_path).filename().string();
    sink.min_bytes = options.external_min_bytes;
  }
  // Everything but the main graph's initializers, as messages (small; subgraph initializers go
  // to the side file here, in the order the one-message writer used).
  onnx::ModelProto mp;
  QC_RETURN_IF_ERROR(FillModel(model, &mp, external ? &sink : nullptr, /*with_initializers=*/false));
  // Each initializer's TensorProto without raw_data; the external ones are written to the side
  // file now, the inline ones stream into the model file below.
  const Graph& g = model.graph;
  std::vector<std::string> headers;
  std::vector<const Tensor*> inline_data;  // nullptr: stored externally (or empty)
  uint64_t initializers_size = 0;
  for (const std::string& name : g.initializer_names()) {
    const Tensor& t = *g.FindInitializer(name);
    onnx::TensorProto tp;
    const bool to_sink = external && t.nbytes() >= sink.min_bytes;
    if (to_sink) {
      QC_RETURN_IF_ERROR(FillTensor(t, name, &tp, &sink));
    } else {
      FillTensorHeader(t, name, &tp);  // raw_data (field 9) follows name (8): appended when streaming
    }
    headers.push_back(tp.SerializeAsString());
    const bool streamed = !to_sink;
    inline_data.push_back(streamed ? &t : nullptr);
    const uint64_t tensor_size = headers.back().size() + (streamed ? LengthDelimitedFieldSize(kTensorRawDataField, t.nbytes()) : 0);
    initializers_size += LengthDelimitedFieldSize(kGraphInitializerField, tensor_size);
  }
  if (external) {
    data_out.close();
    if (!data_out) return DataLoss("writing '" + path + ".data' failed (disk full?)");
  }

  // Protobuf writes fields in ascending number order; the initializers (GraphProto field 5) and
  // the graph (ModelProto field 7) are spliced in at their places, so the file is byte for byte
  // what serializing the whole model as one message would give.
  const std::string graph_rest = mp.graph().SerializeAsString();
  mp.clear_graph();
  const std::string model_rest = mp.SerializeAsString();
  const std::optional<size_t> graph_split = OffsetAfterField(graph_rest, kGraphInitializerField);
  const std::optional<size_t> model_split = OffsetAfterField(model_rest, kModelGraphField);
  if (!graph_split || !model_split) return Internal("cannot split the serialized model");
  const uint64_t graph_size = graph_rest.size() + initializers_size;
  const uint64_t total = model_rest.size() + LengthDelimitedFieldSize(kModelGraphField, graph_size);
  if (total > static_cast<uint64_t>(std::numeric_limits<int>::max()))
    return InvalidArgument(external ? "model protobuf would exceed 2 GB even with external data"
                                    : "model protobuf would exceed 2 GB; write with external data");
  {
    std::ofstream out(model_file.temp(), std::ios::binary | std::ios::trunc);
    if (!out) return NotFound("cannot create '" + path + "': " + std::strerror(errno));
    std::string head(model_rest, 0, *model_split);
    AppendLengthDelimitedHeader(&head, kModelGraphField, graph_size);
    head.append(graph_rest, 0, *graph_split);
    out.write(head.data(), head.size());
    for (size_t i = 0; i < headers.size(); ++i) {
      const Tensor* t = inline_data[i];
      std::string prefix;
      const uint64_t tensor_size = headers[i].size() + (t ? LengthDelimitedFieldSize(kTensorRawDataField, t->nbytes()) : 0);
      AppendLengthDelimitedHeader(&prefix, kGraphInitializerField, tensor_size);
      prefix += headers[i];
      if (t) AppendLengthDelimitedHeader(&prefix, kTensorRawDataField, t->nbytes());
      out.write(prefix.data(), prefix.size());
      if (t) QC_RETURN_IF_ERROR(StreamTensorBytes(*t, out, g.initializer_names()[i]).WithContext(path));
    }
    out.write(graph_rest.data() + *graph_split, graph_rest.size() - *graph_split);
    out.write(model_rest.data() + *model_split, model_rest.size() - *model_split);
    out.close();
    if (!out) return DataLoss("writing '" + path + "' failed (disk full?)");
  }
  if (data_file) QC_RETURN_IF_ERROR(data_file->Commit());
  return model_file.Commit();
}

}  // namespace qc

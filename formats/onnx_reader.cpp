// ONNX protobuf -> IR. Every field that comes from the file is validated before use.
#include "formats/onnx_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <string_view>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include "formats/onnx_wire.h"
#include "onnx/onnx_pb.h"

namespace qc {
namespace {

namespace fs = std::filesystem;

// Upper bound on elements of one tensor: 2^40 is far beyond any real model and keeps
// size arithmetic clear of int64 overflow.
constexpr int64_t kMaxElements = int64_t{1} << 40;
// Subgraph nesting deeper than this is certainly malformed (and would exhaust the stack).
constexpr int kMaxGraphDepth = 64;

// Inline raw_data at least this large is read in place from the mapped model file instead of
// being copied by protobuf (smaller tensors are not worth a view of their own).
constexpr size_t kMinViewBytes = 4096;

/// A tensor over the `nbytes` bytes at `data` inside `owner`, a read-only file mapping (`mapped`)
/// or a heap buffer: a view where the bytes can be used in place, else an owned copy. Bools other
/// than 0/1 are normalised (any other value is undefined behaviour when read as `bool`), and data
/// misaligned for its dtype is copied so kernels can rely on natural alignment.
Tensor TensorOverBytes(DType dtype, const Shape& shape, const std::shared_ptr<const void>& owner, const char* data,
                       int64_t nbytes, bool mapped) {
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(data);
  const bool bad_bools = dtype == DType::kBool && std::any_of(bytes, bytes + nbytes, [](uint8_t b) { return b > 1; });
  if (!bad_bools && Tensor::IsAlignedFor(dtype, data)) {
    if (mapped) return Tensor::Mapped(dtype, shape, owner, data);
    return Tensor(dtype, shape, owner, data);
  }
  Tensor t(dtype, shape);
  if (nbytes > 0) std::memcpy(t.mutable_raw(), data, nbytes);
  if (bad_bools)
    for (int64_t i = 0; i < nbytes; ++i) static_cast<uint8_t*>(t.mutable_raw())[i] = bytes[i] != 0;
  return t;
}

/// Memory-mapped (or read) external-data files, shared by all tensors that point into them.
class ExternalDataCache {
 public:
  ExternalDataCache(std::string base_dir, bool map) : base_dir_(std::move(base_dir)), map_(map) {}

  StatusOr<Tensor> Load(const std::string& tensor_name, const std::string& location, int64_t offset,
                        int64_t length, DType dtype, const Shape& shape) {
    if (location.empty()) return InvalidArgument("tensor '" + tensor_name + "': external data without 'location'");
    fs::path rel(location);
    if (rel.is_absolute()) return InvalidArgument("tensor '" + tensor_name + "': external data location '" + location + "' must be relative to the model");
    for (const auto& part : rel)
      if (part == "..") return InvalidArgument("tensor '" + tensor_name + "': external data location '" + location + "' escapes the model directory");
    std::string path = (fs::path(base_dir_) / rel).string();
    QC_ASSIGN_OR_RETURN(const File* file, Open(path, tensor_name));
    int64_t need = DTypeStorageBytes(dtype, NumElements(shape));
    if (length >= 0 && length != need)
      return DataLoss("tensor '" + tensor_name + "': external data length " + std::to_string(length) + " but shape " + ShapeToString(shape) + " of " + DTypeName(dtype) + " needs " + std::to_string(need) + " bytes");
    if (offset < 0 || offset > file->size || need > file->size - offset)
      return DataLoss("tensor '" + tensor_name + "': external data file '" + location + "' is " + std::to_string(file->size) + " bytes, too short for " + std::to_string(need) + " bytes at offset " + std::to_string(offset));
    const char* base = static_cast<const char*>(file->data.get());
    // Mapped pages are read-only and shared: bools other than 0/1 and misaligned data get a copy.
    return TensorOverBytes(dtype, shape, file->data, base + offset, need, file->mapped);
  }

 private:
  struct File {
    std::shared_ptr<const void> data;
    int64_t size = 0;
    bool mapped = false;  // data is a file mapping (else a heap copy)
  };

  StatusOr<const File*> Open(const std::string& path, const std::string& tensor_name) {
    auto it = files_.find(path);
    if (it != files_.end()) return &it->second;
    // O_NONBLOCK: opening a FIFO named by a hostile model must not hang (it is refused below).
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NotFound("tensor '" + tensor_name + "': cannot open external data file '" + path + "': " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      return InvalidArgument("external data '" + path + "' is not a regular file");
    }
    File f;
    f.size = st.st_size;
    if (f.size == 0) {
      f.data = std::shared_ptr<const void>(new char[1], [](const void* p) { delete[] static_cast<const char*>(p); });
    } else if (map_) {
      void* p = ::mmap(nullptr, f.size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        return Internal("cannot mmap '" + path + "': " + std::strerror(errno));
      }
      size_t len = f.size;
      f.data = std::shared_ptr<const void>(p, [len](const void* q) { ::munmap(const_cast<void*>(q), len); });
      f.mapped = true;
    } else {
      char* buf = new char[f.size];
      f.data = std::shared_ptr<const void>(buf, [](const void* q) { delete[] static_cast<const char*>(q); });
      int64_t done = 0;
      while (done < f.size) {
        ssize_t r = ::read(fd, buf + done, f.size - done);
        if (r <= 0) {
          ::close(fd);
          return DataLoss("cannot read external data '" + path + "'");
        }
        done += r;
      }
    }
    ::close(fd);
    return &files_.emplace(path, std::move(f)).first->second;
  }

  std::string base_dir_;
  bool map_;
  std::map<std::string, File> files_;
};

/// Bool storage is one byte that must be 0 or 1 (any other value is undefined behaviour when read
/// as `bool`); files may hold any byte, so nonzero becomes 1.
void NormalizeBools(uint8_t* data, int64_t n) {
  for (int64_t i = 0; i < n; ++i) data[i] = data[i] != 0;
}

/// Number of values in the typed field that holds `dtype` (ONNX widens small types into int32_data).
int64_t TypedValueCount(const onnx::TensorProto& tp, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return tp.float_data_size();
    case DType::kFloat64: return tp.double_data_size();
    case DType::kInt64: return tp.int64_data_size();
    case DType::kUInt32:
    case DType::kUInt64: return tp.uint64_data_size();
    default: return tp.int32_data_size();
  }
}

template <typename Src, typename Dst>
void CopyConverted(const Src& src, Dst* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Dst>(src[static_cast<int>(i)]);
}

/// Bytes of a TensorProto's raw_data that were cut out of the parsed message and are read from
/// the model's bytes instead (see StripInitializerData): viewed in place in a mapped file, copied
/// once from a caller's buffer.
struct RawDataView {
  std::shared_ptr<const void> file;  // the mapping; null: `data` is borrowed and must be copied
  const char* data = nullptr;
  int64_t size = 0;
};

StatusOr<Tensor> ConvertTensor(const onnx::TensorProto& tp, ExternalDataCache* external,
                               const RawDataView* raw_view = nullptr) {
  const std::string name = tp.name();
  if (!IsSupportedDType(tp.data_type()))
    return Unimplemented("tensor '" + name + "': unsupported data type " + std::to_string(tp.data_type()));
  DType dtype = static_cast<DType>(tp.data_type());
  Shape shape;
  int64_t numel = 1;
  for (int64_t d : tp.dims()) {
    if (d < 0) return InvalidArgument("tensor '" + name + "': negative dimension " + std::to_string(d));
    if (d > 0 && numel > kMaxElements / d) return InvalidArgument("tensor '" + name + "': too many elements");
    numel *= d;
    shape.push_back(d);
  }
  if (tp.has_segment()) return Unimplemented("tensor '" + name + "': segmented tensors are not supported");
  const int64_t nbytes = DTypeStorageBytes(dtype, numel);

  if (tp.data_location() == onnx::TensorProto::EXTERNAL) {
    if (!external) return InvalidArgument("tensor '" + name + "': external data not allowed here");
    std::string location;
    int64_t offset = 0, length = -1;
    for (const auto& kv : tp.external_data()) {
      char* end = nullptr;
      if (kv.key() == "location") {
        location = kv.value();
      } else if (kv.key() == "offset" || kv.key() == "length") {
        errno = 0;
        long long v = std::strtoll(kv.value().c_str(), &end, 10);
        if (kv.value().empty() || *end != '\0' || errno != 0 || v < 0)
          return InvalidArgument("tensor '" + name + "': bad external data " + kv.key() + " '" + kv.value() + "'");
        (kv.key() == "offset" ? offset : length) = v;
      }
    }
    return external->Load(name, location, offset, length, dtype, shape);
  }

  if (raw_view) {
    if (raw_view->size != nbytes)
      return DataLoss("tensor '" + name + "': raw_data has " + std::to_string(raw_view->size) + " bytes, shape " + ShapeToString(shape) + " of " + DTypeName(dtype) + " needs " + std::to_string(nbytes));
    if (raw_view->file) return TensorOverBytes(dtype, shape, raw_view->file, raw_view->data, nbytes, /*mapped=*/true);
    Tensor t(dtype, shape);
    if (nbytes > 0) std::memcpy(t.mutable_raw(), raw_view->data, nbytes);
    if (dtype == DType::kBool) NormalizeBools(static_cast<uint8_t*>(t.mutable_raw()), nbytes);
    return t;
  }
  if (tp.has_raw_data()) {
    if (static_cast<int64_t>(tp.raw_data().size()) != nbytes)
      return DataLoss("tensor '" + name + "': raw_data has " + std::to_string(tp.raw_data().size()) + " bytes, shape " + ShapeToString(shape) + " of " + DTypeName(dtype) + " needs " + std::to_string(nbytes));
    Tensor t(dtype, shape);
    if (nbytes > 0) std::memcpy(t.mutable_raw(), tp.raw_data().data(), nbytes);
    if (dtype == DType::kBool) NormalizeBools(static_cast<uint8_t*>(t.mutable_raw()), nbytes);
    return t;
  }
  // Typed fields: ONNX stores small types widened into int32_data.
  auto expect = [&](int64_t have) -> Status {
    if (have != numel)
      return DataLoss("tensor '" + name + "': has " + std::to_string(have) + " values, shape " + ShapeToString(shape) + " needs " + std::to_string(numel));
    return Status::Ok();
  };
  // Count before allocating: a few bytes of protobuf can declare 2^40 elements and no data.
  const bool packed = dtype == DType::kInt4 || dtype == DType::kUInt4;  // int32_data holds bytes
  if (TypedValueCount(tp, dtype) != (packed ? nbytes : numel))
    return DataLoss("tensor '" + name + "': has " + std::to_string(TypedValueCount(tp, dtype)) + (packed ? " bytes" : " values") + ", shape " + ShapeToString(shape) + " of " + DTypeName(dtype) + " needs " + std::to_string(packed ? nbytes : numel));
  Tensor t(dtype, shape);
  void* out = t.mutable_raw();
  switch (dtype) {
    case DType::kFloat32:
      QC_RETURN_IF_ERROR(expect(tp.float_data_size()));
      CopyConverted(tp.float_data(), static_cast<float*>(out), numel);
      break;
    case DType::kFloat64:
      QC_RETURN_IF_ERROR(expect(tp.double_data_size()));
      CopyConverted(tp.double_data(), static_cast<double*>(out), numel);
      break;
    case DType::kInt64:
      QC_RETURN_IF_ERROR(expect(tp.int64_data_size()));
      CopyConverted(tp.int64_data(), static_cast<int64_t*>(out), numel);
      break;
    case DType::kUInt32:
    case DType::kUInt64:
      QC_RETURN_IF_ERROR(expect(tp.uint64_data_size()));
      if (dtype == DType::kUInt32) CopyConverted(tp.uint64_data(), static_cast<uint32_t*>(out), numel);
      else CopyConverted(tp.uint64_data(), static_cast<uint64_t*>(out), numel);
      break;
    case DType::kInt32: QC_RETURN_IF_ERROR(expect(tp.int32_data_size())); CopyConverted(tp.int32_data(), static_cast<int32_t*>(out), numel); break;
    case DType::kInt16: QC_RETURN_IF_ERROR(expect(tp.int32_data_size())); CopyConverted(tp.int32_data(), static_cast<int16_t*>(out), numel); break;
    case DType::kUInt16:
    case DType::kFloat16:
    case DType::kBFloat16:
      QC_RETURN_IF_ERROR(expect(tp.int32_data_size()));
      CopyConverted(tp.int32_data(), static_cast<uint16_t*>(out), numel);
      break;
    case DType::kInt8: QC_RETURN_IF_ERROR(expect(tp.int32_data_size())); CopyConverted(tp.int32_data(), static_cast<int8_t*>(out), numel); break;
    case DType::kUInt8: QC_RETURN_IF_ERROR(expect(tp.int32_data_size())); CopyConverted(tp.int32_data(), static_cast<uint8_t*>(out), numel); break;
    case DType::kBool:
      QC_RETURN_IF_ERROR(expect(tp.int32_data_size()));
      for (int64_t i = 0; i < numel; ++i) static_cast<uint8_t*>(out)[i] = tp.int32_data(i) != 0;
      break;
    case DType::kInt4:
    case DType::kUInt4: {
      // int32_data holds packed bytes (two 4-bit values each).
      if (tp.int32_data_size() != nbytes) return DataLoss("tensor '" + name + "': int4 data has wrong length");
      CopyConverted(tp.int32_data(), static_cast<uint8_t*>(out), nbytes);
      break;
    }
    default:
      return Unimplemented("tensor '" + name + "': unsupported data type " + DTypeName(dtype));
  }
  return t;
}

ValueInfo ConvertValueInfo(const onnx::ValueInfoProto& vi) {
  ValueInfo v;
  v.name = vi.name();
  v.doc_string = vi.doc_string();
  if (vi.type().has_tensor_type()) {
    const auto& tt = vi.type().tensor_type();
    v.dtype = static_cast<DType>(tt.elem_type());
    if (tt.has_shape()) {
      v.has_shape = true;
      for (const auto& d : tt.shape().dim()) {
        Dim dim;
        if (d.has_dim_value()) dim.value = d.dim_value();
        if (d.has_dim_param()) dim.param = d.dim_param();
        v.shape.push_back(dim);
      }
    }
  }
  return v;
}

struct Converter {
  ExternalDataCache* external;
  // The model's bytes (mapped when `file` is set) and the raw_data cut from the main graph's
  // initializers (null when nothing was cut).
  std::shared_ptr<const void> file;
  const char* bytes = nullptr;
  const StrippedModel* stripped = nullptr;

  Status ConvertAttribute(const onnx::AttributeProto& ap, Attribute* a, int depth) {
    a->ref_attr_name = ap.ref_attr_name();
    a->type = static_cast<Attribute::Type>(ap.type());
    switch (ap.type()) {
      case onnx::AttributeProto::FLOAT: a->f = ap.f(); break;
      case onnx::AttributeProto::INT: a->i = ap.i(); break;
      case onnx::AttributeProto::STRING: a->s = ap.s(); break;
      case onnx::AttributeProto::TENSOR: { QC_ASSIGN_OR_RETURN(a->t, ConvertTensor(ap.t(), external)); break; }
      case onnx::AttributeProto::GRAPH: {
        a->g = std::make_shared<Graph>();
        QC_RETURN_IF_ERROR(ConvertGraph(ap.g(), a->g.get(), depth + 1));
        break;
      }
      case onnx::AttributeProto::FLOATS: a->floats.assign(ap.floats().begin(), ap.floats().end()); break;
      case onnx::AttributeProto::INTS: a->ints.assign(ap.ints().begin(), ap.ints().end()); break;
      case onnx::AttributeProto::STRINGS: a->strings.assign(ap.strings().begin(), ap.strings().end()); break;
      case onnx::AttributeProto::TENSORS:
        for (const auto& tp : ap.tensors()) {
          QC_ASSIGN_OR_RETURN(Tensor t, ConvertTensor(tp, external));
          a->tensors.push_back(std::move(t));
        }
        break;
      case onnx::AttributeProto::GRAPHS:
        for (const auto& gp : ap.graphs()) {
          auto g = std::make_shared<Graph>();
          QC_RETURN_IF_ERROR(ConvertGraph(gp, g.get(), depth + 1));
          a->graphs.push_back(std::move(g));
        }
        break;
      case onnx::AttributeProto::UNDEFINED:
        // Old exporters omit the type; infer it from the populated field.
        if (ap.has_f()) { a->type = Attribute::Type::kFloat; a->f = ap.f(); }
        else if (ap.has_i()) { a->type = Attribute::Type::kInt; a->i = ap.i(); }
        else if (ap.has_s()) { a->type = Attribute::Type::kString; a->s = ap.s(); }
        else if (ap.ints_size()) { a->type = Attribute::Type::kInts; a->ints.assign(ap.ints().begin(), ap.ints().end()); }
        else if (ap.floats_size()) { a->type = Attribute::Type::kFloats; a->floats.assign(ap.floats().begin(), ap.floats().end()); }
        else if (ap.has_t()) { a->type = Attribute::Type::kTensor; QC_ASSIGN_OR_RETURN(a->t, ConvertTensor(ap.t(), external)); }
        else if (!ap.has_ref_attr_name()) return InvalidArgument("attribute '" + ap.name() + "' has no type and no value");
        break;
      default:
        return Unimplemented("attribute '" + ap.name() + "' has unsupported type " + std::to_string(ap.type()) + " (sparse tensors / type protos)");
    }
    return Status::Ok();
  }

  Status ConvertNode(const onnx::NodeProto& np, Node* n, int depth) {
    n->name = np.name();
    n->op_type = np.op_type();
    n->domain = np.domain() == "ai.onnx" ? "" : np.domain();
    n->doc_string = np.doc_string();
    if (n->op_type.empty()) return InvalidArgument("a node named '" + n->name + "' has no op_type");
    n->inputs.assign(np.input().begin(), np.input().end());
    n->outputs.assign(np.output().begin(), np.output().end());
    for (const auto& ap : np.attribute()) {
      Attribute a;
      QC_RETURN_IF_ERROR(ConvertAttribute(ap, &a, depth).WithContext(n->Describe()));
      if (!n->attributes.emplace(ap.name(), std::move(a)).second)
        return InvalidArgument(n->Describe() + ": duplicate attribute '" + ap.name() + "'");
    }
    return Status::Ok();
  }

  Status ConvertGraph(const onnx::GraphProto& gp, Graph* g, int depth) {
    if (depth > kMaxGraphDepth) return InvalidArgument("subgraphs nested deeper than " + std::to_string(kMaxGraphDepth));
    g->name = gp.name();
    g->doc_string = gp.doc_string();
    if (gp.sparse_initializer_size() > 0) return Unimplemented("graph '" + gp.name() + "': sparse initializers are not supported");
    const bool views = depth == 0 && stripped != nullptr;
    if (views && stripped->raw_data.size() != static_cast<size_t>(gp.initializer_size()))
      return Internal("graph '" + gp.name() + "': the wire scan found " + std::to_string(stripped->raw_data.size()) +
                      " initializers, protobuf " + std::to_string(gp.initializer_size()));
    for (int i = 0; i < gp.initializer_size(); ++i) {
      const onnx::TensorProto& tp = gp.initializer(i);
      if (tp.name().empty()) return InvalidArgument("graph '" + gp.name() + "': an initializer has no name");
      if (g->FindInitializer(tp.name())) return InvalidArgument("duplicate initializer '" + tp.name() + "'");
      std::optional<RawDataView> view;
      if (views && stripped->raw_data[i]) {
        const StrippedModel::Range& r = *stripped->raw_data[i];
        view = RawDataView{file, bytes + r.offset, static_cast<int64_t>(r.size)};
      }
      QC_ASSIGN_OR_RETURN(Tensor t, ConvertTensor(tp, external, view ? &*view : nullptr));
      g->SetInitializer(tp.name(), std::move(t));
    }
    for (const auto& vi : gp.input()) g->inputs.push_back(ConvertValueInfo(vi));
    for (const auto& vi : gp.output()) g->outputs.push_back(ConvertValueInfo(vi));
    for (const auto& vi : gp.value_info()) g->value_infos.push_back(ConvertValueInfo(vi));
    g->nodes.resize(gp.node_size());
    for (int i = 0; i < gp.node_size(); ++i) QC_RETURN_IF_ERROR(ConvertNode(gp.node(i), &g->nodes[i], depth));
    return Status::Ok();
  }
};

StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return NotFound("cannot open '" + path + "': no such file");
  if (fs::is_directory(path, ec)) return InvalidArgument("'" + path + "' is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLoss("error reading '" + path + "'");
  return ss.str();
}

/// The whole file mapped read-only, or nullptr when it cannot be mapped (not a regular file, empty,
/// unreadable): the caller then reads it, which reports any error.
std::shared_ptr<const void> MapWholeFile(const std::string& path, int64_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return nullptr;
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
    ::close(fd);
    return nullptr;
  }
  void* p = ::mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return nullptr;
  const size_t len = st.st_size;
  *size = st.st_size;
  return std::shared_ptr<const void>(p, [len](const void* q) { ::munmap(const_cast<void*>(q), len); });
}

template <typename Proto>
bool ParseProto(std::string_view bytes, Proto* proto) {
  google::protobuf::io::ArrayInputStream raw(bytes.data(), static_cast<int>(bytes.size()));
  google::protobuf::io::CodedInputStream coded(&raw);
  coded.SetTotalBytesLimit(std::numeric_limits<int>::max());
  coded.SetRecursionLimit(kMaxGraphDepth * 4);
  return proto->ParseFromCodedStream(&coded) && coded.ConsumedEntireMessage();
}

}  // namespace

namespace {

/// Parses a ModelProto. Large inline weights are cut out of the message before protobuf sees it
/// (protobuf would copy them, and the IR again): with `file` (a mapping holding `bytes`) they
/// become views of the mapping, else they are copied once.
StatusOr<Model> ParseModelBytes(std::string_view bytes, std::shared_ptr<const void> file, const std::string& base_dir,
                                const OnnxReadOptions& options) {
  if (bytes.size() >= static_cast<size_t>(std::numeric_limits<int>::max()))
    return InvalidArgument("model protobuf is over 2 GB; weights must be stored as external data");
  std::optional<StrippedModel> stripped;
  stripped = StripInitializerData(bytes, kMinViewBytes);
  onnx::ModelProto mp;
  if (bytes.empty() || !ParseProto(stripped ? std::string_view(stripped->skeleton) : bytes, &mp))
    return InvalidArgument("not a valid ONNX model (protobuf parse failed: truncated or not an .onnx file)");
  if (!mp.has_graph()) return InvalidArgument("not a valid ONNX model: no graph");
  Model m;
  m.ir_version = mp.ir_version();
  m.producer_name = mp.producer_name();
  m.producer_version = mp.producer_version();
  m.domain = mp.domain();
  m.model_version = mp.model_version();
  m.doc_string = mp.doc_string();
  for (const auto& o : mp.opset_import()) m.opset_imports.push_back({o.domain() == "ai.onnx" ? "" : o.domain(), o.version()});
  for (const auto& kv : mp.metadata_props()) m.metadata_props.emplace_back(kv.key(), kv.value());
  if (m.DefaultOpset() == 0 && mp.opset_import_size() == 0) m.opset_imports.push_back({"", 1});
  ExternalDataCache external(base_dir, options.map_external_data);
  Converter conv{&external, file, bytes.data(), stripped ? &*stripped : nullptr};
  QC_RETURN_IF_ERROR(conv.ConvertGraph(mp.graph(), &m.graph, 0));
  for (const auto& fp : mp.functions()) {
    Function f;
    f.name = fp.name();
    f.domain = fp.domain();
    f.doc_string = fp.doc_string();
    f.inputs.assign(fp.input().begin(), fp.input().end());
    f.outputs.assign(fp.output().begin(), fp.output().end());
    f.attribute_names.assign(fp.attribute().begin(), fp.attribute().end());
    for (const auto& o : fp.opset_import()) f.opset_imports.push_back({o.domain() == "ai.onnx" ? "" : o.domain(), o.version()});
    f.nodes.resize(fp.node_size());
    for (int i = 0; i < fp.node_size(); ++i) QC_RETURN_IF_ERROR(conv.ConvertNode(fp.node(i), &f.nodes[i], 1));
    m.functions.push_back(std::move(f));
  }
  return m;
}

}  // namespace

StatusOr<Model> ParseOnnxModel(const std::string& bytes, const std::string& base_dir, const OnnxReadOptions& options) {
  return ParseModelBytes(bytes, nullptr, base_dir, options);
}

StatusOr<Model> ReadOnnxModel(const std::string& path, const OnnxReadOptions& options) {
  std::string base_dir = fs::path(path).parent_path().string();
  if (base_dir.empty()) base_dir = ".";
  int64_t size = 0;
  std::shared_ptr<const void> file = options.map_external_data ? MapWholeFile(path, &size) : nullptr;
  std::string bytes;
  if (!file) {
    QC_ASSIGN_OR_RETURN(bytes, ReadWholeFile(path));
  }
  const std::string_view view = file ? std::string_view(static_cast<const char*>(file.get()), size) : std::string_view(bytes);
  auto model = ParseModelBytes(view, file, base_dir, options);
  if (!model.ok()) return model.status().WithContext(path);
  return model;
}

StatusOr<Tensor> ReadTensorProtoFile(const std::string& path) {
  QC_ASSIGN_OR_RETURN(std::string bytes, ReadWholeFile(path));
  onnx::TensorProto tp;
  if (!ParseProto(bytes, &tp)) return InvalidArgument(path + ": not a valid TensorProto");
  auto t = ConvertTensor(tp, nullptr);
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

}  // namespace qc

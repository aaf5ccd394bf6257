// .npy parsing: a magic string, a Python-dict header, then raw C-order data.
#include "formats/npy.h"

#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace qc {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

StatusOr<DType> DTypeFromDescr(const std::string& descr) {
  if (descr.size() < 3) return InvalidArgument("unsupported .npy dtype '" + descr + "'");
  char order = descr[0];
  std::string code = descr.substr(1);
  if (order == '>' && code != "i1" && code != "u1" && code != "b1")
    return Unimplemented("big-endian .npy data ('" + descr + "') is not supported");
  if (code == "f4") return DType::kFloat32;
  if (code == "f8") return DType::kFloat64;
  if (code == "f2") return DType::kFloat16;
  if (code == "i1") return DType::kInt8;
  if (code == "u1") return DType::kUInt8;
  if (code == "i2") return DType::kInt16;
  if (code == "u2") return DType::kUInt16;
  if (code == "i4") return DType::kInt32;
  if (code == "u4") return DType::kUInt32;
  if (code == "i8") return DType::kInt64;
  if (code == "u8") return DType::kUInt64;
  if (code == "b1") return DType::kBool;
  return Unimplemented("unsupported .npy dtype '" + descr + "'");
}

StatusOr<std::string> DescrFromDType(DType t) {
  switch (t) {
    case DType::kFloat32: return std::string("<f4");
    case DType::kFloat64: return std::string("<f8");
    case DType::kFloat16: return std::string("<f2");
    case DType::kInt8: return std::string("|i1");
    case DType::kUInt8: return std::string("|u1");
    case DType::kInt16: return std::string("<i2");
    case DType::kUInt16: return std::string("<u2");
    case DType::kInt32: return std::string("<i4");
    case DType::kUInt32: return std::string("<u4");
    case DType::kInt64: return std::string("<i8");
    case DType::kUInt64: return std::string("<u8");
    case DType::kBool: return std::string("|b1");
    default: return Unimplemented("cannot write dtype " + DTypeName(t) + " to .npy");
  }
}

// Finds `'key':` in the header dict and returns the text after it.
StatusOr<std::string> HeaderValue(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return InvalidArgument(".npy header has no '" + key + "'");
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) return InvalidArgument("malformed .npy header");
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (start == std::string::npos) return InvalidArgument("malformed .npy header");
  return header.substr(start);
}

}  // namespace

StatusOr<Tensor> ParseNpy(const std::string& bytes) {
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) return InvalidArgument("not a .npy file (bad magic)");
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return InvalidArgument("truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    header_start = 12;
  } else {
    return Unimplemented(".npy format version " + std::to_string(major) + " is not supported");
  }
  if (header_start + header_len > bytes.size()) return InvalidArgument("truncated .npy header");
  const std::string header = bytes.substr(header_start, header_len);

  QC_ASSIGN_OR_RETURN(std::string descr_text, HeaderValue(header, "descr"));
  if (descr_text.empty() || descr_text[0] != '\'') return Unimplemented("structured .npy dtypes are not supported");
  size_t descr_end = descr_text.find('\'', 1);
  if (descr_end == std::string::npos) return InvalidArgument("malformed .npy descr");
  QC_ASSIGN_OR_RETURN(DType dtype, DTypeFromDescr(descr_text.substr(1, descr_end - 1)));

  QC_ASSIGN_OR_RETURN(std::string fortran, HeaderValue(header, "fortran_order"));
  if (fortran.rfind("True", 0) == 0) return Unimplemented("Fortran-order .npy arrays are not supported");

  QC_ASSIGN_OR_RETURN(std::string shape_text, HeaderValue(header, "shape"));
  if (shape_text.empty() || shape_text[0] != '(') return InvalidArgument("malformed .npy shape");
  size_t close = shape_text.find(')');
  if (close == std::string::npos) return InvalidArgument("malformed .npy shape");
  Shape shape;
  std::stringstream ss(shape_text.substr(1, close - 1));
  std::string item;
  int64_t numel = 1;
  while (std::getline(ss, item, ',')) {
    size_t a = item.find_first_not_of(' ');
    if (a == std::string::npos) continue;
    char* end = nullptr;
    long long d = std::strtoll(item.c_str() + a, &end, 10);
    if (end == item.c_str() + a || d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d))
      return InvalidArgument("malformed .npy shape '" + shape_text.substr(0, close + 1) + "'");
    numel *= d;
    shape.push_back(d);
  }
  const size_t data_start = header_start + header_len;
  const int64_t nbytes = DTypeStorageBytes(dtype, numel);
  if (static_cast<int64_t>(bytes.size() - data_start) < nbytes)
    return DataLoss("truncated .npy data: " + std::to_string(bytes.size() - data_start) + " bytes for shape " + ShapeToString(shape) + " needing " + std::to_string(nbytes));
  Tensor t(dtype, shape);
  if (nbytes) std::memcpy(t.mutable_raw(), bytes.data() + data_start, nbytes);
  if (dtype == DType::kBool) {
    // A bool byte other than 0/1 is undefined behaviour when read as bool; numpy treats it as true.
    auto* b = static_cast<uint8_t*>(t.mutable_raw());
    for (int64_t i = 0; i < nbytes; ++i) b[i] = b[i] != 0;
  }
  return t;
}

StatusOr<Tensor> ReadNpy(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return NotFound("cannot open '" + path + "': no such file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  auto t = ParseNpy(ss.str());
  if (!t.ok()) return t.status().WithContext(path);
  return t;
}

Status WriteNpy(const Tensor& tensor, const std::string& path) {
  QC_ASSIGN_OR_RETURN(std::string descr, DescrFromDType(tensor.dtype()));
  std::string shape = "(";
  for (size_t i = 0; i < tensor.shape().size(); ++i) shape += std::to_string(tensor.shape()[i]) + (tensor.shape().size() == 1 ? "," : (i + 1 < tensor.shape().size() ? ", " : ""));
  shape += ")";
  std::string header = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Pad so data starts on a 64-byte boundary, header ends with '\n' (format spec).
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  if (header.size() > 65535) return InvalidArgument(".npy header too long");
  const std::string temp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) return NotFound("cannot create '" + path + "'");
    out.write(kMagic, 6);
    out.put(1);
    out.put(0);
    out.put(static_cast<char>(header.size() & 0xff));
    out.put(static_cast<char>(header.size() >> 8));
    out << header;
    out.write(static_cast<const char*>(tensor.raw()), tensor.nbytes());
    out.close();
    if (!out) {
      std::remove(temp.c_str());
      return DataLoss("writing '" + path + "' failed (disk full?)");
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    std::remove(temp.c_str());
    return DataLoss("cannot write '" + path + "'");
  }
  return Status::Ok();
}

}  // namespace qc

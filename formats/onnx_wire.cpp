// Protobuf wire-format surgery on serialized ONNX models (see onnx_wire.h).
#include "formats/onnx_wire.h"

namespace qc {
namespace {

// Field numbers of onnx.proto3 on the path to an initializer's bytes.
constexpr int kModelGraph = 7;         // ModelProto.graph
constexpr int kGraphInitializer = 5;   // GraphProto.initializer
constexpr int kTensorRawData = 9;      // TensorProto.raw_data
constexpr int kWireVarint = 0, kWireFixed64 = 1, kWireLengthDelimited = 2, kWireFixed32 = 5;

struct Cursor {
  const uint8_t* p;
  const uint8_t* end;
};

bool ReadVarint(Cursor* c, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (c->p >= c->end) return false;
    const uint8_t byte = *c->p++;
    *v |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) return true;
  }
  return false;  // more than 10 bytes
}

// One field: its number, wire type, whole extent, and payload for length-delimited fields.
struct Field {
  int number = 0;
  int wire = 0;
  const uint8_t* begin = nullptr;  // the key
  const uint8_t* end = nullptr;    // past the value
  const uint8_t* payload = nullptr;
  size_t payload_size = 0;
};

bool NextField(Cursor* c, Field* f) {
  f->begin = c->p;
  uint64_t key;
  if (!ReadVarint(c, &key)) return false;
  f->number = static_cast<int>(key >> 3);
  f->wire = static_cast<int>(key & 7);
  if (f->number <= 0 || (key >> 3) > (uint64_t{1} << 29)) return false;
  const size_t left = static_cast<size_t>(c->end - c->p);
  switch (f->wire) {
    case kWireVarint: {
      uint64_t ignored;
      if (!ReadVarint(c, &ignored)) return false;
      break;
    }
    case kWireFixed64:
      if (left < 8) return false;
      c->p += 8;
      break;
    case kWireFixed32:
      if (left < 4) return false;
      c->p += 4;
      break;
    case kWireLengthDelimited: {
      uint64_t size;
      if (!ReadVarint(c, &size)) return false;
      if (size > static_cast<uint64_t>(c->end - c->p)) return false;
      f->payload = c->p;
      f->payload_size = static_cast<size_t>(size);
      c->p += size;
      break;
    }
    default:
      return false;  // groups (3, 4) are not used by ONNX; anything else is malformed
  }
  f->end = c->p;
  return true;
}

class Stripper {
 public:
  Stripper(std::string_view bytes, size_t min_bytes)
      : base_(reinterpret_cast<const uint8_t*>(bytes.data())), size_(bytes.size()), min_bytes_(min_bytes) {}

  std::optional<StrippedModel> Run() {
    StrippedModel out;
    if (!Message(base_, base_ + size_, 0, &out.skeleton, &out)) return std::nullopt;
    return out;
  }

 private:
  // Copies the message in [begin, end) to `out`, descending along model -> graph -> initializer
  // (depth 0, 1, 2) and cutting large raw_data at depth 2.
  bool Message(const uint8_t* begin, const uint8_t* end, int depth, std::string* out, StrippedModel* result) {
    Cursor c{begin, end};
    bool seen_raw = false;
    std::optional<StrippedModel::Range> cut;
    while (c.p < c.end) {
      Field f;
      if (!NextField(&c, &f)) return false;
      const bool descend = f.wire == kWireLengthDelimited &&
                           ((depth == 0 && f.number == kModelGraph) || (depth == 1 && f.number == kGraphInitializer));
      if (descend) {
        std::string inner;
        if (!Message(f.payload, f.payload + f.payload_size, depth + 1, &inner, result)) return false;
        AppendLengthDelimitedHeader(out, f.number, inner.size());
        out->append(inner);
        continue;
      }
      if (depth == 2 && f.number == kTensorRawData) {
        if (f.wire != kWireLengthDelimited || seen_raw) return false;  // let protobuf decide
        seen_raw = true;
        if (f.payload_size >= min_bytes_ && f.payload_size > 0) {
          cut = StrippedModel::Range{static_cast<size_t>(f.payload - base_), f.payload_size};
          continue;
        }
      }
      out->append(reinterpret_cast<const char*>(f.begin), static_cast<size_t>(f.end - f.begin));
    }
    if (depth == 2) result->raw_data.push_back(cut);
    return true;
  }

  const uint8_t* base_;
  size_t size_;
  size_t min_bytes_;
};

}  // namespace

std::optional<StrippedModel> StripInitializerData(std::string_view bytes, size_t min_bytes) {
  return Stripper(bytes, min_bytes).Run();
}

size_t VarintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendLengthDelimitedHeader(std::string* out, int field, uint64_t size) {
  AppendVarint(out, (static_cast<uint64_t>(field) << 3) | kWireLengthDelimited);
  AppendVarint(out, size);
}

std::optional<size_t> OffsetAfterField(std::string_view message, int field) {
  const uint8_t* base = reinterpret_cast<const uint8_t*>(message.data());
  Cursor c{base, base + message.size()};
  while (c.p < c.end) {
    Field f;
    if (!NextField(&c, &f)) return std::nullopt;
    if (f.number > field) return static_cast<size_t>(f.begin - base);
  }
  return message.size();
}

size_t LengthDelimitedFieldSize(int field, uint64_t size) {
  return VarintSize((static_cast<uint64_t>(field) << 3) | kWireLengthDelimited) + VarintSize(size) + size;
}

}  // namespace qc

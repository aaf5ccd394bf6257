// Protobuf wire-format surgery on serialized ONNX models, so weights stored inline (raw_data) can
// be read from a memory-mapped file without protobuf copying them, and written without building
// them into one message.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qc {

/// A serialized ModelProto with the large raw_data fields of its main graph's initializers cut
/// out, and where those bytes lie in the original.
struct StrippedModel {
  /// The ModelProto bytes without the cut fields (enclosing lengths adjusted): parses to the same
  /// model minus those initializers' raw_data.
  std::string skeleton;
  struct Range {
    size_t offset = 0;  // into the original bytes
    size_t size = 0;
  };
  /// One entry per initializer of the main graph, in order; empty where raw_data was kept.
  std::vector<std::optional<Range>> raw_data;
};

/// Cuts every raw_data field of at least `min_bytes` out of the main graph's initializers
/// (ModelProto.graph.initializer[i].raw_data). nullopt when the bytes are not well-formed wire
/// format, use groups, or repeat raw_data within one initializer: callers then parse the bytes
/// as they are, which reports the problem. Never reads outside `bytes`.
std::optional<StrippedModel> StripInitializerData(std::string_view bytes, size_t min_bytes);

/// Wire-format pieces for writing a message field by field.
/// Bytes of a varint.
size_t VarintSize(uint64_t v);
/// Appends the varint encoding of `v`.
void AppendVarint(std::string* out, uint64_t v);
/// Appends the key of length-delimited field `field` followed by the length `size`.
void AppendLengthDelimitedHeader(std::string* out, int field, uint64_t size);
/// Size of a length-delimited field `field` holding `size` bytes, header included.
size_t LengthDelimitedFieldSize(int field, uint64_t size);
/// Offset of the first field numbered above `field` in a serialized message whose fields are in
/// ascending order (what protobuf's serializer writes), message.size() if none; nullopt when the
/// bytes are not well-formed. Splitting there lets a writer put fields `field` in between.
std::optional<size_t> OffsetAfterField(std::string_view message, int field);

}  // namespace qc

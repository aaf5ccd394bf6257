// `qconvert generate`: writes a seeded random-weight decoder in a chosen architecture's export
// pattern, optionally with a byte-level tokenizer.json for it (demo and test models).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "converter/commands.h"
#include "formats/onnx_writer.h"
#include "formats/spill_store.h"
#include "formats/synthetic_models.h"

namespace qc {
namespace {

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
std::string ByteSymbol(int b, int* next_extra) {
  bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = printable ? b : 256 + (*next_extra)++;
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

/// A byte-level BPE tokenizer.json without merges: every byte of the text is one token (ids 0..255).
std::string ByteLevelTokenizerJson() {
  nlohmann::ordered_json vocab;
  int extra = 0;
  for (int b = 0; b < 256; ++b) vocab[ByteSymbol(b, &extra)] = b;
  nlohmann::ordered_json j;
  j["version"] = "1.0";
  j["added_tokens"] = nlohmann::json::array();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                {"vocab", vocab}, {"merges", nlohmann::json::array()}};
  return j.dump();
}

StatusOr<SyntheticArch> ParseArch(const std::string& name) {
  for (SyntheticArch a : AllSyntheticArchs())
    if (name == SyntheticArchName(a)) return a;
  std::string known;
  for (SyntheticArch a : AllSyntheticArchs()) known += (known.empty() ? "" : ", ") + std::string(SyntheticArchName(a));
  return InvalidArgument("unknown --arch '" + name + "' (known: " + known + ")");
}

StatusOr<ExportStyle> ParseStyle(const std::string& name) {
  for (ExportStyle s : {ExportStyle::kDynamo, ExportStyle::kTorchScript, ExportStyle::kOrtFused})
    if (name == ExportStyleName(s)) return s;
  return InvalidArgument("unknown --style '" + name + "' (known: dynamo, torchscript, ort_fused)");
}

}  // namespace

Status RunGenerate(const GenerateOptions& options) {
  SyntheticConfig c;
  QC_ASSIGN_OR_RETURN(c.arch, ParseArch(options.arch));
  QC_ASSIGN_OR_RETURN(c.export_style, ParseStyle(options.style));
  c.vocab = options.vocab;
  c.hidden = options.hidden;
  c.layers = options.layers;
  c.heads = options.heads;
  c.kv_heads = options.kv_heads;
  c.intermediate = options.intermediate;
  c.max_positions = options.max_positions;
  c.seed = options.seed;
  c.inputs = options.mask_and_positions ? SyntheticInputs::kIdsMaskPositions : SyntheticInputs::kIdsOnly;
  // The weights go to a scratch file beside the output as they are drawn and stream from there
  // into the artifact, so models larger than memory can be generated (bench/memory.sh).
  const std::filesystem::path out_dir = std::filesystem::path(options.output).parent_path();
  QC_ASSIGN_OR_RETURN(std::shared_ptr<SpillStore> spill, SpillStore::Create(out_dir.empty() ? "." : out_dir.string()));
  QC_ASSIGN_OR_RETURN(Model model, BuildSyntheticDecoder(c, spill));
  OnnxWriteOptions wo;
  wo.external_data = options.external_data;
  QC_RETURN_IF_ERROR(WriteOnnxModel(model, options.output, wo));
  if (!options.tokenizer_output.empty()) {
    if (options.vocab < 256) return InvalidArgument("--tokenizer-out needs --vocab of at least 256 (one id per byte)");
    std::ofstream out(options.tokenizer_output, std::ios::binary | std::ios::trunc);
    out << ByteLevelTokenizerJson();
    if (!out) return DataLoss("cannot write '" + options.tokenizer_output + "'");
  }
  int64_t params = 0;
  for (const auto& name : model.graph.initializer_names()) params += model.graph.FindInitializer(name)->numel();
  std::printf("wrote %s: synthetic %s (%s export), %lld parameters\n", options.output.c_str(), options.arch.c_str(),
              options.style.c_str(), static_cast<long long>(params));
  return Status::Ok();
}

}  // namespace qc

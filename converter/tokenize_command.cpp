// `qconvert tokenize` and the shared text-or-ids loader.
#include <filesystem>
#include <fstream>
#include <sstream>

#include "converter/commands.h"
#include "formats/npy.h"
#include "formats/tokenizer.h"

namespace qc {
namespace {

// A file saved with Windows line endings (every '\n' preceded by '\r') is read as text with '\n'
// line endings, as Python's text mode and llama.cpp's perplexity tool read it. A stray "\r\n"
// inside an LF file is content and is kept.
std::string NormalizeWindowsLineEndings(std::string text) {
  size_t lf = 0, crlf = 0;
  for (size_t i = 0; i < text.size(); ++i)
    if (text[i] == '\n') {
      ++lf;
      crlf += i > 0 && text[i - 1] == '\r';
    }
  if (lf == 0 || crlf != lf) return text;
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i)
    if (!(text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n')) out += text[i];
  return out;
}

StatusOr<std::string> ReadText(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return NotFound("cannot open '" + path + "': no such file");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in && !in.eof()) return DataLoss("error reading '" + path + "'");
  std::string text = ss.str();
  if (text.empty()) return InvalidArgument("'" + path + "' is empty");
  return NormalizeWindowsLineEndings(std::move(text));
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

StatusOr<std::vector<int32_t>> LoadIds(const std::string& data, const std::string& tokenizer_path) {
  if (EndsWith(data, ".npy")) {
    QC_ASSIGN_OR_RETURN(Tensor t, ReadNpy(data));
    if (t.dtype() != DType::kInt32 && t.dtype() != DType::kInt64)
      return InvalidArgument(data + ": expected int32/int64 token ids, got " + DTypeName(t.dtype()));
    std::vector<int32_t> ids;
    ids.reserve(t.numel());
    for (int64_t v : t.ToInt64s()) {
      if (v < 0 || v > INT32_MAX) return InvalidArgument(data + ": token id " + std::to_string(v) + " is out of range");
      ids.push_back(static_cast<int32_t>(v));
    }
    if (ids.empty()) return InvalidArgument(data + ": no token ids");
    return ids;
  }
  if (tokenizer_path.empty()) return InvalidArgument("'" + data + "' is text; pass --tokenizer tokenizer.json (or give .npy ids)");
  QC_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromFile(tokenizer_path));
  QC_ASSIGN_OR_RETURN(std::string text, ReadText(data));
  return tokenizer.Encode(text);
}

Status RunTokenize(const TokenizeOptions& options) {
  QC_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromFile(options.tokenizer));
  QC_ASSIGN_OR_RETURN(std::string text, ReadText(options.text));
  QC_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tokenizer.Encode(text));
  return WriteNpy(Tensor::FromVector<int32_t>(ids, {static_cast<int64_t>(ids.size())}), options.output);
}

}  // namespace qc

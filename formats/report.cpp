// The quantization report as JSON (schema "qconvert-report/1", documented in docs/REPORT.md).
#include "formats/report.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace qc {
namespace {

using Json = nlohmann::ordered_json;

constexpr char kSchema[] = "qconvert-report/1";

// Unmeasured metrics are -1 in memory and null in the file, so a reader cannot mistake them for values.
Json Metric(double v) { return v == -1 ? Json(nullptr) : Json(v); }

Json FileJson(const std::string& path, const std::string& sha256, int64_t bytes) {
  Json j;
  j["path"] = path;
  j["sha256"] = sha256;
  j["bytes"] = bytes;
  return j;
}

// Typed field access that names the field on error ("layers[3].bits: expected an integer").
class Reader {
 public:
  Reader(const Json& j, std::string where) : j_(j), where_(std::move(where)) {}

  Status Check(const char* key, bool required, bool ok_type, const char* expected) const {
    if (!j_.contains(key)) return required ? InvalidArgument(Field(key) + " is missing") : Status::Ok();
    if (!ok_type) return InvalidArgument(Field(key) + ": expected " + expected);
    return Status::Ok();
  }
  Status String(const char* key, std::string* out, bool required = false) const {
    const bool ok = j_.contains(key) && j_[key].is_string();
    QC_RETURN_IF_ERROR(Check(key, required, ok, "a string"));
    if (ok) *out = j_[key].get<std::string>();
    return Status::Ok();
  }
  template <typename Int>
  Status Integer(const char* key, Int* out, bool required = false) const {
    const bool ok = j_.contains(key) && j_[key].is_number_integer();
    QC_RETURN_IF_ERROR(Check(key, required, ok, "an integer"));
    if (ok) *out = j_[key].get<Int>();
    return Status::Ok();
  }
  // A number, or null for "not measured" (-1).
  Status Number(const char* key, double* out, bool required = false) const {
    const bool ok = j_.contains(key) && (j_[key].is_number() || j_[key].is_null());
    QC_RETURN_IF_ERROR(Check(key, required, ok, "a number or null"));
    if (ok) *out = j_[key].is_null() ? -1.0 : j_[key].get<double>();
    return Status::Ok();
  }
  StatusOr<Reader> Object(const char* key, bool required = false) const {
    static const Json kEmpty = Json::object();
    const bool ok = j_.contains(key) && j_[key].is_object();
    QC_RETURN_IF_ERROR(Check(key, required, ok, "an object"));
    return Reader(ok ? j_[key] : kEmpty, Field(key));
  }
  std::string Field(const char* key) const { return where_.empty() ? key : where_ + "." + key; }
  const Json& json() const { return j_; }

 private:
  const Json& j_;
  std::string where_;
};

Status ParseLayer(const Reader& r, LayerReport* l) {
  QC_RETURN_IF_ERROR(r.String("name", &l->name, true));
  QC_RETURN_IF_ERROR(r.String("weight", &l->weight));
  QC_RETURN_IF_ERROR(r.Integer("k", &l->k));
  QC_RETURN_IF_ERROR(r.Integer("n", &l->n));
  QC_RETURN_IF_ERROR(r.String("pass", &l->pass));
  QC_RETURN_IF_ERROR(r.String("scheme", &l->scheme));
  QC_RETURN_IF_ERROR(r.Integer("bits", &l->bits));
  QC_RETURN_IF_ERROR(r.Integer("group_size", &l->group_size));
  QC_RETURN_IF_ERROR(r.Number("weight_rel_error", &l->weight_rel_error));
  QC_RETURN_IF_ERROR(r.Number("output_rel_error", &l->output_rel_error));
  QC_RETURN_IF_ERROR(r.Number("sqnr_db", &l->sqnr_db));
  QC_RETURN_IF_ERROR(r.Number("damping", &l->damping));
  if (r.json().contains("outliers_kept") && r.json()["outliers_kept"].is_null()) {
    l->outliers_kept = -1;
  } else {
    QC_RETURN_IF_ERROR(r.Integer("outliers_kept", &l->outliers_kept));
  }
  QC_RETURN_IF_ERROR(r.Number("seconds", &l->seconds));
  if (l->seconds < 0) l->seconds = 0;
  if (r.json().contains("notes")) {
    const Json& notes = r.json()["notes"];
    if (!notes.is_array()) return InvalidArgument(r.Field("notes") + ": expected an array of strings");
    for (const Json& n : notes) {
      if (!n.is_string()) return InvalidArgument(r.Field("notes") + ": expected an array of strings");
      l->notes.push_back(n.get<std::string>());
    }
  }
  return Status::Ok();
}

}  // namespace

std::string ReportToJson(const QuantReport& report, bool with_timing) {
  Json j;
  j["schema"] = kSchema;
  j["tool_version"] = report.tool_version;
  j["command"] = report.command;
  // The options are kept verbatim when they are not JSON (they always are when qconvert wrote them).
  Json options = report.options_json.empty() ? Json::object() : Json::parse(report.options_json, nullptr, false);
  j["options"] = options.is_discarded() ? Json(report.options_json) : options;
  j["seed"] = report.seed;
  j["input"] = FileJson(report.input_path, report.input_sha256, report.input_bytes);
  j["output"] = FileJson(report.output_path, report.output_sha256, report.output_bytes);
  Json layers = Json::array();
  int64_t quantized = 0;
  for (const LayerReport& l : report.layers) {
    Json e;
    e["name"] = l.name;
    e["weight"] = l.weight;
    e["k"] = l.k;
    e["n"] = l.n;
    e["pass"] = l.pass;
    e["scheme"] = l.scheme;
    e["bits"] = l.bits;
    e["group_size"] = l.group_size;
    e["weight_rel_error"] = Metric(l.weight_rel_error);
    e["output_rel_error"] = Metric(l.output_rel_error);
    e["sqnr_db"] = Metric(l.sqnr_db);
    e["damping"] = Metric(l.damping);
    e["outliers_kept"] = l.outliers_kept == -1 ? Json(nullptr) : Json(l.outliers_kept);
    e["seconds"] = with_timing ? l.seconds : 0.0;
    e["notes"] = l.notes;
    layers.push_back(std::move(e));
    if (l.bits > 0) ++quantized;
  }
  j["layers"] = std::move(layers);
  Json totals;
  totals["layers"] = static_cast<int64_t>(report.layers.size());
  totals["layers_quantized"] = quantized;
  totals["bytes_before"] = report.input_bytes;
  totals["bytes_after"] = report.output_bytes;
  totals["seconds"] = with_timing ? report.seconds : 0.0;
  j["totals"] = std::move(totals);
  Json ppl;
  ppl["before"] = Metric(report.ppl_before);
  ppl["after"] = Metric(report.ppl_after);
  j["perplexity"] = std::move(ppl);
  return j.dump(2) + "\n";
}

StatusOr<QuantReport> ReportFromJson(const std::string& json) {
  // Copying and dumping a JSON value recurse, so a hostile file nested 100k deep would overflow the
  // stack; reports nest 3 deep (plus whatever "options" holds). The parser itself is iterative.
  constexpr int kMaxDepth = 64;
  bool too_deep = false;
  const Json::parser_callback_t limit_depth = [&](int depth, Json::parse_event_t, Json&) {
    if (depth > kMaxDepth) too_deep = true;
    return !too_deep;  // discarded values are not built
  };
  Json j = Json::parse(json, limit_depth, false);
  if (too_deep) return InvalidArgument("nested more than " + std::to_string(kMaxDepth) + " levels deep");
  if (j.is_discarded()) return InvalidArgument("not valid JSON");
  if (!j.is_object()) return InvalidArgument("expected a JSON object at the top level");
  Reader r(j, "");
  std::string schema;
  QC_RETURN_IF_ERROR(r.String("schema", &schema, true));
  if (schema != kSchema)
    return InvalidArgument("schema is '" + schema + "'; this qconvert reads '" + std::string(kSchema) + "'");
  QuantReport q;
  QC_RETURN_IF_ERROR(r.String("tool_version", &q.tool_version, true));
  QC_RETURN_IF_ERROR(r.String("command", &q.command));
  if (j.contains("options")) q.options_json = j["options"].is_string() ? j["options"].get<std::string>() : j["options"].dump();
  QC_RETURN_IF_ERROR(r.Integer("seed", &q.seed));
  QC_ASSIGN_OR_RETURN(Reader in, r.Object("input"));
  QC_RETURN_IF_ERROR(in.String("path", &q.input_path));
  QC_RETURN_IF_ERROR(in.String("sha256", &q.input_sha256));
  QC_RETURN_IF_ERROR(in.Integer("bytes", &q.input_bytes));
  QC_ASSIGN_OR_RETURN(Reader out, r.Object("output"));
  QC_RETURN_IF_ERROR(out.String("path", &q.output_path));
  QC_RETURN_IF_ERROR(out.String("sha256", &q.output_sha256));
  QC_RETURN_IF_ERROR(out.Integer("bytes", &q.output_bytes));
  if (!j.contains("layers") || !j["layers"].is_array()) return InvalidArgument("layers: expected an array");
  const Json& layers = j["layers"];
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string where = "layers[" + std::to_string(i) + "]";
    if (!layers[i].is_object()) return InvalidArgument(where + ": expected an object");
    LayerReport l;
    QC_RETURN_IF_ERROR(ParseLayer(Reader(layers[i], where), &l));
    q.layers.push_back(std::move(l));
  }
  QC_ASSIGN_OR_RETURN(Reader totals, r.Object("totals"));
  QC_RETURN_IF_ERROR(totals.Number("seconds", &q.seconds));
  if (q.seconds < 0) q.seconds = 0;
  QC_ASSIGN_OR_RETURN(Reader ppl, r.Object("perplexity"));
  QC_RETURN_IF_ERROR(ppl.Number("before", &q.ppl_before));
  QC_RETURN_IF_ERROR(ppl.Number("after", &q.ppl_after));
  return q;
}

StatusOr<QuantReport> ReadReport(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open report '" + path + "': " + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return DataLoss("reading report '" + path + "' failed");
  StatusOr<QuantReport> r = ReportFromJson(ss.str());
  if (!r.ok()) return r.status().WithContext(path);
  return r;
}

}  // namespace qc

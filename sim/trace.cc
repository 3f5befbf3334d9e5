#include "sim/trace.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "nlohmann/json.hpp"

namespace asymcache {
namespace {

using json = nlohmann::json;

class LineError {
 public:
  LineError(absl::string_view origin, int line) : origin_(origin), line_(line) {}
  absl::Status operator()(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(origin_, ":", line_, ": ", what));
  }

 private:
  absl::string_view origin_;
  int line_;
};

bool IsInteger(const json& v) { return v.is_number_integer() || v.is_number_unsigned(); }

absl::Status GetInt(const json& obj, const char* key, int64_t lo, int64_t hi, const LineError& err,
                    int64_t* out) {
  const json& v = obj.at(key);
  if (!IsInteger(v)) return err(absl::StrCat("'", key, "' must be an integer"));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    return err(absl::StrCat("'", key, "' out of range [", lo, ", ", hi, "]"));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) return err(absl::StrCat("'", key, "' out of range [", lo, ", ", hi, "]"));
  *out = x;
  return absl::OkStatus();
}

absl::Status GetSeconds(const json& obj, const char* key, const LineError& err, double* out) {
  const json& v = obj.at(key);
  if (!v.is_number()) return err(absl::StrCat("'", key, "' must be a number"));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < 0) return err(absl::StrCat("'", key, "' must be finite and >= 0"));
  *out = x;
  return absl::OkStatus();
}

absl::Status ParsePart(const json& p, const LineError& err, InputPart* out) {
  if (!p.is_object()) return err("each 'input' part must be an object");
  for (const auto& [key, value] : p.items()) {
    (void)value;
    if (key != "len" && key != "shared" && key != "tokens") {
      return err(absl::StrCat("unknown input part key '", key, "'"));
    }
  }
  constexpr int64_t kMaxPart = std::numeric_limits<int32_t>::max();
  if (p.contains("tokens")) {
    if (p.contains("shared") || p.contains("len")) {
      return err("an input part with 'tokens' takes no 'len' or 'shared'");
    }
    const json& t = p.at("tokens");
    if (!t.is_array() || t.empty()) return err("'tokens' must be a non-empty array of token ids");
    std::vector<TokenId> tokens;
    tokens.reserve(t.size());
    for (const json& id : t) {
      if (!IsInteger(id) || id.get<int64_t>() < 0 ||
          id.get<int64_t>() > std::numeric_limits<TokenId>::max()) {
        return err("'tokens' entries must be integers in [0, 2^31)");
      }
      tokens.push_back(static_cast<TokenId>(id.get<int64_t>()));
    }
    *out = InputPart::Explicit(std::move(tokens));
    return absl::OkStatus();
  }
  if (!p.contains("len")) return err("an input part needs 'len' (or 'tokens')");
  int64_t len = 0;
  if (absl::Status s = GetInt(p, "len", 1, kMaxPart, err, &len); !s.ok()) return s;
  if (p.contains("shared")) {
    const json& id = p.at("shared");
    if (!id.is_string() || id.get<std::string>().empty()) {
      return err("'shared' must be a non-empty string");
    }
    *out = InputPart::Shared(id.get<std::string>(), len);
  } else {
    *out = InputPart::Unique(len);
  }
  return absl::OkStatus();
}

struct ParsedLine {
  std::string session;
  int64_t step = 0;
  bool has_salt = false;
  std::string salt;
  bool has_arrival = false;
  StepSpec spec;
};

absl::Status ParseLine(absl::string_view text, const LineError& err, ParsedLine* out) {
  json obj = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (obj.is_discarded()) return err("not valid JSON");
  if (!obj.is_object()) return err("each line must be a JSON object");
  static const char* const kKeys[] = {"session", "step",   "arrival_s", "salt",    "input",
                                      "output_len", "tool", "tool_s",   "think_s", "last_step"};
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string& key = it.key();
    if (std::find_if(std::begin(kKeys), std::end(kKeys),
                     [&key](const char* k) { return key == k; }) == std::end(kKeys)) {
      return err(absl::StrCat("unknown key '", key, "'"));
    }
  }
  for (const char* required : {"session", "step", "input", "output_len"}) {
    if (!obj.contains(required)) return err(absl::StrCat("missing '", required, "'"));
  }
  if (!obj["session"].is_string() || obj["session"].get<std::string>().empty()) {
    return err("'session' must be a non-empty string");
  }
  out->session = obj["session"].get<std::string>();
  if (absl::Status s = GetInt(obj, "step", 0, 1 << 20, err, &out->step); !s.ok()) return s;
  if (obj.contains("salt")) {
    if (!obj["salt"].is_string()) return err("'salt' must be a string");
    out->has_salt = true;
    out->salt = obj["salt"].get<std::string>();
  }
  StepSpec& spec = out->spec;
  if (obj.contains("arrival_s")) {
    out->has_arrival = true;
    if (absl::Status s = GetSeconds(obj, "arrival_s", err, &spec.arrival_s); !s.ok()) return s;
  }
  if (!obj["input"].is_array()) return err("'input' must be an array of parts");
  for (const json& p : obj["input"]) {
    InputPart part;
    if (absl::Status s = ParsePart(p, err, &part); !s.ok()) return s;
    spec.input.push_back(std::move(part));
  }
  if (absl::Status s = GetInt(obj, "output_len", 1, 1 << 24, err, &spec.output_tokens); !s.ok()) {
    return s;
  }
  if (obj.contains("tool")) {
    if (!obj["tool"].is_string() || obj["tool"].get<std::string>().empty()) {
      return err("'tool' must be a non-empty string");
    }
    spec.tool = obj["tool"].get<std::string>();
    if (!obj.contains("tool_s")) return err("'tool' needs 'tool_s' (its duration in seconds)");
    if (absl::Status s = GetSeconds(obj, "tool_s", err, &spec.tool_s); !s.ok()) return s;
  } else if (obj.contains("tool_s")) {
    return err("'tool_s' without 'tool'");
  }
  if (obj.contains("think_s")) {
    if (!spec.tool.empty()) return err("'think_s' and 'tool' are exclusive");
    if (absl::Status s = GetSeconds(obj, "think_s", err, &spec.think_s); !s.ok()) return s;
  }
  if (obj.contains("last_step")) {
    if (!obj["last_step"].is_boolean()) return err("'last_step' must be true or false");
    spec.last_step = obj["last_step"].get<bool>();
  }
  if (spec.last_step && !spec.tool.empty()) return err("a last step cannot call a tool");
  if (out->step == 0) {
    if (!out->has_arrival) return err("step 0 needs 'arrival_s'");
    if (spec.input_tokens() == 0) return err("step 0 needs a non-empty 'input'");
  } else if (out->has_arrival) {
    return err("only step 0 takes 'arrival_s' (later steps arrive after the previous one's "
               "tool_s/think_s)");
  }
  return absl::OkStatus();
}

// Output keeps a readable field order (session, step first).
using ordered_json = nlohmann::ordered_json;

ordered_json PartToJson(const InputPart& p) {
  ordered_json j = ordered_json::object();
  switch (p.kind) {
    case InputPart::Kind::kExplicit:
      j["tokens"] = p.tokens;
      return j;
    case InputPart::Kind::kShared:
      j["shared"] = p.shared_id;
      break;
    case InputPart::Kind::kUnique:
      break;
  }
  j["len"] = p.length;
  return j;
}

}  // namespace

absl::StatusOr<Workload> ParseTrace(absl::string_view text, absl::string_view origin) {
  struct Pending {
    SessionSpec session;
    std::vector<int> lines;  // line of each step
    int first_line = 0;
  };
  std::vector<Pending> sessions;
  absl::flat_hash_map<std::string, size_t> by_id;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty()) continue;
    const LineError err(origin, line_no);
    ParsedLine parsed;
    if (absl::Status s = ParseLine(line, err, &parsed); !s.ok()) return s;
    parsed.spec.source_line = line_no;
    auto [it, inserted] = by_id.try_emplace(parsed.session, sessions.size());
    if (inserted) {
      sessions.emplace_back();
      sessions.back().session.id = parsed.session;
      sessions.back().first_line = line_no;
    }
    Pending& pending = sessions[it->second];
    SessionSpec& s = pending.session;
    const int64_t expected = static_cast<int64_t>(s.steps.size());
    if (parsed.step != expected) {
      return err(absl::StrCat("session '", s.id, "': expected step ", expected, ", got step ",
                              parsed.step, " (steps must appear in order 0, 1, 2, ...)"));
    }
    if (!s.steps.empty() && s.steps.back().last_step) {
      return err(absl::StrCat("session '", s.id, "': step after the last_step (line ",
                              pending.lines.back(), ")"));
    }
    if (parsed.step == 0) {
      s.salt = parsed.salt;
    } else if (parsed.has_salt && parsed.salt != s.salt) {
      return err(absl::StrCat("session '", s.id, "': salt differs from step 0's"));
    }
    s.steps.push_back(std::move(parsed.spec));
    pending.lines.push_back(line_no);
  }
  for (const Pending& p : sessions) {
    if (!p.session.steps.back().last_step) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin, ":", p.lines.back(), ": session '", p.session.id,
          "' ends without a step marked \"last_step\": true (truncated trace?)"));
    }
  }
  if (sessions.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": no steps in trace"));
  }
  std::stable_sort(sessions.begin(), sessions.end(), [](const Pending& a, const Pending& b) {
    return a.session.steps[0].arrival_s < b.session.steps[0].arrival_s;
  });
  Workload w;
  w.name = std::string(origin);
  w.sessions.reserve(sessions.size());
  for (Pending& p : sessions) w.sessions.push_back(std::move(p.session));
  if (absl::Status s = w.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", s.message()));
  }
  return w;
}

absl::StatusOr<Workload> ReadTraceFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open trace file '", path, "'"));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return ParseTrace(buffer.str(), path);
}

std::string WriteTrace(const Workload& workload) {
  std::string out;
  for (const SessionSpec& s : workload.sessions) {
    for (size_t k = 0; k < s.steps.size(); ++k) {
      const StepSpec& step = s.steps[k];
      ordered_json line = ordered_json::object();
      line["session"] = s.id;
      line["step"] = k;
      if (k == 0) {
        line["arrival_s"] = step.arrival_s;
        line["salt"] = s.salt;
      }
      ordered_json parts = ordered_json::array();
      for (const InputPart& p : step.input) parts.push_back(PartToJson(p));
      line["input"] = std::move(parts);
      line["output_len"] = step.output_tokens;
      if (!step.tool.empty()) {
        line["tool"] = step.tool;
        line["tool_s"] = step.tool_s;
      } else if (step.think_s > 0) {
        line["think_s"] = step.think_s;
      }
      line["last_step"] = step.last_step;
      absl::StrAppend(&out, line.dump(), "\n");
    }
  }
  return out;
}

absl::Status WriteTraceFile(const Workload& workload, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write trace file '", path, "'"));
  out << WriteTrace(workload);
  out.close();
  if (!out) return absl::UnavailableError(absl::StrCat("error writing trace file '", path, "'"));
  return absl::OkStatus();
}

}  // namespace asymcache

#include "sim/workload.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

InputPart InputPart::Unique(int64_t length) {
  InputPart p;
  p.kind = Kind::kUnique;
  p.length = length;
  return p;
}

InputPart InputPart::Shared(std::string id, int64_t length) {
  InputPart p;
  p.kind = Kind::kShared;
  p.shared_id = std::move(id);
  p.length = length;
  return p;
}

InputPart InputPart::Explicit(std::vector<TokenId> tokens) {
  InputPart p;
  p.kind = Kind::kExplicit;
  p.length = static_cast<int64_t>(tokens.size());
  p.tokens = std::move(tokens);
  return p;
}

int64_t StepSpec::input_tokens() const {
  int64_t n = 0;
  for (const InputPart& p : input) n += p.length;
  return n;
}

bool SessionSpec::is_job() const {
  for (const StepSpec& s : steps) {
    if (!s.tool.empty()) return true;
  }
  return false;
}

int64_t Workload::total_steps() const {
  int64_t n = 0;
  for (const SessionSpec& s : sessions) n += static_cast<int64_t>(s.steps.size());
  return n;
}

std::vector<StepLengths> SessionLengths(const SessionSpec& session) {
  std::vector<StepLengths> out;
  out.reserve(session.steps.size());
  int64_t context = 0;
  for (const StepSpec& step : session.steps) {
    StepLengths l;
    context += step.input_tokens();
    l.prompt_tokens = context;
    context += step.output_tokens;
    l.context_tokens = context;
    out.push_back(l);
  }
  return out;
}

int64_t Workload::max_context_tokens() const {
  int64_t m = 0;
  for (const SessionSpec& s : sessions) {
    const auto lengths = SessionLengths(s);
    if (!lengths.empty()) m = std::max(m, lengths.back().context_tokens);
  }
  return m;
}

double Workload::session_rate() const {
  if (sessions.size() < 2) return 0;
  const double span = sessions.back().steps[0].arrival_s - sessions.front().steps[0].arrival_s;
  if (span <= 0) return 0;
  return static_cast<double>(sessions.size() - 1) / span;
}

Workload Workload::WithSessionRate(double rate) const {
  Workload out = *this;
  const double current = session_rate();
  if (current <= 0 || rate <= 0) return out;
  const double scale = current / rate;
  const double origin = sessions.front().steps[0].arrival_s;
  for (SessionSpec& s : out.sessions) {
    s.steps[0].arrival_s = origin + (s.steps[0].arrival_s - origin) * scale;
  }
  return out;
}

absl::Status Workload::Validate() const {
  absl::flat_hash_set<std::string> ids;
  double previous_start = -1;
  for (const SessionSpec& s : sessions) {
    const std::string where = absl::StrCat("session '", s.id, "'");
    if (s.steps.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": no steps"));
    if (!ids.insert(s.id).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate session id"));
    }
    const double start = s.steps[0].arrival_s;
    if (!std::isfinite(start) || start < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": arrival_s must be finite and >= 0"));
    }
    if (start < previous_start) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": sessions must be sorted by start time"));
    }
    previous_start = start;
    if (s.steps[0].input_tokens() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, " step 0: empty input"));
    }
    for (size_t k = 0; k < s.steps.size(); ++k) {
      const StepSpec& step = s.steps[k];
      const std::string at = absl::StrCat(where, " step ", k);
      if (step.output_tokens < 1) {
        return absl::InvalidArgumentError(absl::StrCat(at, ": output_tokens must be >= 1"));
      }
      for (const InputPart& p : step.input) {
        if (p.length <= 0) return absl::InvalidArgumentError(absl::StrCat(at, ": empty input part"));
        if (p.kind == InputPart::Kind::kShared && p.shared_id.empty()) {
          return absl::InvalidArgumentError(absl::StrCat(at, ": shared part without an id"));
        }
        if (p.kind == InputPart::Kind::kExplicit &&
            static_cast<int64_t>(p.tokens.size()) != p.length) {
          return absl::InvalidArgumentError(absl::StrCat(at, ": explicit part length mismatch"));
        }
      }
      for (double t : {step.tool_s, step.think_s}) {
        if (!std::isfinite(t) || t < 0) {
          return absl::InvalidArgumentError(absl::StrCat(at, ": durations must be finite and >= 0"));
        }
      }
      const bool final_step = k + 1 == s.steps.size();
      if (step.last_step != final_step) {
        return absl::InvalidArgumentError(
            absl::StrCat(at, ": last_step must be set exactly on the final step"));
      }
      if (final_step && !step.tool.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(at, ": the final step cannot call a tool"));
      }
    }
  }
  return absl::OkStatus();
}

void AppendInputTokens(const SessionSpec& session, int step_index, int part_index,
                       std::vector<TokenId>* context) {
  const InputPart& part = session.steps[step_index].input[part_index];
  switch (part.kind) {
    case InputPart::Kind::kExplicit:
      context->insert(context->end(), part.tokens.begin(), part.tokens.end());
      return;
    case InputPart::Kind::kShared: {
      const uint64_t key = StableHash(absl::StrCat("shared:", part.shared_id));
      for (int64_t i = 0; i < part.length; ++i) context->push_back(PseudoToken(key, i));
      return;
    }
    case InputPart::Kind::kUnique: {
      const uint64_t key = HashCombine(
          HashCombine(StableHash(absl::StrCat("unique:", session.id)), step_index), part_index);
      for (int64_t i = 0; i < part.length; ++i) context->push_back(PseudoToken(key, i));
      return;
    }
  }
}

void AppendOutputTokens(const SessionSpec& session, int64_t count, std::vector<TokenId>* context) {
  const uint64_t key = StableHash(absl::StrCat("output:", session.id));
  const int64_t begin = static_cast<int64_t>(context->size());
  for (int64_t i = 0; i < count; ++i) context->push_back(PseudoToken(key, begin + i));
}

}  // namespace asymcache

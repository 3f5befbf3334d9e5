#include "sim/generators.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "sim/random.h"

namespace asymcache {
namespace {

// Stream ids (kept stable: changing one changes every generated workload).
constexpr uint64_t kStartsStream = 1;
constexpr uint64_t kTenantStream = 2;
constexpr uint64_t kSessionStreamBase = 1000;

int64_t Draw(SimRandom& rng, const LengthRange& r) { return rng.UniformInt(r.lo, r.hi); }

std::string SessionId(absl::string_view prefix, size_t index) {
  return absl::StrFormat("%s-%06d", prefix, index);
}

void FinishSession(SessionSpec* s) {
  for (StepSpec& step : s->steps) step.last_step = false;
  StepSpec& last = s->steps.back();
  last.last_step = true;
  last.tool.clear();
  last.tool_s = 0;
  last.think_s = 0;
}

}  // namespace

std::vector<std::string> WorkloadNames() {
  return {"chat", "agent", "long-agent", "doc-qa", "long-doc-qa"};
}

int64_t DefaultSessions(absl::string_view workload) {
  if (workload == "chat") return 400;
  if (workload == "agent") return 150;
  if (workload == "long-agent") return 60;
  if (workload == "doc-qa") return 300;
  if (workload == "long-doc-qa") return 120;
  return 100;
}

ChatParams DefaultChatParams() { return ChatParams{}; }
AgentParams DefaultAgentParams() { return AgentParams{}; }

AgentParams LongAgentParams() {
  AgentParams p;
  p.tenants = 4;
  p.system_prompt = {3000, 6000};
  p.task_tokens = {500, 3000};
  p.steps = {6, 24};
  p.output_tokens = {50, 400};
  p.tool_result_tokens = {1000, 10000};
  p.max_context = 92160;  // 90k
  return p;
}

DocQaParams DefaultDocQaParams() { return DocQaParams{}; }

DocQaParams LongDocQaParams() {
  DocQaParams p;
  p.documents = 16;
  p.document_tokens = {32768, 65536};
  p.max_context = 70000;
  return p;
}

std::vector<double> PoissonStarts(double rate, int64_t count, double duration_s, uint64_t seed) {
  SimRandom rng(seed, kStartsStream);
  std::vector<double> starts;
  double t = 0;
  while (count > 0 ? static_cast<int64_t>(starts.size()) < count : t < duration_s) {
    starts.push_back(t);
    t += rng.Exponential(1.0 / rate);
  }
  return starts;
}

Workload GenerateChat(const ChatParams& p, const std::vector<double>& starts, uint64_t seed) {
  Workload w;
  w.name = "chat";
  SimRandom tenant_rng(seed, kTenantStream);
  std::vector<int64_t> system_len(p.tenants);
  for (int64_t& len : system_len) len = Draw(tenant_rng, p.system_prompt);
  for (size_t i = 0; i < starts.size(); ++i) {
    SimRandom rng(seed, kSessionStreamBase + i);
    SessionSpec s;
    s.id = SessionId("chat", i);
    const int tenant = static_cast<int>(rng.UniformInt(0, p.tenants - 1));
    s.salt = absl::StrCat("tenant-", tenant);
    const int64_t turns = Draw(rng, p.turns);
    int64_t context = 0;
    for (int64_t k = 0; k < turns; ++k) {
      StepSpec step;
      const int64_t user = Draw(rng, p.user_tokens);
      const int64_t out = Draw(rng, p.output_tokens);
      if (k == 0) {
        step.arrival_s = starts[i];
        step.input.push_back(InputPart::Shared(absl::StrCat("chat-system-", tenant),
                                               system_len[tenant]));
        context += system_len[tenant];
      } else if (context + user + out > p.max_context) {
        break;
      }
      step.input.push_back(InputPart::Unique(user));
      step.output_tokens = out;
      step.think_s = rng.Exponential(p.think_mean_s);
      context += user + out;
      s.steps.push_back(std::move(step));
    }
    FinishSession(&s);
    w.sessions.push_back(std::move(s));
  }
  return w;
}

Workload GenerateAgent(const AgentParams& p, const std::vector<double>& starts, uint64_t seed,
                       absl::string_view prefix) {
  Workload w;
  w.name = std::string(prefix);
  SimRandom tenant_rng(seed, kTenantStream);
  std::vector<int64_t> system_len(p.tenants);
  for (int64_t& len : system_len) len = Draw(tenant_rng, p.system_prompt);
  std::vector<double> tool_cdf;
  double total = 0;
  for (const ToolSpec& t : p.tools) tool_cdf.push_back(total += t.weight);
  for (size_t i = 0; i < starts.size(); ++i) {
    SimRandom rng(seed, kSessionStreamBase + i);
    SessionSpec s;
    s.id = SessionId(prefix, i);
    const int tenant = static_cast<int>(rng.UniformInt(0, p.tenants - 1));
    s.salt = absl::StrCat("tenant-", tenant);
    const int64_t steps = Draw(rng, p.steps);
    StepSpec first;
    first.arrival_s = starts[i];
    first.input.push_back(
        InputPart::Shared(absl::StrCat(prefix, "-system-", tenant), system_len[tenant]));
    first.input.push_back(InputPart::Unique(Draw(rng, p.task_tokens)));
    int64_t context = system_len[tenant] + first.input.back().length;
    StepSpec step = std::move(first);
    for (int64_t k = 0; k < steps; ++k) {
      step.output_tokens = Draw(rng, p.output_tokens);
      context += step.output_tokens;
      const ToolSpec& tool = p.tools[rng.PickFromCdf(tool_cdf)];
      const double duration = rng.Exponential(tool.mean_s);
      const int64_t result = Draw(rng, p.tool_result_tokens);
      const bool fits = context + result + p.output_tokens.hi <= p.max_context;
      if (k + 1 == steps || !fits) {
        s.steps.push_back(std::move(step));
        break;
      }
      step.tool = tool.name;
      step.tool_s = duration;
      s.steps.push_back(std::move(step));
      step = StepSpec();
      step.input.push_back(InputPart::Unique(result));
      context += result;
    }
    FinishSession(&s);
    w.sessions.push_back(std::move(s));
  }
  return w;
}

Workload GenerateDocQa(const DocQaParams& p, const std::vector<double>& starts, uint64_t seed,
                       absl::string_view prefix) {
  Workload w;
  w.name = std::string(prefix);
  SimRandom doc_rng(seed, kTenantStream);
  std::vector<int64_t> doc_len(p.documents);
  for (int64_t& len : doc_len) len = Draw(doc_rng, p.document_tokens);
  const std::vector<double> popularity = ZipfCdf(p.documents, p.zipf_s);
  for (size_t i = 0; i < starts.size(); ++i) {
    SimRandom rng(seed, kSessionStreamBase + i);
    SessionSpec s;
    s.id = SessionId(prefix, i);
    s.salt = "corpus";  // one tenant: documents are shared by every user
    const size_t doc = rng.PickFromCdf(popularity);
    const int64_t questions = Draw(rng, p.questions);
    int64_t context = 0;
    for (int64_t k = 0; k < questions; ++k) {
      StepSpec step;
      const int64_t q = Draw(rng, p.question_tokens);
      const int64_t out = Draw(rng, p.output_tokens);
      if (k == 0) {
        step.arrival_s = starts[i];
        step.input.push_back(InputPart::Shared(absl::StrCat(prefix, "-doc-", doc), doc_len[doc]));
        context += doc_len[doc];
      } else if (context + q + out > p.max_context) {
        break;
      }
      step.input.push_back(InputPart::Unique(q));
      step.output_tokens = out;
      step.think_s = rng.Exponential(p.think_mean_s);
      context += q + out;
      s.steps.push_back(std::move(step));
    }
    FinishSession(&s);
    w.sessions.push_back(std::move(s));
  }
  return w;
}

absl::StatusOr<Workload> GenerateWorkload(const GeneratorOptions& options) {
  if (!(options.rate > 0) || !std::isfinite(options.rate)) {
    return absl::InvalidArgumentError("rate must be a finite number > 0");
  }
  if (options.sessions < 0 || options.duration_s < 0 || !std::isfinite(options.duration_s)) {
    return absl::InvalidArgumentError("sessions and duration_s must be >= 0");
  }
  const std::vector<std::string> names = WorkloadNames();
  if (std::find(names.begin(), names.end(), options.workload) == names.end()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown workload '", options.workload,
                                                   "'; known: ", absl::StrJoin(names, ", ")));
  }
  int64_t count = options.sessions;
  if (options.duration_s > 0) {
    count = 0;
  } else if (count == 0) {
    count = DefaultSessions(options.workload);
  }
  const std::vector<double> starts =
      PoissonStarts(options.rate, count, options.duration_s, options.seed);
  const std::string& name = options.workload;
  if (name == "chat") return GenerateChat(DefaultChatParams(), starts, options.seed);
  if (name == "agent") return GenerateAgent(DefaultAgentParams(), starts, options.seed, name);
  if (name == "long-agent") return GenerateAgent(LongAgentParams(), starts, options.seed, name);
  if (name == "doc-qa") return GenerateDocQa(DefaultDocQaParams(), starts, options.seed, name);
  return GenerateDocQa(LongDocQaParams(), starts, options.seed, name);
}

}  // namespace asymcache

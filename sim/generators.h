// Built-in workload generators: chat, agent, long-agent, doc-qa, long-doc-qa.
//
// Contract: GenerateWorkload() is a pure function of its options: the same
// options (seed included) give the same Workload on every machine (all draws
// go through SimRandom). Session start times are Poisson with `rate` sessions
// per second, drawn from their own stream, so changing the rate only stretches
// time: the sessions themselves (lengths, tools, documents) stay identical.
// Each session's content comes from stream (seed, session index), so the
// first N sessions do not depend on how many are generated.
//
// Every parameter below is documented with its default; docs/simulator.md
// lists them as a table. Lengths are inclusive uniform ranges [lo, hi] unless
// said otherwise; durations are exponential with the given mean.
#ifndef ASYMCACHE_SIM_GENERATORS_H_
#define ASYMCACHE_SIM_GENERATORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "sim/workload.h"

namespace asymcache {

struct LengthRange {
  int64_t lo = 0;
  int64_t hi = 0;
};

// Multi-turn chat: per-tenant system prompt (shared, salted per tenant) + turns.
struct ChatParams {
  int tenants = 8;                          // tenants, each with one system prompt
  LengthRange system_prompt{800, 2000};     // tokens, per tenant
  LengthRange turns{2, 8};                  // turns per conversation
  LengthRange user_tokens{100, 800};        // new user tokens per turn
  LengthRange output_tokens{100, 500};      // reply tokens per turn
  double think_mean_s = 10;                 // user think time between turns
  int64_t max_context = 8192;               // a conversation ends before exceeding this
};

// Agent jobs: per-tenant tool-description prompt (shared) + task, then steps
// that each emit an action (a tool call), wait for the tool, and read its result.
struct ToolSpec {
  std::string name;
  double mean_s = 1;   // exponential duration
  double weight = 1;   // relative call frequency
};
struct AgentParams {
  int tenants = 4;
  LengthRange system_prompt{1500, 3000};
  LengthRange task_tokens{200, 1500};
  LengthRange steps{4, 16};                 // model calls per job
  LengthRange output_tokens{30, 300};       // action tokens per step
  LengthRange tool_result_tokens{200, 4000};
  std::vector<ToolSpec> tools = {{"read_file", 0.3, 3}, {"search", 1.5, 2}, {"bash", 2, 3},
                                 {"python", 4, 1},      {"browser", 6, 1},  {"run_tests", 12, 1}};
  int64_t max_context = 32768;              // a job ends before exceeding this
};

// Shared-document Q&A: users pick a document (Zipf popularity) and ask questions.
struct DocQaParams {
  int documents = 32;
  double zipf_s = 1.0;                      // document popularity exponent
  LengthRange document_tokens{8192, 16384};
  LengthRange questions{1, 4};              // turns per user session
  LengthRange question_tokens{30, 200};
  LengthRange output_tokens{50, 400};
  double think_mean_s = 8;
  int64_t max_context = 20000;
};

struct GeneratorOptions {
  std::string workload = "chat";  // one of WorkloadNames()
  double rate = 1.0;              // session (job) starts per second, > 0
  int64_t sessions = 0;           // sessions to generate; 0 = DefaultSessions(workload)
  double duration_s = 0;          // > 0: instead of `sessions`, every start in [0, duration)
  uint64_t seed = 1;
};

// "chat", "agent", "long-agent", "doc-qa", "long-doc-qa".
std::vector<std::string> WorkloadNames();
// Default session count per workload (sized so a full `--system all` run is quick).
int64_t DefaultSessions(absl::string_view workload);

ChatParams DefaultChatParams();
AgentParams DefaultAgentParams();      // "agent": contexts to ~32k
AgentParams LongAgentParams();         // "long-agent": contexts to ~90k
DocQaParams DefaultDocQaParams();      // "doc-qa": 8-16k documents
DocQaParams LongDocQaParams();         // "long-doc-qa": 32-64k documents

// INVALID_ARGUMENT for an unknown workload (listing the known ones) or bad
// options (rate <= 0, negative counts).
absl::StatusOr<Workload> GenerateWorkload(const GeneratorOptions& options);

// The generators themselves, for tests and custom studies.
Workload GenerateChat(const ChatParams& p, const std::vector<double>& starts, uint64_t seed);
Workload GenerateAgent(const AgentParams& p, const std::vector<double>& starts, uint64_t seed,
                       absl::string_view prefix);
Workload GenerateDocQa(const DocQaParams& p, const std::vector<double>& starts, uint64_t seed,
                       absl::string_view prefix);
// Poisson start times: `count` sessions, or (count == 0) all starts before duration_s.
std::vector<double> PoissonStarts(double rate, int64_t count, double duration_s, uint64_t seed);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_GENERATORS_H_

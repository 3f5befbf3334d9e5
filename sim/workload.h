// Workload: the sessions (chat conversations, agent jobs, document Q&A users)
// the simulator replays, and how their token ids are made.
//
// Model. A workload is a list of sessions. A session is a list of steps (chat
// turns, agent steps); each step is one engine request. Step 0 arrives
// open-loop at `arrival_s`; step k > 0 arrives closed-loop, `delay_after_s()`
// of step k-1 after step k-1 finished (a tool call's duration, or a user's
// think time). The context of step k is
//     context(k-1) + outputs(k-1) + input parts of step k,
// so a follow-up step's prompt extends the previous one token for token and
// its prefix can hit the cache.
//
// Token ids are real (so block hashes are real) and deterministic:
//   * a shared part (`shared_id`, e.g. a tenant's system prompt or a document)
//     has the same tokens wherever it appears: PseudoToken(StableHash("shared:"+id), i);
//   * a unique part has tokens keyed by (session id, step, part index);
//   * explicit parts carry their ids (traces may give real token ids);
//   * output tokens are keyed by (session id, absolute position), so the next
//     step's context contains exactly what the previous step generated.
//
// Contract: plain value types; thread-safe as values. Validate() checks the
// structural rules that every consumer (engine, trace writer) assumes.
#ifndef ASYMCACHE_SIM_WORKLOAD_H_
#define ASYMCACHE_SIM_WORKLOAD_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cachecore/types.h"
#include "sim/random.h"

namespace asymcache {

// Token ids are drawn from [kFirstPseudoToken, kFirstPseudoToken + kPseudoVocab).
inline constexpr TokenId kFirstPseudoToken = 1000;
inline constexpr int64_t kPseudoVocab = 120000;

struct InputPart {
  enum class Kind : uint8_t { kUnique = 0, kShared = 1, kExplicit = 2 };
  Kind kind = Kind::kUnique;
  int64_t length = 0;           // tokens (kExplicit: tokens.size())
  std::string shared_id;        // kShared only
  std::vector<TokenId> tokens;  // kExplicit only

  static InputPart Unique(int64_t length);
  static InputPart Shared(std::string id, int64_t length);
  static InputPart Explicit(std::vector<TokenId> tokens);
  friend bool operator==(const InputPart&, const InputPart&) = default;
};

struct StepSpec {
  double arrival_s = 0;          // step 0: open-loop arrival (seconds from trace start)
  std::vector<InputPart> input;  // tokens appended to the context before this step
  int64_t output_tokens = 1;     // tokens generated, >= 1
  std::string tool;              // tool called when this step ends ("" = none)
  double tool_s = 0;             // that tool call's duration (seconds)
  double think_s = 0;            // no tool: the user's think time before the next step
  bool last_step = false;        // true exactly on the session's final step
  int source_line = 0;           // trace line it came from (0 = generated)

  int64_t input_tokens() const;
  // Delay between this step's finish and the next step's arrival.
  double delay_after_s() const { return tool.empty() ? think_s : tool_s; }
  friend bool operator==(const StepSpec&, const StepSpec&) = default;
};

struct SessionSpec {
  std::string id;    // unique within the workload, e.g. "agent-000017"
  std::string salt;  // tenant: mixed into the block hash chain
  std::vector<StepSpec> steps;

  // True when some step ends in a tool call (an agent job: job latency is reported).
  bool is_job() const;
  friend bool operator==(const SessionSpec&, const SessionSpec&) = default;
};

struct Workload {
  std::string name;                   // generator name or trace file
  std::vector<SessionSpec> sessions;  // sorted by steps[0].arrival_s

  int64_t total_steps() const;
  // Largest context (prompt + output) of any step.
  int64_t max_context_tokens() const;
  // Open-loop session start rate: (sessions - 1) / (last start - first start);
  // 0 with fewer than two sessions or all starting together.
  double session_rate() const;
  // A copy whose session start times are scaled so that session_rate() == rate
  // (closed-loop delays are unchanged). Precondition: rate > 0.
  Workload WithSessionRate(double rate) const;

  // INVALID_ARGUMENT naming the session and step: empty session, non-finite or
  // negative times, output_tokens < 1, step 0 without input, last_step not
  // exactly on the final step, a tool call on the final step, duplicate ids,
  // sessions not sorted by start.
  absl::Status Validate() const;
};

// The i-th token of a pseudo-token stream with key `key`.
inline TokenId PseudoToken(uint64_t key, int64_t i) {
  return kFirstPseudoToken +
         static_cast<TokenId>(Mix64(key ^ (static_cast<uint64_t>(i) * 0xd6e8feb86659fd93ULL)) %
                              static_cast<uint64_t>(kPseudoVocab));
}

// Appends the tokens of input part `part_index` of step `step_index` of `session`.
void AppendInputTokens(const SessionSpec& session, int step_index, int part_index,
                       std::vector<TokenId>* context);
// Appends `count` output tokens of `session` at absolute positions
// context->size(), context->size()+1, ...
void AppendOutputTokens(const SessionSpec& session, int64_t count, std::vector<TokenId>* context);

// Context lengths of one session as replayed: prompt (before outputs) and
// total (after outputs) of every step.
struct StepLengths {
  int64_t prompt_tokens = 0;
  int64_t context_tokens = 0;
};
std::vector<StepLengths> SessionLengths(const SessionSpec& session);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_WORKLOAD_H_

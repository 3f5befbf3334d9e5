// Generation requests as the worker's engine sees them (the core types behind
// proto/asymcache/v1/worker.proto Generate), the sink that receives a
// request's tokens, and request validation.
//
// Contract: plain values; ValidateGenerationRequest is pure. A
// GenerationSink is called from the engine's threads (OnTokens from the step
// thread, OnFinish from the daemon-call thread after the request's blocks are
// committed and released), never concurrently for one request and OnFinish
// last; it must not block (queue and return).
#ifndef ASYMCACHE_SERVICES_WORKER_GENERATION_H_
#define ASYMCACHE_SERVICES_WORKER_GENERATION_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "model/llama_config.h"
#include "model/model_backend.h"
#include "services/client/client.h"

namespace asymcache::worker {

struct GenerationRequest {
  std::vector<int32_t> prompt;            // the whole context; not empty
  int32_t max_new_tokens = 16;            // >= 1
  model::SamplingParams sampling;         // greedy by default
  std::vector<int32_t> stop_tokens;       // ends generation after emitting one
  std::string salt;                       // tenant salt
  std::string session_id;                 // multi-turn: shared daemon sequence id
  std::optional<AgentJob> agent;          // agent fields (pins at release)
  std::string kv_source;                  // daemon holding the first kv_source_tokens' blocks
  int32_t kv_source_tokens = 0;
  bool return_logits = false;
};

struct RequestStats {
  int64_t prompt_tokens = 0;
  int64_t hit_tokens = 0;               // prompt tokens resident at the first plan
  int64_t rebuilt_tokens = 0;           // hole tokens of the first plan
  int64_t computed_prompt_tokens = 0;   // prompt positions computed by the model
  int64_t copied_tokens = 0;            // rows copied from the request's own pages
  int64_t imported_blocks = 0;
  double import_seconds = 0;
  double queue_seconds = 0;             // arrival -> first successful plan
  double ttft_seconds = 0;              // arrival -> first token
  int64_t steps = 0;
  int64_t preemptions = 0;
};

// Tokens emitted by one step (usually one).
struct TokenBatch {
  std::vector<int32_t> tokens;
  std::vector<int64_t> times_us;        // since arrival, one per token
  std::vector<float> logits;            // vocab floats per token when requested
};

// The engine calls a sink on its step thread without holding its own lock,
// so a sink may call Engine::Cancel (e.g. for a client that stopped reading).
class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  virtual void OnTokens(TokenBatch batch) = 0;
  // Called once, last. OK: finish_reason is "stop" or "length". Otherwise the
  // error that ended the request (CANCELLED, UNAVAILABLE, ...).
  virtual void OnFinish(const absl::Status& status, const std::string& finish_reason,
                        const RequestStats& stats) = 0;
};

// What the engine accepts (INVALID_ARGUMENT naming the field): prompt not
// empty, every prompt/stop token in [0, vocab), max_new_tokens >= 1,
// prompt + max_new_tokens <= max_context_tokens, temperature finite,
// top_p in (0, 1] (0 is read as 1 by the service), kv_source_tokens in
// [1, prompt size] iff kv_source is set; and bounded fields, so a queued
// request holds memory in proportion to its context: at most
// kMaxStopTokens stop tokens, salt / session_id / kv_source / agent job id
// and tool of at most kMaxRequestStringBytes bytes.
inline constexpr size_t kMaxStopTokens = 1024;          // far above any tokenizer's stop set
inline constexpr size_t kMaxRequestStringBytes = 1024;  // ids and addresses, not payloads
absl::Status ValidateGenerationRequest(const GenerationRequest& request,
                                       const model::LlamaConfig& config,
                                       int64_t max_context_tokens);

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_GENERATION_H_

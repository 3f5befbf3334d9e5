#include "services/worker/generation.h"

#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace asymcache::worker {

absl::Status ValidateGenerationRequest(const GenerationRequest& request,
                                       const model::LlamaConfig& config,
                                       int64_t max_context_tokens) {
  auto bad = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (request.prompt.empty()) return bad("prompt_tokens: empty");
  for (size_t i = 0; i < request.prompt.size(); ++i) {
    if (request.prompt[i] < 0 || request.prompt[i] >= config.vocab_size) {
      return bad("prompt_tokens[", i, "]: ", request.prompt[i], " is outside the vocabulary [0, ",
                 config.vocab_size, ")");
    }
  }
  if (request.stop_tokens.size() > kMaxStopTokens) {
    return bad("stop_tokens: ", request.stop_tokens.size(), " tokens, more than ", kMaxStopTokens);
  }
  for (const auto& [field, value] :
       {std::pair<const char*, const std::string*>{"salt", &request.salt},
        {"session_id", &request.session_id},
        {"kv_source", &request.kv_source},
        {"agent.job_id", request.agent.has_value() ? &request.agent->job_id : nullptr},
        {"agent.tool", request.agent.has_value() ? &request.agent->tool : nullptr}}) {
    if (value != nullptr && value->size() > kMaxRequestStringBytes) {
      return bad(field, ": ", value->size(), " bytes, more than ", kMaxRequestStringBytes);
    }
  }
  for (size_t i = 0; i < request.stop_tokens.size(); ++i) {
    if (request.stop_tokens[i] < 0 || request.stop_tokens[i] >= config.vocab_size) {
      return bad("stop_tokens[", i, "]: ", request.stop_tokens[i],
                 " is outside the vocabulary [0, ", config.vocab_size, ")");
    }
  }
  if (request.max_new_tokens < 1) return bad("max_new_tokens: ", request.max_new_tokens, " < 1");
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens;
  if (total > max_context_tokens) {
    return bad("prompt_tokens + max_new_tokens: ", request.prompt.size(), " + ",
               request.max_new_tokens, " exceeds the context limit ", max_context_tokens);
  }
  if (!std::isfinite(request.sampling.temperature)) return bad("sampling.temperature: not finite");
  if (!(request.sampling.top_p > 0.0f && request.sampling.top_p <= 1.0f)) {
    return bad("sampling.top_p: ", request.sampling.top_p, " is outside (0, 1]");
  }
  if (request.kv_source.empty()) {
    if (request.kv_source_tokens != 0) return bad("kv_source_tokens: set without kv_source");
  } else if (request.kv_source_tokens < 1 ||
             request.kv_source_tokens > static_cast<int64_t>(request.prompt.size())) {
    return bad("kv_source_tokens: ", request.kv_source_tokens, " is outside [1, ",
               request.prompt.size(), "]");
  }
  if (request.agent.has_value() && request.agent->job_id.empty() &&
      (!request.agent->tool.empty() || request.agent->last_step)) {
    return bad("agent: tool/last_step without job_id");
  }
  return absl::OkStatus();
}

}  // namespace asymcache::worker

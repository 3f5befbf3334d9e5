#include "cachecore/step_trace.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace asymcache {
namespace {

std::string Ms(double seconds) { return absl::StrFormat("%.4f", seconds * 1e3); }

}  // namespace

std::string StepTraceHeader(const ModelConfig& model, absl::Time started) {
  return absl::StrCat(
      "{\"schema\": \"", kStepTraceSchema, "\", \"started\": \"",
      absl::FormatTime(absl::RFC3339_full, started, absl::UTCTimeZone()),
      "\", \"model\": {\"name\": \"", absl::CEscape(model.name),
      "\", \"num_layers\": ", model.num_layers, ", \"num_q_heads\": ", model.num_q_heads,
      ", \"num_kv_heads\": ", model.num_kv_heads, ", \"head_dim\": ", model.head_dim,
      ", \"dtype_bytes\": ", model.dtype_bytes, ", \"block_tokens\": ", model.block_tokens,
      ", \"hidden_size\": ", model.hidden_size, ", \"intermediate_size\": ",
      model.intermediate_size, ", \"vocab_size\": ", model.vocab_size, "}}");
}

std::string StepTraceLine(const StepTraceEntry& entry) {
  std::string line = absl::StrCat("{\"t_ms\": ", Ms(entry.start_s), ", \"decodes\": [");
  for (size_t i = 0; i < entry.decodes.size(); ++i) {
    absl::StrAppend(&line, i == 0 ? "" : ",", entry.decodes[i].context_tokens);
  }
  absl::StrAppend(&line, "], \"chunks\": [");
  for (size_t i = 0; i < entry.chunks.size(); ++i) {
    const Chunk& c = entry.chunks[i];
    absl::StrAppend(&line, i == 0 ? "" : ",", "[", c.sequence, ",", c.begin, ",", c.end, "]");
  }
  absl::StrAppend(&line, "], \"predicted_ms\": ", Ms(entry.predicted_s),
                  ", \"forward_ms\": ", Ms(entry.forward_s), ", \"step_ms\": ", Ms(entry.step_s),
                  ", \"waiting\": ", entry.waiting, "}");
  return line;
}

}  // namespace asymcache

// Fuzz target: the Hugging Face config.json loader (model/llama_config.h,
// LlamaConfig::FromHfConfigJson), read from every --model-dir.
//
// Input: the bytes of a config.json.
//
// Invariants checked (beyond "no crash, no sanitizer report"):
//   - a refusal is INVALID_ARGUMENT "fuzz/config.json: ...";
//   - an accepted config passes Validate() (llama_config.h: "everything
//     downstream assumes a validated config"), and what downstream derives
//     from it is defined: parameter count, attention shape, the cache's
//     ModelConfig (which passes its own Validate());
//   - round trip: FromHfConfigJson(ToHfConfigJson(c)) == c, field by field.
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "cachecore/model_config.h"
#include "fuzz/fuzz_check.h"
#include "model/llama_config.h"

namespace asymcache::model {
namespace {

constexpr absl::string_view kSource = "fuzz/config.json";

// Every field, as text (doubles exactly, by their bits).
std::string Fingerprint(const LlamaConfig& c) {
  auto bits = [](double d) {
    uint64_t b = 0;
    static_assert(sizeof(b) == sizeof(d));
    __builtin_memcpy(&b, &d, sizeof(b));
    return b;
  };
  const RopeScaling& r = c.rope_scaling;
  return absl::StrCat(
      "name=", c.name, " vocab=", c.vocab_size, " hidden=", c.hidden_size,
      " intermediate=", c.intermediate_size, " layers=", c.num_layers, " q=", c.num_q_heads,
      " kv=", c.num_kv_heads, " head_dim=", c.head_dim, " eps=", bits(c.rms_norm_eps),
      " theta=", bits(c.rope_theta), " rope=", r.enabled, "/", bits(r.factor), "/",
      bits(r.low_freq_factor), "/", bits(r.high_freq_factor), "/",
      r.original_max_position_embeddings, " tied=", c.tie_word_embeddings,
      " max_pos=", c.max_position_embeddings, " dtype=", static_cast<int>(c.dtype),
      " block=", c.block_tokens);
}

void Run(absl::string_view text) {
  absl::StatusOr<LlamaConfig> config = LlamaConfig::FromHfConfigJson(text, kSource);
  if (!config.ok()) {
    FUZZ_CHECK(fuzz::IsRefusalNaming(config.status(), absl::StrCat(kSource, ": ")),
               "refusal not INVALID_ARGUMENT naming the file: ", config.status().ToString());
    return;
  }
  const absl::Status valid = config->Validate();
  FUZZ_CHECK(valid.ok(), "accepted but invalid: ", valid.ToString());
  FUZZ_CHECK(config->ParameterCount() > 0, "parameter count ", config->ParameterCount());
  const msa::AttentionShape shape = config->attention_shape();
  FUZZ_CHECK(shape.num_q_heads == config->num_q_heads && shape.page_size == config->block_tokens,
             "attention shape differs from the config");
  const ModelConfig cache_model = config->ToCacheModel();
  const absl::Status cache_valid = cache_model.Validate();
  FUZZ_CHECK(cache_valid.ok(), "the cache refuses the shape of an accepted config: ",
             cache_valid.ToString());

  const std::string written = config->ToHfConfigJson();
  absl::StatusOr<LlamaConfig> reread = LlamaConfig::FromHfConfigJson(written, kSource);
  FUZZ_CHECK(reread.ok(), "ToHfConfigJson's output is refused: ", reread.status().ToString(),
             "\n--- written:\n", written);
  FUZZ_CHECK(Fingerprint(*reread) == Fingerprint(*config), "round trip changed the config\n  ",
             Fingerprint(*config), "\n  ", Fingerprint(*reread));
}

}  // namespace
}  // namespace asymcache::model

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  asymcache::model::Run(asymcache::fuzz::AsText(data, size));
  return 0;
}

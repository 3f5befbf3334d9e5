// LlamaConfig: named shapes (and their agreement with cachecore's), validation,
// and the Hugging Face config.json reader and writer.
#include "model/llama_config.h"

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cachecore/model_config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache::model {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

void ExpectSameConfig(const LlamaConfig& a, const LlamaConfig& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_q_heads, b.num_q_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.enabled, b.rope_scaling.enabled);
  if (a.rope_scaling.enabled && b.rope_scaling.enabled) {
    EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
    EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
    EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
    EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
              b.rope_scaling.original_max_position_embeddings);
  }
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.dtype, b.dtype);
  EXPECT_EQ(a.block_tokens, b.block_tokens);
}

TEST(LlamaConfigTest, NamedShapesValidateAndMatchCachecore) {
  for (const char* name : {"tiny", "llama-3-8b", "llama-3-70b-tp"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<LlamaConfig> config = LlamaConfig::Named(name);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(config->name, name);
    EXPECT_TRUE(config->Validate().ok()) << config->Validate();
    EXPECT_TRUE(config->attention_shape().Validate().ok());

    absl::StatusOr<ModelConfig> cache = ModelConfig::Named(name);
    ASSERT_TRUE(cache.ok()) << cache.status();
    const ModelConfig mine = config->ToCacheModel();
    EXPECT_TRUE(mine.Validate().ok());
    EXPECT_EQ(mine.name, cache->name);
    EXPECT_EQ(mine.num_layers, cache->num_layers);
    EXPECT_EQ(mine.num_q_heads, cache->num_q_heads);
    EXPECT_EQ(mine.num_kv_heads, cache->num_kv_heads);
    EXPECT_EQ(mine.head_dim, cache->head_dim);
    EXPECT_EQ(mine.dtype_bytes, cache->dtype_bytes);
    EXPECT_EQ(mine.block_tokens, cache->block_tokens);
    EXPECT_EQ(mine.hidden_size, cache->hidden_size);
    EXPECT_EQ(mine.intermediate_size, cache->intermediate_size);
    EXPECT_EQ(mine.vocab_size, cache->vocab_size);
    EXPECT_EQ(mine.KvBytesPerBlock(), cache->KvBytesPerBlock());
  }
}

TEST(LlamaConfigTest, TinyShape) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("tiny");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_layers, 2);
  EXPECT_EQ(c->num_q_heads, 4);
  EXPECT_EQ(c->num_kv_heads, 2);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->hidden_size, 256);
  EXPECT_EQ(c->intermediate_size, 512);
  EXPECT_EQ(c->vocab_size, 1024);
  EXPECT_EQ(c->dtype, msa::DType::kFloat32);
  EXPECT_EQ(c->kv_dtype(), msa::DType::kFloat32);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->rope_scaling.enabled);
  EXPECT_FALSE(c->tie_word_embeddings);
  const msa::AttentionShape shape = c->attention_shape();
  EXPECT_EQ(shape.num_q_heads, 4);
  EXPECT_EQ(shape.num_kv_heads, 2);
  EXPECT_EQ(shape.head_dim, 64);
  EXPECT_EQ(shape.page_size, c->block_tokens);
  EXPECT_EQ(shape.dtype, msa::DType::kFloat32);
}

TEST(LlamaConfigTest, Llama3_8bIsTheLlama31Config) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("llama-3-8b");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 14336);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_q_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_TRUE(c->rope_scaling.enabled);
  EXPECT_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_EQ(c->rope_scaling.low_freq_factor, 1.0);
  EXPECT_EQ(c->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->dtype, msa::DType::kBFloat16);
  // Llama-3.1-8B's published parameter count.
  EXPECT_EQ(c->ParameterCount(), 8030261248);
}

TEST(LlamaConfigTest, Llama3_70bTpIsOneGpuSlice) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("llama-3-70b-tp");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->num_layers, 80);
  EXPECT_EQ(c->hidden_size, 8192);
  EXPECT_EQ(c->num_q_heads, 8);
  EXPECT_EQ(c->num_kv_heads, 1);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->intermediate_size, 3584);
  EXPECT_EQ(c->vocab_size, 128256 / 8);  // vocab-parallel, as cachecore's shape
  EXPECT_EQ(c->rope_theta, 500000.0);
  EXPECT_TRUE(c->rope_scaling.enabled);
  EXPECT_EQ(c->q_dim(), 1024);
  EXPECT_EQ(c->kv_dim(), 128);
}

TEST(LlamaConfigTest, ParameterCountCountsTiedHeadOnce) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("tiny");
  ASSERT_TRUE(c.ok());
  const int64_t per_layer = 2 * 256 + 256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 512;
  EXPECT_EQ(c->ParameterCount(), 2 * 1024 * 256 + 2 * per_layer + 256);
  c->tie_word_embeddings = true;
  EXPECT_EQ(c->ParameterCount(), 1024 * 256 + 2 * per_layer + 256);
}

TEST(LlamaConfigTest, UnknownNameIsNotFoundListingKnownNames) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("llama-2-7b");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(c.status().message(), HasSubstr("llama-2-7b"));
  EXPECT_THAT(c.status().message(), HasSubstr("tiny, llama-3-8b, llama-3-70b-tp"));
}

TEST(LlamaConfigTest, ValidateNamesTheField) {
  struct Case {
    const char* what;
    void (*mutate)(LlamaConfig&);
    const char* field;
  };
  const Case cases[] = {
      {"vocab 0", [](LlamaConfig& c) { c.vocab_size = 0; }, "LlamaConfig.vocab_size: "},
      {"hidden < 0", [](LlamaConfig& c) { c.hidden_size = -1; }, "LlamaConfig.hidden_size: "},
      {"hidden huge", [](LlamaConfig& c) { c.hidden_size = int64_t{1} << 40; },
       "LlamaConfig.hidden_size: "},
      {"intermediate 0", [](LlamaConfig& c) { c.intermediate_size = 0; },
       "LlamaConfig.intermediate_size: "},
      {"layers 0", [](LlamaConfig& c) { c.num_layers = 0; }, "LlamaConfig.num_layers: "},
      {"q heads 0", [](LlamaConfig& c) { c.num_q_heads = 0; }, "LlamaConfig.num_q_heads: "},
      {"kv not dividing", [](LlamaConfig& c) { c.num_kv_heads = 3; }, "LlamaConfig.num_kv_heads: "},
      {"group 16", [](LlamaConfig& c) { c.num_kv_heads = 2; }, "LlamaConfig.num_kv_heads: "},
      {"head_dim 96", [](LlamaConfig& c) { c.head_dim = 96; }, "LlamaConfig.head_dim: "},
      {"eps 0", [](LlamaConfig& c) { c.rms_norm_eps = 0; }, "LlamaConfig.rms_norm_eps: "},
      {"theta < 0", [](LlamaConfig& c) { c.rope_theta = -1; }, "LlamaConfig.rope_theta: "},
      {"factor < 1", [](LlamaConfig& c) { c.rope_scaling.factor = 0.5; },
       "LlamaConfig.rope_scaling.factor: "},
      {"low 0", [](LlamaConfig& c) { c.rope_scaling.low_freq_factor = 0; },
       "LlamaConfig.rope_scaling.low_freq_factor: "},
      {"high <= low", [](LlamaConfig& c) { c.rope_scaling.high_freq_factor = 1.0; },
       "LlamaConfig.rope_scaling.high_freq_factor: "},
      {"original 0", [](LlamaConfig& c) { c.rope_scaling.original_max_position_embeddings = 0; },
       "LlamaConfig.rope_scaling.original_max_position_embeddings: "},
      {"max positions 0", [](LlamaConfig& c) { c.max_position_embeddings = 0; },
       "LlamaConfig.max_position_embeddings: "},
      {"dtype", [](LlamaConfig& c) { c.dtype = static_cast<msa::DType>(7); },
       "LlamaConfig.dtype: "},
      {"block_tokens 0", [](LlamaConfig& c) { c.block_tokens = 0; }, "LlamaConfig.block_tokens: "},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(tc.what);
    absl::StatusOr<LlamaConfig> c = LlamaConfig::Named("llama-3-8b");
    ASSERT_TRUE(c.ok());
    tc.mutate(*c);
    const absl::Status s = c->Validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), StartsWith(tc.field));
  }
  // Rope scaling fields are ignored while scaling is off.
  absl::StatusOr<LlamaConfig> tiny = LlamaConfig::Named("tiny");
  ASSERT_TRUE(tiny.ok());
  tiny->rope_scaling.factor = 0.0;
  EXPECT_TRUE(tiny->Validate().ok());
}

TEST(LlamaConfigTest, HfJsonRoundTripsEveryNamedShape) {
  for (const char* name : {"tiny", "llama-3-8b", "llama-3-70b-tp"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<LlamaConfig> c = LlamaConfig::Named(name);
    ASSERT_TRUE(c.ok());
    const std::string json = c->ToHfConfigJson();
    absl::StatusOr<LlamaConfig> back = LlamaConfig::FromHfConfigJson(json, "dir/config.json");
    ASSERT_TRUE(back.ok()) << back.status() << "\n" << json;
    ExpectSameConfig(*c, *back);
  }
  // Non-default values that the named shapes do not exercise.
  LlamaConfig c = *LlamaConfig::Named("tiny");
  c.name = "custom";
  c.tie_word_embeddings = true;
  c.dtype = msa::DType::kFloat16;
  c.rms_norm_eps = 1.0 / 3.0;
  c.rope_theta = 12345.678;
  c.max_position_embeddings = 777;
  c.rope_scaling = RopeScaling{true, 2.5, 0.5, 3.25, 1000};
  absl::StatusOr<LlamaConfig> back = LlamaConfig::FromHfConfigJson(c.ToHfConfigJson(), "x");
  ASSERT_TRUE(back.ok()) << back.status();
  ExpectSameConfig(c, *back);
}

// The config.json of meta-llama/Llama-3.1-8B as published on the Hub.
constexpr char kLlama31Config[] = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128001,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3"
  },
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

TEST(LlamaConfigTest, ParsesThePublishedLlama31Config) {
  absl::StatusOr<LlamaConfig> c =
      LlamaConfig::FromHfConfigJson(kLlama31Config, "/models/llama/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  LlamaConfig expected = *LlamaConfig::Named("llama-3-8b");
  expected.name = "/models/llama/config.json";  // no _name_or_path: the source names it
  ExpectSameConfig(expected, *c);
}

// A minimal config.json; `overrides` maps keys to raw JSON values, and the
// value "DELETE" drops the key.
std::string HfJson(const std::map<std::string, std::string>& overrides) {
  std::map<std::string, std::string> fields = {
      {"model_type", "\"llama\""},   {"vocab_size", "1000"},     {"hidden_size", "512"},
      {"intermediate_size", "1024"}, {"num_hidden_layers", "2"}, {"num_attention_heads", "8"},
  };
  for (const auto& [key, value] : overrides) {
    if (value == "DELETE") {
      fields.erase(key);
    } else {
      fields[key] = value;
    }
  }
  std::string json = "{";
  for (const auto& [key, value] : fields) {
    if (json.size() > 1) json += ", ";
    absl::StrAppend(&json, "\"", key, "\": ", value);
  }
  return json + "}";
}

TEST(LlamaConfigTest, HfDefaultsFollowTransformers) {
  absl::StatusOr<LlamaConfig> c = LlamaConfig::FromHfConfigJson(HfJson({}), "min.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->name, "min.json");
  EXPECT_EQ(c->num_kv_heads, 8);  // = num_attention_heads
  EXPECT_EQ(c->head_dim, 64);     // = hidden / heads
  EXPECT_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_EQ(c->rope_theta, 10000.0);
  EXPECT_FALSE(c->rope_scaling.enabled);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->max_position_embeddings, 2048);
  EXPECT_EQ(c->dtype, msa::DType::kBFloat16);
  EXPECT_EQ(c->block_tokens, 16);

  // Null means absent; "dtype" is transformers >= 4.56's name for torch_dtype;
  // the legacy "type" key and rope_type "default" are understood.
  c = LlamaConfig::FromHfConfigJson(HfJson({{"num_key_value_heads", "null"},
                                            {"dtype", "\"float32\""},
                                            {"rope_scaling", R"({"type": "default"})"},
                                            {"_name_or_path", "\"my-model\""}}),
                                    "x.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->dtype, msa::DType::kFloat32);
  EXPECT_FALSE(c->rope_scaling.enabled);
  EXPECT_EQ(c->name, "my-model");
  c = LlamaConfig::FromHfConfigJson(
      HfJson({{"rope_scaling", R"({"type": "llama3", "factor": 4, "low_freq_factor": 1,
                                   "high_freq_factor": 4, "original_max_position_embeddings": 8192})"}}),
      "x.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->rope_scaling.enabled);
  EXPECT_EQ(c->rope_scaling.factor, 4.0);
}

TEST(LlamaConfigTest, HfErrorsNameTheSourceAndField) {
  struct Case {
    std::string json;
    std::string message;  // expected after "src.json: "
  };
  const std::string llama3 =
      R"("rope_type": "llama3", "low_freq_factor": 1, "high_freq_factor": 4, )"
      R"("original_max_position_embeddings": 8192)";
  const std::vector<Case> cases = {
      {"{\"model_type\": ", "(document): not valid JSON"},
      {"[1, 2]", "(document): must be an object, got array"},
      {HfJson({{"model_type", "DELETE"}}), "model_type: required field is missing"},
      {HfJson({{"model_type", "\"mistral\""}}), "model_type: must be \"llama\""},
      {HfJson({{"architectures", "\"LlamaForCausalLM\""}}), "architectures: must be an array"},
      {HfJson({{"hidden_act", "\"gelu\""}}), "hidden_act: must be \"silu\""},
      {HfJson({{"attention_bias", "true"}}), "attention_bias: biases are not supported"},
      {HfJson({{"mlp_bias", "true"}}), "mlp_bias: biases are not supported"},
      {HfJson({{"vocab_size", "DELETE"}}), "vocab_size: required field is missing"},
      {HfJson({{"vocab_size", "0"}}), "vocab_size: must be positive, got 0"},
      {HfJson({{"hidden_size", "\"512\""}}), "hidden_size: must be an integer, got string"},
      {HfJson({{"hidden_size", "512.5"}}), "hidden_size: must be an integer, got number"},
      {HfJson({{"intermediate_size", "-4"}}), "intermediate_size: must be positive"},
      {HfJson({{"num_hidden_layers", "10000000000"}}), "num_hidden_layers: integer out of range"},
      {HfJson({{"num_hidden_layers", "DELETE"}}), "num_hidden_layers: required field is missing"},
      {HfJson({{"num_attention_heads", "0"}}), "num_attention_heads: must be positive"},
      {HfJson({{"num_key_value_heads", "3"}}),
       "num_key_value_heads: (3) must divide num_attention_heads (8)"},
      {HfJson({{"num_attention_heads", "16"}, {"num_key_value_heads", "1"}, {"head_dim", "64"}}),
       "num_key_value_heads: num_attention_heads / num_key_value_heads must be 1, 2, 4 or 8"},
      {HfJson({{"head_dim", "96"}}), "head_dim: must be 64, 128 or 256, got 96"},
      {HfJson({{"hidden_size", "500"}}), "head_dim: absent, and hidden_size (500)"},
      {HfJson({{"rms_norm_eps", "-1"}}), "rms_norm_eps: must be a positive finite number"},
      {HfJson({{"rms_norm_eps", "\"1e-5\""}}), "rms_norm_eps: must be a number"},
      {HfJson({{"rope_theta", "0"}}), "rope_theta: must be a positive finite number"},
      {HfJson({{"rope_scaling", "5"}}), "rope_scaling: must be null or an object"},
      {HfJson({{"rope_scaling", R"({"factor": 2})"}}),
       "rope_scaling.rope_type: required field is missing"},
      {HfJson({{"rope_scaling", R"({"rope_type": "linear", "factor": 2})"}}),
       "rope_scaling.rope_type: unsupported rope type \"linear\""},
      {HfJson({{"rope_scaling", "{" + llama3 + "}"}}),
       "rope_scaling.factor: required field is missing"},
      {HfJson({{"rope_scaling", "{\"factor\": 0.5, " + llama3 + "}"}}),
       "rope_scaling.factor: must be a finite number >= 1"},
      {HfJson({{"rope_scaling",
                R"({"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                    "high_freq_factor": 1, "original_max_position_embeddings": 8192})"}}),
       "rope_scaling.high_freq_factor: must be finite and greater than"},
      {HfJson({{"rope_scaling",
                R"({"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                    "high_freq_factor": 4, "original_max_position_embeddings": 8192.5})"}}),
       "rope_scaling.original_max_position_embeddings: must be an integer"},
      {HfJson({{"tie_word_embeddings", "\"yes\""}}), "tie_word_embeddings: must be true or false"},
      {HfJson({{"max_position_embeddings", "-5"}}), "max_position_embeddings: must be positive"},
      {HfJson({{"torch_dtype", "\"int8\""}}), "torch_dtype: unsupported dtype \"int8\""},
      {HfJson({{"dtype", "\"float64\""}}), "dtype: unsupported dtype \"float64\""},
      {HfJson({{"_name_or_path", "7"}}), "_name_or_path: must be a string"},
  };
  for (const Case& tc : cases) {
    SCOPED_TRACE(tc.json);
    absl::StatusOr<LlamaConfig> c = LlamaConfig::FromHfConfigJson(tc.json, "src.json");
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), StartsWith("src.json: " + tc.message));
  }
}

}  // namespace
}  // namespace asymcache::model

#include "cachecore/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace asymcache {
namespace {

using ::testing::HasSubstr;

TEST(ModelConfigTest, DefaultIsLlama3_8bAndValid) {
  const ModelConfig config;
  ASSERT_TRUE(config.Validate().ok());
  // 2 (K,V) * 32 layers * 8 kv heads * 128 dims * 2 bytes.
  EXPECT_EQ(config.KvBytesPerToken(), 131072);
  EXPECT_EQ(config.KvBytesPerBlock(), 131072 * 16);
  // QKV 4096*(32+2*8)*128 + O 32*128*4096 + MLP 3*4096*14336.
  EXPECT_EQ(config.LinearParamsPerLayer(), 25165824 + 16777216 + 176160768);
}

TEST(ModelConfigTest, NamedShapes) {
  absl::StatusOr<ModelConfig> llama = ModelConfig::Named("llama-3-8b");
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->num_layers, 32);

  absl::StatusOr<ModelConfig> tp = ModelConfig::Named("llama-3-70b-tp");
  ASSERT_TRUE(tp.ok());
  EXPECT_TRUE(tp->Validate().ok());
  EXPECT_EQ(tp->num_layers, 80);
  EXPECT_EQ(tp->num_q_heads, 8);
  EXPECT_EQ(tp->num_kv_heads, 1);
  EXPECT_EQ(tp->KvBytesPerToken(), 2 * 80 * 1 * 128 * 2);

  absl::StatusOr<ModelConfig> tiny = ModelConfig::Named("tiny");
  ASSERT_TRUE(tiny.ok());
  EXPECT_TRUE(tiny->Validate().ok());
  EXPECT_EQ(tiny->num_layers, 2);
  EXPECT_EQ(tiny->name, "tiny");
  EXPECT_EQ(tiny->KvBytesPerBlock(),
            int64_t{2} * tiny->num_layers * tiny->num_kv_heads * tiny->head_dim * tiny->dtype_bytes *
                tiny->block_tokens);

  absl::StatusOr<ModelConfig> unknown = ModelConfig::Named("gpt-5");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("gpt-5"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("llama-3-8b"));
}

TEST(ModelConfigTest, ValidateNamesTheBadField) {
  struct Case {
    void (*mutate)(ModelConfig&);
    const char* field;
  };
  const Case cases[] = {
      {[](ModelConfig& c) { c.num_layers = 0; }, "num_layers"},
      {[](ModelConfig& c) { c.num_q_heads = -1; }, "num_q_heads"},
      {[](ModelConfig& c) { c.num_kv_heads = 0; }, "num_kv_heads"},
      {[](ModelConfig& c) { c.num_kv_heads = 5; }, "num_kv_heads"},  // does not divide 32
      {[](ModelConfig& c) { c.head_dim = 0; }, "head_dim"},
      {[](ModelConfig& c) { c.dtype_bytes = 3; }, "dtype_bytes"},
      {[](ModelConfig& c) { c.block_tokens = 0; }, "block_tokens"},
      {[](ModelConfig& c) { c.hidden_size = 0; }, "hidden_size"},
      {[](ModelConfig& c) { c.intermediate_size = -4; }, "intermediate_size"},
      {[](ModelConfig& c) { c.vocab_size = 0; }, "vocab_size"},
  };
  for (const Case& c : cases) {
    ModelConfig config;
    c.mutate(config);
    const absl::Status status = config.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
}

}  // namespace
}  // namespace asymcache

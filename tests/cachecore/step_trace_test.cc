#include "cachecore/step_trace.h"

#include <vector>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace asymcache {
namespace {

TEST(StepTrace, LineHasTheSchemaFieldsInMilliseconds) {
  const std::vector<DecodeWork> decodes = {DecodeWork{7, 100}, DecodeWork{9, 2048}};
  const std::vector<Chunk> chunks = {Chunk{3, 0, 512}, Chunk{4, 64, 80}};
  StepTraceEntry entry;
  entry.start_s = 1.5;
  entry.decodes = decodes;
  entry.chunks = chunks;
  entry.predicted_s = 0.0123456;
  entry.forward_s = 0.01;
  entry.step_s = 0.0125;
  entry.waiting = 3;
  EXPECT_EQ(StepTraceLine(entry),
            "{\"t_ms\": 1500.0000, \"decodes\": [100,2048], \"chunks\": [[3,0,512],[4,64,80]], "
            "\"predicted_ms\": 12.3456, \"forward_ms\": 10.0000, \"step_ms\": 12.5000, "
            "\"waiting\": 3}");
  EXPECT_EQ(StepTraceLine(StepTraceEntry{}),
            "{\"t_ms\": 0.0000, \"decodes\": [], \"chunks\": [], \"predicted_ms\": 0.0000, "
            "\"forward_ms\": 0.0000, \"step_ms\": 0.0000, \"waiting\": 0}");
}

TEST(StepTrace, HeaderNamesTheSchemaTheStartAndTheModel) {
  ModelConfig model;  // the Llama-3-8B shape
  model.name = "quo\"te";
  const std::string header = StepTraceHeader(model, absl::UnixEpoch() + absl::Seconds(90));
  EXPECT_EQ(header.rfind("{\"schema\": \"asymcache.step_trace.v1\", \"started\": "
                         "\"1970-01-01T00:01:30+00:00\", \"model\": {\"name\": \"quo\\\"te\", "
                         "\"num_layers\": 32,",
                         0),
            0u)
      << header;
  EXPECT_NE(header.find("\"block_tokens\": 16"), std::string::npos) << header;
  EXPECT_EQ(header.back(), '}');
}

}  // namespace
}  // namespace asymcache

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "sim/generators.h"
#include "sim/trace.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

Workload StripLines(Workload w) {
  for (SessionSpec& s : w.sessions) {
    for (StepSpec& step : s.steps) step.source_line = 0;
  }
  return w;
}

TEST(Trace, RoundTripsEveryGenerator) {
  for (const std::string& name : WorkloadNames()) {
    GeneratorOptions o;
    o.workload = name;
    o.sessions = 15;
    o.seed = 21;
    absl::StatusOr<Workload> w = GenerateWorkload(o);
    ASSERT_TRUE(w.ok());
    const std::string text = WriteTrace(*w);
    absl::StatusOr<Workload> back = ParseTrace(text, "gen.jsonl");
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(StripLines(*back).sessions, w->sessions) << name;
    EXPECT_EQ(WriteTrace(*back), text);
  }
}

TEST(Trace, ExplicitTokensAndInterleavedSessionsParse) {
  const std::string text =
      "{\"session\":\"b\",\"step\":0,\"arrival_s\":2,\"salt\":\"t\",\"input\":[{\"tokens\":[5,6,7]}],"
      "\"output_len\":3,\"tool\":\"bash\",\"tool_s\":0.5}\n"
      "\n"
      "{\"session\":\"a\",\"step\":0,\"arrival_s\":1,\"input\":[{\"shared\":\"doc\",\"len\":40}],"
      "\"output_len\":2,\"last_step\":true}\n"
      "{\"session\":\"b\",\"step\":1,\"input\":[],\"output_len\":1,\"last_step\":true}\n";
  absl::StatusOr<Workload> w = ParseTrace(text, "mixed.jsonl");
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_EQ(w->sessions.size(), 2u);
  EXPECT_EQ(w->sessions[0].id, "a");  // sorted by start
  const SessionSpec& b = w->sessions[1];
  EXPECT_EQ(b.salt, "t");
  EXPECT_EQ(b.steps[0].input[0].tokens, (std::vector<TokenId>{5, 6, 7}));
  EXPECT_EQ(b.steps[0].tool, "bash");
  EXPECT_DOUBLE_EQ(b.steps[0].delay_after_s(), 0.5);
  EXPECT_EQ(b.steps[1].source_line, 4);
  absl::StatusOr<Workload> back = ParseTrace(WriteTrace(*w), "again.jsonl");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(StripLines(*back).sessions, StripLines(*w).sessions);
}

struct BadCase {
  const char* name;
  std::string second_line;  // the malformed line, placed at line 2
  const char* message;
};

// A valid first line, then the malformed one: errors must name line 2.
TEST(Trace, MalformedLinesNameFileAndLineAndYieldNothing) {
  const std::string good =
      "{\"session\":\"ok\",\"step\":0,\"arrival_s\":0,\"input\":[{\"len\":10}],\"output_len\":2,"
      "\"last_step\":true}";
  const std::string s0 = "\"session\":\"x\",\"step\":0,\"arrival_s\":1,";
  const std::vector<BadCase> cases = {
      {"bad json", "{\"session\":", "not valid JSON"},
      {"not object", "[1,2]", "must be a JSON object"},
      {"missing session", "{\"step\":0,\"arrival_s\":1,\"input\":[{\"len\":1}],\"output_len\":1}",
       "missing 'session'"},
      {"unknown key", "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"lastStep\":true}",
       "unknown key 'lastStep'"},
      {"step type", "{\"session\":\"x\",\"step\":\"0\",\"arrival_s\":1,\"input\":[],\"output_len\":1}",
       "'step' must be an integer"},
      {"negative arrival",
       "{\"session\":\"x\",\"step\":0,\"arrival_s\":-1,\"input\":[{\"len\":1}],\"output_len\":1}",
       "'arrival_s' must be finite and >= 0"},
      {"no arrival", "{\"session\":\"x\",\"step\":0,\"input\":[{\"len\":1}],\"output_len\":1}",
       "step 0 needs 'arrival_s'"},
      {"arrival later", "{\"session\":\"ok\",\"step\":1,\"arrival_s\":3,\"input\":[],\"output_len\":1}",
       "only step 0 takes 'arrival_s'"},
      {"gap", "{\"session\":\"x\",\"step\":1,\"input\":[],\"output_len\":1,\"last_step\":true}",
       "expected step 0, got step 1"},
      {"after last", "{\"session\":\"ok\",\"step\":1,\"input\":[],\"output_len\":1,\"last_step\":true}",
       "step after the last_step"},
      {"tool without duration", "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"bash\"}",
       "'tool' needs 'tool_s'"},
      {"duration without tool", "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool_s\":1}",
       "'tool_s' without 'tool'"},
      {"last with tool",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"a\",\"tool_s\":1,\"last_step\":true}",
       "a last step cannot call a tool"},
      {"zero output", "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":0,\"last_step\":true}",
       "'output_len' out of range"},
      {"zero part", "{" + s0 + "\"input\":[{\"len\":0}],\"output_len\":1,\"last_step\":true}",
       "'len' out of range"},
      {"part keys", "{" + s0 + "\"input\":[{\"tokens\":[1],\"len\":1}],\"output_len\":1,\"last_step\":true}",
       "takes no 'len' or 'shared'"},
      {"bad token", "{" + s0 + "\"input\":[{\"tokens\":[1.5]}],\"output_len\":1,\"last_step\":true}",
       "'tokens' entries must be integers"},
      {"empty first input", "{" + s0 + "\"input\":[],\"output_len\":1,\"last_step\":true}",
       "step 0 needs a non-empty 'input'"},
      {"truncated", "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"a\",\"tool_s\":1}",
       "ends without a step marked"},
      {"think with tool",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"a\",\"tool_s\":1,\"think_s\":1}",
       "'think_s' and 'tool' are exclusive"},
      {"part not object", "{" + s0 + "\"input\":[5],\"output_len\":1,\"last_step\":true}",
       "each 'input' part must be an object"},
      {"unknown part key",
       "{" + s0 + "\"input\":[{\"len\":1,\"size\":2}],\"output_len\":1,\"last_step\":true}",
       "unknown input part key 'size'"},
      {"empty tokens", "{" + s0 + "\"input\":[{\"tokens\":[]}],\"output_len\":1,\"last_step\":true}",
       "'tokens' must be a non-empty array"},
      {"tokens not array",
       "{" + s0 + "\"input\":[{\"tokens\":7}],\"output_len\":1,\"last_step\":true}",
       "'tokens' must be a non-empty array"},
      {"token 2^31",
       "{" + s0 + "\"input\":[{\"tokens\":[2147483648]}],\"output_len\":1,\"last_step\":true}",
       "'tokens' entries must be integers in [0, 2^31)"},
      {"negative token",
       "{" + s0 + "\"input\":[{\"tokens\":[-1]}],\"output_len\":1,\"last_step\":true}",
       "'tokens' entries must be integers in [0, 2^31)"},
      {"part without len", "{" + s0 + "\"input\":[{}],\"output_len\":1,\"last_step\":true}",
       "an input part needs 'len' (or 'tokens')"},
      {"shared without len",
       "{" + s0 + "\"input\":[{\"shared\":\"doc\"}],\"output_len\":1,\"last_step\":true}",
       "an input part needs 'len' (or 'tokens')"},
      {"empty shared",
       "{" + s0 + "\"input\":[{\"shared\":\"\",\"len\":4}],\"output_len\":1,\"last_step\":true}",
       "'shared' must be a non-empty string"},
      {"empty session",
       "{\"session\":\"\",\"step\":0,\"arrival_s\":1,\"input\":[{\"len\":1}],\"output_len\":1,"
       "\"last_step\":true}",
       "'session' must be a non-empty string"},
      {"salt not string",
       "{" + s0 + "\"salt\":3,\"input\":[{\"len\":1}],\"output_len\":1,\"last_step\":true}",
       "'salt' must be a string"},
      {"input not array", "{" + s0 + "\"input\":{\"len\":1},\"output_len\":1,\"last_step\":true}",
       "'input' must be an array of parts"},
      {"empty tool",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"\",\"tool_s\":1}",
       "'tool' must be a non-empty string"},
      {"last_step not bool",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"last_step\":1}",
       "'last_step' must be true or false"},
      {"tool_s not number",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"tool\":\"a\",\"tool_s\":\"1\"}",
       "'tool_s' must be a number"},
      {"think_s not number",
       "{" + s0 + "\"input\":[{\"len\":1}],\"output_len\":1,\"think_s\":null,\"last_step\":true}",
       "'think_s' must be a number"},
  };
  for (const BadCase& c : cases) {
    const std::string text = good + "\n" + c.second_line + "\n";
    absl::StatusOr<Workload> w = ParseTrace(text, "bad.jsonl");
    ASSERT_FALSE(w.ok()) << c.name;
    EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(std::string(w.status().message()), StartsWith("bad.jsonl:2: ")) << c.name;
    EXPECT_THAT(std::string(w.status().message()), HasSubstr(c.message)) << c.name;
  }
}

TEST(Trace, SaltMismatchAndEmptyTrace) {
  const std::string text =
      "{\"session\":\"s\",\"step\":0,\"arrival_s\":0,\"salt\":\"a\",\"input\":[{\"len\":4}],"
      "\"output_len\":1,\"think_s\":1}\n"
      "{\"session\":\"s\",\"step\":1,\"salt\":\"b\",\"input\":[],\"output_len\":1,\"last_step\":true}\n";
  absl::StatusOr<Workload> w = ParseTrace(text, "salt.jsonl");
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()), StartsWith("salt.jsonl:2: "));
  EXPECT_EQ(ParseTrace("\n\n", "empty.jsonl").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Trace, FilesRoundTripAndMissingFileIsNotFound) {
  GeneratorOptions o;
  o.workload = "agent";
  o.sessions = 5;
  absl::StatusOr<Workload> w = GenerateWorkload(o);
  ASSERT_TRUE(w.ok());
  const std::string path =
      (std::filesystem::temp_directory_path() / absl::StrCat("trace_test_", getpid(), ".jsonl")).string();
  ASSERT_TRUE(WriteTraceFile(*w, path).ok());
  absl::StatusOr<Workload> back = ReadTraceFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(StripLines(*back).sessions, w->sessions);
  EXPECT_EQ(ReadTraceFile(path).status().code(), absl::StatusCode::kNotFound);
}

TEST(Trace, CheckedInSampleTracesParse) {
  int found = 0;
  for (const auto& entry : std::filesystem::directory_iterator("workloads")) {
    if (entry.path().extension() != ".jsonl") continue;
    ++found;
    absl::StatusOr<Workload> w = ReadTraceFile(entry.path().string());
    EXPECT_TRUE(w.ok()) << entry.path() << ": " << w.status();
  }
  EXPECT_GE(found, 1) << "no workloads/*.jsonl (tests run from the repository root)";
}

}  // namespace
}  // namespace asymcache

#include "services/loadgen/run_summary.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asymcache::loadgen {
namespace {

RequestRecord Finished(double sent, double first, double finish, std::vector<int32_t> tokens) {
  RequestRecord r;
  r.sent_s = sent;
  r.first_token_s = first;
  r.finish_s = finish;
  r.tokens = std::move(tokens);
  r.output_tokens = static_cast<int64_t>(r.tokens.size());
  return r;
}

TEST(SummarizeTest, NearestRankPercentiles) {
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);  // unsorted on purpose
  const Distribution d = Summarize(values);
  EXPECT_EQ(d.count, 100);
  EXPECT_DOUBLE_EQ(d.mean, 50.5);
  EXPECT_DOUBLE_EQ(d.p50, 50);
  EXPECT_DOUBLE_EQ(d.p90, 90);
  EXPECT_DOUBLE_EQ(d.p99, 99);
  EXPECT_DOUBLE_EQ(d.max, 100);
  const Distribution one = Summarize(std::vector<double>{7});
  EXPECT_DOUBLE_EQ(one.p50, 7);
  EXPECT_DOUBLE_EQ(one.p99, 7);
  EXPECT_EQ(Summarize(std::vector<double>{}).count, 0);
}

TEST(SummarizeRunTest, CountsFinishedFailedAndNotSentApart) {
  ReplayResult result;
  RequestRecord a = Finished(0, 0.5, 1.5, {1, 2, 3});  // ttft 0.5, tpot 0.5
  a.prompt_tokens = 100;
  a.hit_tokens = 60;
  a.rebuilt_tokens = 16;
  result.requests.push_back(a);
  RequestRecord b = Finished(1, 1.1, 1.1, {4});  // one token: no tpot
  b.prompt_tokens = 100;
  b.hit_tokens = 20;
  result.requests.push_back(b);
  RequestRecord failed;
  failed.sent_s = 2;
  failed.status = absl::ResourceExhaustedError("pool full");
  result.requests.push_back(failed);
  RequestRecord never;  // sent_s = -1
  never.status = absl::AbortedError("earlier step failed");
  result.requests.push_back(never);
  result.jobs.push_back(JobRecord{0, 0, 3});
  result.jobs.push_back(JobRecord{1, 1, -1});  // unfinished job: not in the latency
  result.duration_s = 2;

  const RunSummary s = SummarizeRun(result);
  EXPECT_EQ(s.requests, 4);
  EXPECT_EQ(s.finished, 2);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.not_sent, 1);
  EXPECT_THAT(s.first_error, ::testing::HasSubstr("pool full"));
  EXPECT_DOUBLE_EQ(s.ttft_s.mean, (0.5 + 0.1) / 2);
  EXPECT_EQ(s.tpot_s.count, 1);
  EXPECT_DOUBLE_EQ(s.tpot_s.mean, 0.5);
  EXPECT_DOUBLE_EQ(s.hit_rate, 80.0 / 200.0);
  EXPECT_EQ(s.rebuilt_tokens, 16);
  EXPECT_EQ(s.generated_tokens, 4);
  EXPECT_DOUBLE_EQ(s.throughput_tokens_per_s, 2);
  EXPECT_EQ(s.job_latency_s.count, 1);
  EXPECT_DOUBLE_EQ(s.job_latency_s.mean, 3);
}

TEST(CountTokenMismatchesTest, ComparesOnlyRequestsBothFinished) {
  ReplayResult a, b;
  a.requests = {Finished(0, 1, 2, {1, 2}), Finished(0, 1, 2, {3, 4}), Finished(0, 1, 2, {5})};
  b.requests = {Finished(0, 1, 2, {1, 2}), Finished(0, 1, 2, {3, 9}), RequestRecord{}};
  EXPECT_EQ(CountTokenMismatches(a, b), 1);
  EXPECT_EQ(CountTokenMismatches(a, a), 0);
}

TEST(ReplayOptionsTest, BadFieldsAreNamed) {
  ReplayOptions o;
  EXPECT_THAT(ValidateReplayOptions(o).message(), ::testing::HasSubstr("target"));
  o.target = "127.0.0.1:1";
  EXPECT_THAT(ValidateReplayOptions(o).message(), ::testing::HasSubstr("vocab_size"));
  o.vocab_size = 1024;
  EXPECT_TRUE(ValidateReplayOptions(o).ok());
  o.max_in_flight = 0;
  EXPECT_THAT(ValidateReplayOptions(o).message(), ::testing::HasSubstr("max_in_flight"));
  o.max_in_flight = 1;
  o.top_p = 0;
  EXPECT_THAT(ValidateReplayOptions(o).message(), ::testing::HasSubstr("top_p"));
}

TEST(ReplayTest, UnreachableTargetIsUnavailable) {
  ReplayOptions o;
  o.target = "127.0.0.1:1";  // nothing listens on port 1
  o.vocab_size = 1024;
  o.connect_timeout = absl::Milliseconds(300);
  Workload w;
  SessionSpec session;
  session.id = "s";
  StepSpec step;
  step.input = {InputPart::Unique(16)};
  step.last_step = true;
  session.steps.push_back(step);
  w.sessions.push_back(session);
  absl::StatusOr<ReplayResult> result = Replay(w, o);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
}

}  // namespace
}  // namespace asymcache::loadgen

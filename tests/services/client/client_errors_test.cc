// End-to-end: every bad request through asymcache::Client gets the precise
// status code of cache_daemon.proto, a message naming the offending field, and
// changes nothing in the daemon (its stats before == after).
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/client/test_daemon.h"

namespace asymcache::testing {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kPoolBlocks = 16;
constexpr int64_t kMaxContextTokens = 1024;

class ClientErrorsTest : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonOptions options = SmallDaemonOptions(kPoolBlocks);
    options.max_context_tokens = kMaxContextTokens;
    ASSERT_NO_FATAL_FAILURE(StartDaemon(options));
    // Some state for a failed request to (not) change: one committed context
    // and one open lease.
    RunStep("s", 1, Tokens(40, 1));
    absl::StatusOr<LeasedStep> open = client_->PlanStep("s", 2, Tokens(24, 2));
    ASSERT_TRUE(open.ok()) << open.status();
    open_lease_ = open->lease_id;
  }

  // Runs `call`, expects `code` with `field` in the message, and no change.
  void ExpectRefused(const std::function<absl::Status()>& call, absl::StatusCode code,
                     absl::string_view field) {
    const std::string before = StateOf(Stats());
    const absl::Status status = call();
    EXPECT_EQ(status.code(), code) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(std::string(field))) << status;
    EXPECT_EQ(StateOf(Stats()), before);
  }

  uint64_t open_lease_ = 0;
};

TEST_F(ClientErrorsTest, EmptyTokensAreInvalid) {
  ExpectRefused([&] { return client_->PlanStep("s", 3, {}).status(); },
                absl::StatusCode::kInvalidArgument, "tokens");
}

TEST_F(ClientErrorsTest, TokensOutsideTheVocabularyAreInvalid) {
  std::vector<TokenId> tokens = Tokens(40, 3);
  tokens[17] = kTinyVocab;
  ExpectRefused([&] { return client_->PlanStep("s", 3, tokens).status(); },
                absl::StatusCode::kInvalidArgument, "tokens[17]");
  tokens[17] = -1;
  ExpectRefused([&] { return client_->PlanStep("s", 3, tokens).status(); },
                absl::StatusCode::kInvalidArgument, "tokens[17]");
}

TEST_F(ClientErrorsTest, SequenceZeroIsInvalid) {
  ExpectRefused([&] { return client_->PlanStep("s", 0, Tokens(8, 3)).status(); },
                absl::StatusCode::kInvalidArgument, "sequence_id");
}

TEST_F(ClientErrorsTest, ContextBeyondMaxContextTokensIsInvalid) {
  ExpectRefused(
      [&] { return client_->PlanStep("s", 3, Tokens(kMaxContextTokens + 1, 3)).status(); },
      absl::StatusCode::kInvalidArgument, "tokens");
  // Exactly the maximum is fine (64 blocks > pool, so only the size check is
  // exercised when the pool is large enough; here it must not be INVALID_ARGUMENT).
  const absl::Status at_max = client_->PlanStep("s", 3, Tokens(kMaxContextTokens, 3)).status();
  EXPECT_NE(at_max.code(), absl::StatusCode::kInvalidArgument) << at_max;
}

TEST_F(ClientErrorsTest, HashesThatDoNotMatchTheTokensAreInvalid) {
  const std::vector<TokenId> tokens = Tokens(40, 4);
  PlanStepOptions wrong;
  wrong.block_hashes = ChainHashes("s", tokens, TinyBlockTokens());
  wrong.block_hashes[1].lo ^= 1;  // second block wrong
  ExpectRefused([&] { return client_->PlanStep("s", 4, tokens, wrong).status(); },
                absl::StatusCode::kInvalidArgument, "block_hashes");

  PlanStepOptions other_salt;
  other_salt.block_hashes = ChainHashes("another salt", tokens, TinyBlockTokens());
  ExpectRefused([&] { return client_->PlanStep("s", 4, tokens, other_salt).status(); },
                absl::StatusCode::kInvalidArgument, "block_hashes");

  PlanStepOptions too_few;
  too_few.block_hashes = ChainHashes("s", tokens, TinyBlockTokens());
  too_few.block_hashes.pop_back();
  ExpectRefused([&] { return client_->PlanStep("s", 4, tokens, too_few).status(); },
                absl::StatusCode::kInvalidArgument, "block_hashes");
}

TEST_F(ClientErrorsTest, ModelMismatchIsFailedPrecondition) {
  PlanStepOptions options;
  options.expected_model = ModelConfig::Named("llama-3-8b").value();
  ExpectRefused([&] { return client_->PlanStep("s", 5, Tokens(8, 5), options).status(); },
                absl::StatusCode::kFailedPrecondition, "expected_model");
  ExpectRefused([&] { return client_->AttachPool(options.expected_model).status(); },
                absl::StatusCode::kFailedPrecondition, "expected_model");
}

TEST_F(ClientErrorsTest, UnknownLeaseIsNotFound) {
  const uint64_t unknown = open_lease_ + 1000;
  ExpectRefused([&] { return client_->CommitStep(unknown).status(); },
                absl::StatusCode::kNotFound, "lease");
  ExpectRefused([&] { return client_->ReleaseStep(unknown).status(); },
                absl::StatusCode::kNotFound, "lease");
  ExpectRefused([&] { return client_->RenewLease(unknown).status(); },
                absl::StatusCode::kNotFound, "lease");
}

TEST_F(ClientErrorsTest, DoubleCommitIsFailedPrecondition) {
  ASSERT_OK(client_->CommitStep(open_lease_));
  ExpectRefused([&] { return client_->CommitStep(open_lease_).status(); },
                absl::StatusCode::kFailedPrecondition, "lease");
  ASSERT_OK(client_->ReleaseStep(open_lease_));
  // Released: now unknown.
  ExpectRefused([&] { return client_->ReleaseStep(open_lease_).status(); },
                absl::StatusCode::kNotFound, "lease");
}

TEST_F(ClientErrorsTest, InvalidateBeyondThePoolIsOutOfRange) {
  const BlockId beyond = static_cast<BlockId>(kPoolBlocks);
  ExpectRefused([&] { return client_->InvalidateBlocks({beyond}).status(); },
                absl::StatusCode::kOutOfRange, "block_ids");
  ExpectRefused([&] { return client_->InvalidateBlocks({0, -1}).status(); },
                absl::StatusCode::kOutOfRange, "block_ids");
  ExpectRefused([&] { return client_->InvalidateBlocks({}).status(); },
                absl::StatusCode::kInvalidArgument, "block_ids");
}

TEST_F(ClientErrorsTest, EmptyLookupIsInvalid) {
  ExpectRefused([&] { return client_->Lookup({}).status(); },
                absl::StatusCode::kInvalidArgument, "hashes");
}

TEST_F(ClientErrorsTest, BadPinRequestsAreRefused) {
  ExpectRefused([&] { return client_->PinJob(AgentJob{}, "s", Tokens(40, 1)).status(); },
                absl::StatusCode::kInvalidArgument, "job_id");
  ExpectRefused([&] { return client_->RefreshPin("no-such-job", absl::Seconds(1)); },
                absl::StatusCode::kNotFound, "no-such-job");
}

}  // namespace
}  // namespace asymcache::testing

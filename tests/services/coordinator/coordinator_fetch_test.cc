// Route's fetch runs name a live daemon — prefill or decode-only — and never
// a member that is not live (review finding: a decode-only daemon holding
// blocks used to yield a FetchRun with no daemon id).
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gtest/gtest.h"
#include "tests/services/coordinator/coordinator_test_util.h"

namespace asymcache {
namespace {

using ::asymcache::testing::Call;
using ::asymcache::testing::CoordinatorStub;
using ::asymcache::testing::LocalCoordinatorOptions;
using ::asymcache::testing::StartCoordinator;
using ::asymcache::testing::SyntheticDaemonRegistration;
using Stub = v1::Coordinator::Stub;

class CoordinatorFetchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    CoordinatorOptions options = LocalCoordinatorOptions();
    // Transfers cheaper than any rebuild: every block a source holds is fetched.
    options.router.fetch_setup = absl::ZeroDuration();
    options.router.fetch_bytes_per_s = 1e15;
    coordinator_ = StartCoordinator(options);
    ASSERT_NE(coordinator_, nullptr);
    stub_ = CoordinatorStub(coordinator_->local_address());
  }
  void TearDown() override {
    stub_.reset();
    if (coordinator_ != nullptr) coordinator_->Shutdown();
  }
  void Register(const v1::RegisterRequest& r) {
    v1::RegisterResponse resp;
    const grpc::Status s = Call(*stub_, &Stub::Register, r, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  MemberSlot SlotOf(const std::string& id) {
    const RoutingView view = coordinator_->state().registry().View();
    for (const auto* list : {&view.prefill, &view.decode}) {
      for (const RoutingMember& m : *list) {
        if (m.daemon->member_id == id) return m.slot;
      }
    }
    ADD_FAILURE() << "no routable daemon " << id;
    return 0;
  }
  // Indexes blocks [0, blocks) of the context as held by `slot`.
  void Hold(MemberSlot slot, const std::vector<BlockHash>& hashes, int64_t blocks) {
    const int block_tokens = ModelConfig::Named("tiny")->block_tokens;
    for (int64_t b = 0; b < blocks; ++b) {
      ASSERT_TRUE(coordinator_->state().index().AddStored(slot, hashes[b], static_cast<BlockId>(b),
                                                         b * block_tokens));
    }
  }
  v1::RouteResponse Route(const std::vector<TokenId>& tokens) {
    v1::RouteRequest request;
    request.set_salt("tenant");
    request.mutable_token_ids()->Assign(tokens.begin(), tokens.end());
    v1::RouteResponse response;
    const grpc::Status s = Call(*stub_, &Stub::Route, request, &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return response;
  }

  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Stub> stub_;
};

std::vector<TokenId> Context(int64_t n) {
  std::vector<TokenId> tokens(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) tokens[i] = static_cast<TokenId>((i * 7919 + 13) % 1000);
  return tokens;
}

TEST_F(CoordinatorFetchTest, FetchRunsNameTheDecodeDaemonHoldingTheBlocks) {
  Register(SyntheticDaemonRegistration("p", 1, v1::ROLE_PREFILL));
  Register(SyntheticDaemonRegistration("d", 2, v1::ROLE_DECODE));
  const int block_tokens = ModelConfig::Named("tiny")->block_tokens;
  const std::vector<TokenId> tokens = Context(8 * block_tokens);
  Hold(SlotOf("d"), ChainHashes("tenant", tokens, block_tokens), 8);

  const v1::RouteResponse r = Route(tokens);
  EXPECT_EQ(r.prefill().daemon_id(), "p");
  EXPECT_EQ(r.decode().daemon_id(), "d");
  ASSERT_EQ(r.fetch_size(), 1);
  EXPECT_EQ(r.fetch(0).from_daemon_id(), "d");
  EXPECT_EQ(r.fetch(0).from_daemon_address(), "127.0.0.1:2");
  EXPECT_EQ(r.fetch(0).first_position(), 0);
  EXPECT_EQ(r.fetch(0).blocks(), 8);
  EXPECT_EQ(r.prediction().fetched_blocks(), 8);
}

TEST_F(CoordinatorFetchTest, BlocksOfAMemberThatIsNotLiveAreNeverFetched) {
  Register(SyntheticDaemonRegistration("p", 1, v1::ROLE_PREFILL));
  const int block_tokens = ModelConfig::Named("tiny")->block_tokens;
  const std::vector<TokenId> tokens = Context(8 * block_tokens);
  // Slot 77 belongs to nobody (e.g. a daemon that left while its entries
  // drain): its blocks are not a source.
  Hold(77, ChainHashes("tenant", tokens, block_tokens), 8);
  const v1::RouteResponse r = Route(tokens);
  EXPECT_EQ(r.prefill().daemon_id(), "p");
  EXPECT_EQ(r.fetch_size(), 0);
  EXPECT_EQ(r.prediction().fetched_blocks(), 0);
  EXPECT_EQ(r.prediction().new_tokens(), 8 * block_tokens);
}

}  // namespace
}  // namespace asymcache

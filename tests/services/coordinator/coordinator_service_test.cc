// The Coordinator over real gRPC on 127.0.0.1 with real in-process cache
// daemons: routing to the daemon that holds a context (tokens or hashes),
// holes as rebuild runs, fetch runs, load spreading, agent affinity, split
// prefill/decode roles with workers, membership (expiry with a FakeClock,
// restart, deregister), ReportTtft, ListMembers, and the exact status code
// of every bad input.
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <limits>
#include <string>
#include <vector>

#include "cachecore/block_hash.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "services/common/proto_convert.h"
#include "services/coordinator/coordinator_service.h"
#include "tests/services/coordinator/coordinator_test_util.h"

namespace asymcache {
namespace {

using ::asymcache::testing::Call;
using ::asymcache::testing::CoordinatorStub;
using ::asymcache::testing::DaemonRegistration;
using ::asymcache::testing::LocalCoordinatorOptions;
using ::asymcache::testing::StartCoordinator;
using ::asymcache::testing::SyntheticDaemonRegistration;
using ::asymcache::testing::TestDaemon;
using ::asymcache::testing::Tokens;
using ::asymcache::testing::WaitUntil;
using ::asymcache::testing::WorkerRegistration;
using ::testing::HasSubstr;
using Stub = v1::Coordinator::Stub;

int BlockTokens() { return ::asymcache::testing::TinyBlockTokens(); }

v1::RouteRequest RouteTokens(const std::string& salt, const std::vector<TokenId>& tokens) {
  v1::RouteRequest r;
  r.set_salt(salt);
  for (TokenId t : tokens) r.add_token_ids(t);
  return r;
}

class CoordinatorServiceTest : public ::testing::Test {
 protected:
  void Start(CoordinatorOptions options = LocalCoordinatorOptions()) {
    coordinator_ = StartCoordinator(options);
    ASSERT_NE(coordinator_, nullptr);
    stub_ = CoordinatorStub(coordinator_->local_address());
  }
  void TearDown() override {
    stub_.reset();
    if (coordinator_ != nullptr) coordinator_->Shutdown();
    coordinator_.reset();
    daemons_.clear();
  }

  // Starts a real daemon and registers it; returns its index in daemons_.
  TestDaemon& AddDaemon(const std::string& id, v1::Role role = v1::ROLE_BOTH) {
    daemons_.push_back(TestDaemon::Start(id));
    TestDaemon& d = daemons_.back();
    EXPECT_NE(d.client, nullptr);
    v1::RegisterResponse resp;
    const grpc::Status s =
        Call(*stub_, &Stub::Register, DaemonRegistration(id, *d.daemon, *d.client, role), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return d;
  }

  v1::ListMembersResponse List() {
    v1::ListMembersResponse resp;
    const grpc::Status s = Call(*stub_, &Stub::ListMembers, v1::ListMembersRequest(), &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  std::map<std::string, v1::MemberInfo> Members() {
    std::map<std::string, v1::MemberInfo> out;
    const v1::ListMembersResponse list = List();
    for (const v1::MemberInfo& m : list.members()) out[m.member_id()] = m;
    return out;
  }
  // Waits until the coordinator has applied every event of the daemon.
  bool CaughtUp(TestDaemon& d) {
    return WaitUntil([&] {
      absl::StatusOr<DaemonStats> stats = d.client->GetStats();
      if (!stats.ok()) return false;
      const std::map<std::string, v1::MemberInfo> members = Members();
      auto it = members.find(d.id);
      return it != members.end() && it->second.events_connected() &&
             it->second.applied_event_sequence() == stats->last_event_sequence &&
             it->second.index_entries() == stats->indexed_blocks;
    });
  }
  v1::RouteResponse MustRoute(const v1::RouteRequest& r) {
    v1::RouteResponse resp;
    const grpc::Status s = Call(*stub_, &Stub::Route, r, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp;
  }
  grpc::StatusCode RouteCode(const v1::RouteRequest& r, std::string* message = nullptr) {
    v1::RouteResponse resp;
    const grpc::Status s = Call(*stub_, &Stub::Route, r, &resp);
    if (message != nullptr) *message = s.error_message();
    return s.error_code();
  }
  grpc::Status Register(const v1::RegisterRequest& r) {
    v1::RegisterResponse resp;
    return Call(*stub_, &Stub::Register, r, &resp);
  }
  grpc::Status Heartbeat(const std::string& id, const v1::MemberLoad& load = v1::MemberLoad()) {
    v1::HeartbeatRequest r;
    r.set_member_id(id);
    *r.mutable_load() = load;
    v1::HeartbeatResponse resp;
    return Call(*stub_, &Stub::Heartbeat, r, &resp);
  }

  // A clock for tests that drive time. A member, not a test's local: the
  // coordinator's maintenance thread reads it until TearDown stops it (a
  // local clock died first when an assertion returned early, or at the end of
  // the test body — a use after scope that crashed a run).
  FakeClock fake_clock_{absl::FromUnixSeconds(100)};
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<Stub> stub_;
  std::deque<TestDaemon> daemons_;
};

TEST_F(CoordinatorServiceTest, RoutesToTheDaemonHoldingTheContext) {
  Start();
  AddDaemon("a");
  TestDaemon& b = AddDaemon("b");
  AddDaemon("c");
  const std::vector<TokenId> context = Tokens(12 * BlockTokens() + 3, 5);
  b.Commit("tenant", 1, context);
  ASSERT_TRUE(CaughtUp(b));

  v1::RouteRequest request = RouteTokens("tenant", context);
  request.set_explain(true);
  const v1::RouteResponse r = MustRoute(request);
  EXPECT_EQ(r.prefill().daemon_id(), "b");
  EXPECT_EQ(r.prefill().daemon_address(), b.daemon->local_address());
  EXPECT_TRUE(r.prefill().worker_id().empty());
  EXPECT_FALSE(r.split());
  EXPECT_EQ(r.decode().daemon_id(), "b");
  EXPECT_EQ(r.reason(), "best_predicted_ttft");
  EXPECT_EQ(r.routing_mode(), "hole-aware");
  EXPECT_NE(r.route_id(), 0u);
  EXPECT_EQ(r.prediction().daemon_id(), "b");
  EXPECT_EQ(r.prediction().hit_tokens(), static_cast<int64_t>(context.size()));
  EXPECT_EQ(r.prediction().contiguous_hit_tokens(), static_cast<int64_t>(context.size()));
  EXPECT_EQ(r.prediction().rebuild_tokens(), 0);
  EXPECT_EQ(r.prediction().new_tokens(), 0);
  EXPECT_GT(r.prediction().predicted_ttft_s(), 0);
  EXPECT_DOUBLE_EQ(r.prediction().predicted_ttft_s(),
                   std::max(r.prediction().queue_s(), r.prediction().fetch_s()) +
                       r.prediction().compute_s());
  EXPECT_TRUE(r.rebuild().empty());
  ASSERT_EQ(r.candidates_size(), 3);
  double best = 1e9;
  for (const v1::TtftPrediction& c : r.candidates()) {
    best = std::min(best, c.predicted_ttft_s());
    if (c.daemon_id() != "b") {
      // Nothing resident there: everything is rebuilt or fetched from b.
      EXPECT_EQ(c.hit_tokens(), 0);
      const int64_t bytes_per_token = ::asymcache::testing::TinyBlockBytes() / BlockTokens();
      EXPECT_EQ(c.new_tokens() + c.rebuild_tokens() + c.fetch_bytes() / bytes_per_token,
                static_cast<int64_t>(context.size()));
      EXPECT_GT(c.predicted_ttft_s(), r.prediction().predicted_ttft_s());
    }
  }
  EXPECT_DOUBLE_EQ(best, r.prediction().predicted_ttft_s());

  // The same context by its chain hashes (a frontend that hashes itself).
  v1::RouteRequest by_hashes;
  by_hashes.set_salt("tenant");
  for (const BlockHash& h : ChainHashes("tenant", context, BlockTokens())) {
    ToProto(h, by_hashes.add_block_hashes());
  }
  by_hashes.set_num_tokens(static_cast<int64_t>(context.size()));
  const v1::RouteResponse h = MustRoute(by_hashes);
  EXPECT_EQ(h.prefill().daemon_id(), "b");
  EXPECT_EQ(h.prediction().hit_tokens(), static_cast<int64_t>(context.size()));
  EXPECT_TRUE(h.candidates().empty());  // explain off

  // Another tenant's salt hits nothing anywhere.
  const v1::RouteResponse other = MustRoute(RouteTokens("other-tenant", context));
  EXPECT_EQ(other.prediction().hit_tokens(), 0);
}

TEST_F(CoordinatorServiceTest, HolesBecomeRebuildRunsAtTheirPositions) {
  Start();
  TestDaemon& a = AddDaemon("a");
  AddDaemon("b");
  const int B = BlockTokens();
  const std::vector<TokenId> context = Tokens(8 * B, 9);
  const std::vector<BlockId> ids = a.Commit("s", 1, context);
  ASSERT_TRUE(a.client->InvalidateBlocks({ids[2], ids[3], ids[6]}).ok());
  ASSERT_TRUE(CaughtUp(a));
  const v1::RouteResponse r = MustRoute(RouteTokens("s", context));
  EXPECT_EQ(r.prefill().daemon_id(), "a");
  EXPECT_EQ(r.prediction().hit_tokens(), 5 * B);
  EXPECT_EQ(r.prediction().contiguous_hit_tokens(), 2 * B);
  EXPECT_EQ(r.prediction().rebuild_tokens(), 3 * B);
  EXPECT_EQ(r.prediction().new_tokens(), 0);
  ASSERT_EQ(r.rebuild_size(), 2);
  EXPECT_EQ(r.rebuild(0).first_position(), 2 * B);
  EXPECT_EQ(r.rebuild(0).tokens(), 2 * B);
  EXPECT_EQ(r.rebuild(1).first_position(), 6 * B);
  EXPECT_EQ(r.rebuild(1).tokens(), B);
}

TEST_F(CoordinatorServiceTest, OverloadedHolderSendsTheRequestElsewhereWithFetchRuns) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.router.fetch_bytes_per_s = 1e15;  // transfers (nearly) free: fetch every held block
  options.router.fetch_setup = absl::ZeroDuration();
  Start(options);
  TestDaemon& a = AddDaemon("a");
  AddDaemon("b");
  const int B = BlockTokens();
  const std::vector<TokenId> context = Tokens(6 * B, 11);
  a.Commit("s", 1, context);
  ASSERT_TRUE(CaughtUp(a));
  v1::MemberLoad busy;
  busy.set_queued_prefill_tokens(1 << 20);  // far beyond the imbalance bound
  ASSERT_TRUE(Heartbeat("a", busy).ok());
  const v1::RouteResponse r = MustRoute(RouteTokens("s", context));
  EXPECT_EQ(r.prefill().daemon_id(), "b");
  EXPECT_EQ(r.prediction().fetched_blocks(), 6);
  ASSERT_EQ(r.fetch_size(), 1);
  EXPECT_EQ(r.fetch(0).from_daemon_id(), "a");
  EXPECT_EQ(r.fetch(0).from_daemon_address(), a.daemon->local_address());
  EXPECT_EQ(r.fetch(0).first_position(), 0);
  EXPECT_EQ(r.fetch(0).blocks(), 6);
  EXPECT_EQ(r.fetch(0).bytes(), 6 * ::asymcache::testing::TinyBlockBytes());
  EXPECT_EQ(r.prediction().fetch_bytes(), r.fetch(0).bytes());
}

TEST_F(CoordinatorServiceTest, AFullPoolSendsTheRequestWhereItFits) {
  Start();
  TestDaemon& a = AddDaemon("a");
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("b", 1)).ok());
  const int B = BlockTokens();
  const std::vector<TokenId> context = Tokens(10 * B, 13);
  a.Commit("s", 1, context);
  ASSERT_TRUE(CaughtUp(a));
  // Heartbeats with pool sizes; they also clear the work earlier routes charged.
  auto heartbeats = [&](int64_t a_busy, int64_t b_busy) {
    for (const auto& [id, busy] : {std::pair<std::string, int64_t>{"a", a_busy}, {"b", b_busy}}) {
      v1::MemberLoad l;
      l.set_capacity_blocks(100);
      l.set_busy_blocks(busy);
      l.set_free_blocks(100 - busy);
      ASSERT_TRUE(Heartbeat(id, l).ok());
    }
  };
  // a holds the context: nothing to allocate there but the output's blocks.
  heartbeats(85, 80);
  v1::RouteResponse r = MustRoute(RouteTokens("s", context));
  EXPECT_EQ(r.prefill().daemon_id(), "a");
  EXPECT_EQ(r.reason(), "best_predicted_ttft");
  EXPECT_EQ(Members().at("a").load().busy_blocks(), 85);
  v1::RouteRequest with_output = RouteTokens("s", context);
  with_output.set_reserve_tokens(5 * B + 1);  // 6 blocks
  heartbeats(85, 80);
  EXPECT_EQ(MustRoute(with_output).prefill().daemon_id(), "a");  // 15 free
  heartbeats(97, 80);
  r = MustRoute(with_output);  // 3 free: the output does not fit on a
  EXPECT_EQ(r.prefill().daemon_id(), "b");
  EXPECT_EQ(r.reason(), "memory_bound");
  // A context held nowhere needs all its 10 blocks: not on a (5 free).
  heartbeats(95, 80);
  EXPECT_EQ(MustRoute(RouteTokens("s", Tokens(10 * B, 14))).prefill().daemon_id(), "b");

  v1::RouteRequest negative = RouteTokens("s", context);
  negative.set_reserve_tokens(-1);
  std::string message;
  EXPECT_EQ(RouteCode(negative, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("reserve_tokens"));
  v1::MemberLoad bad;
  bad.set_busy_blocks(-1);
  EXPECT_EQ(Heartbeat("a", bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(CoordinatorServiceTest, StickyAgentJobsCommitTheirDaemonsPool) {
  Start();
  TestDaemon& a = AddDaemon("a");
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("b", 1)).ok());
  const int B = BlockTokens();
  const std::vector<TokenId> context = Tokens(10 * B, 15);
  a.Commit("s", 1, context);
  ASSERT_TRUE(CaughtUp(a));
  v1::MemberLoad load;
  load.set_capacity_blocks(100);
  load.set_free_blocks(100);
  ASSERT_TRUE(Heartbeat("a", load).ok());
  ASSERT_TRUE(Heartbeat("b", load).ok());
  EXPECT_EQ(MustRoute(RouteTokens("s", context)).prefill().daemon_id(), "a");
  // An agent job with a 40-block context binds to a: 40 % of its pool is
  // spoken for, more than the 5 % memory imbalance allowed (the router's
  // default) over b's 0 %.
  v1::RouteRequest job = RouteTokens("s", Tokens(40 * B, 16));
  job.mutable_agent()->set_job_id("long-job");
  job.mutable_agent()->set_tool("browse");
  ASSERT_TRUE(Heartbeat("a", load).ok());
  ASSERT_TRUE(Heartbeat("b", load).ok());
  const std::string home = MustRoute(job).prefill().daemon_id();
  ASSERT_TRUE(Heartbeat("a", load).ok());
  ASSERT_TRUE(Heartbeat("b", load).ok());
  const std::string other = home == "a" ? "b" : "a";
  // A request whose blocks sit on the job's daemon now goes elsewhere.
  const std::vector<TokenId> on_home = home == "a" ? context : Tokens(10 * B, 17);
  v1::RouteResponse r = MustRoute(RouteTokens("s", on_home));
  EXPECT_EQ(r.prefill().daemon_id(), other);
  // The job's last step frees the commitment.
  job.mutable_agent()->clear_tool();
  job.mutable_agent()->set_last_step(true);
  EXPECT_EQ(MustRoute(job).prefill().daemon_id(), home);
  ASSERT_TRUE(Heartbeat("a", load).ok());
  ASSERT_TRUE(Heartbeat("b", load).ok());
  EXPECT_EQ(MustRoute(RouteTokens("s", context)).prefill().daemon_id(), "a");
}

TEST_F(CoordinatorServiceTest, BurstsBetweenHeartbeatsSpreadOverEqualDaemons) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("y", 2)).ok());
  std::map<std::string, int> routed;
  for (int i = 0; i < 6; ++i) {
    // Distinct contexts held nowhere: equal scores but for the pending work.
    const v1::RouteResponse r = MustRoute(RouteTokens("s", Tokens(64, 100 + i)));
    ++routed[r.prefill().daemon_id()];
  }
  EXPECT_EQ(routed["x"], 3);
  EXPECT_EQ(routed["y"], 3);
  // ListMembers does not show pending work, but a heartbeat clears it: after
  // heartbeats with equal load, the next two routes split again.
  ASSERT_TRUE(Heartbeat("x").ok());
  ASSERT_TRUE(Heartbeat("y").ok());
  routed.clear();
  for (int i = 0; i < 2; ++i) ++routed[MustRoute(RouteTokens("s", Tokens(64, 200 + i))).prefill().daemon_id()];
  EXPECT_EQ(routed["x"], 1);
  EXPECT_EQ(routed["y"], 1);
}

TEST_F(CoordinatorServiceTest, AgentJobSticksToItsDaemonWhileItLives) {
  Start();
  TestDaemon& a = AddDaemon("a");
  TestDaemon& b = AddDaemon("b");
  const int B = BlockTokens();
  const std::vector<TokenId> on_a = Tokens(10 * B, 21);
  const std::vector<TokenId> on_b = Tokens(10 * B, 22);
  a.Commit("s", 1, on_a);
  b.Commit("s", 2, on_b);
  ASSERT_TRUE(CaughtUp(a));
  ASSERT_TRUE(CaughtUp(b));

  v1::RouteRequest first = RouteTokens("s", on_a);
  first.mutable_agent()->set_job_id("job-1");
  first.mutable_agent()->set_tool("search");
  EXPECT_EQ(MustRoute(first).prefill().daemon_id(), "a");
  // The job's next step carries a context whose blocks are on b: it sticks to a.
  v1::RouteRequest next = RouteTokens("s", on_b);
  next.mutable_agent()->set_job_id("job-1");
  next.mutable_agent()->set_tool("search");
  v1::RouteResponse r = MustRoute(next);
  EXPECT_EQ(r.prefill().daemon_id(), "a");
  EXPECT_EQ(r.reason(), "agent_affinity");
  // A request without the job goes by the cache.
  EXPECT_EQ(MustRoute(RouteTokens("s", on_b)).prefill().daemon_id(), "b");
  // The last step still runs on a, then the affinity is gone.
  v1::RouteRequest last = next;
  last.mutable_agent()->clear_tool();
  last.mutable_agent()->set_last_step(true);
  r = MustRoute(last);
  EXPECT_EQ(r.prefill().daemon_id(), "a");
  EXPECT_EQ(r.reason(), "agent_affinity");
  r = MustRoute(next);
  EXPECT_EQ(r.prefill().daemon_id(), "b");
  EXPECT_EQ(r.reason(), "best_predicted_ttft");

  // A job sticks to b now; b leaves: the job goes by the cache again.
  v1::RouteRequest job2 = RouteTokens("s", on_b);
  job2.mutable_agent()->set_job_id("job-2");
  EXPECT_EQ(MustRoute(job2).prefill().daemon_id(), "b");
  v1::DeregisterRequest leave;
  leave.set_member_id("b");
  v1::DeregisterResponse left;
  ASSERT_TRUE(Call(*stub_, &Stub::Deregister, leave, &left).ok());
  v1::RouteRequest job2_on_a = RouteTokens("s", on_a);
  job2_on_a.mutable_agent()->set_job_id("job-2");
  r = MustRoute(job2_on_a);
  EXPECT_EQ(r.prefill().daemon_id(), "a");
  EXPECT_EQ(r.reason(), "only_candidate");
}

TEST_F(CoordinatorServiceTest, SplitRolesPairAPrefillWorkerWithADecodeWorker) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("p", 1)).ok());
  ASSERT_TRUE(Register(WorkerRegistration("p-engine", "p", v1::ROLE_PREFILL, 11)).ok());
  // d registers as "both"; its only worker decodes, so d decodes.
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("d", 2)).ok());
  ASSERT_TRUE(Register(WorkerRegistration("d-engine", "d", v1::ROLE_DECODE, 12)).ok());
  const v1::RouteResponse r = MustRoute(RouteTokens("s", Tokens(100, 1)));
  EXPECT_TRUE(r.split());
  EXPECT_EQ(r.prefill().daemon_id(), "p");
  EXPECT_EQ(r.prefill().daemon_address(), "127.0.0.1:1");
  EXPECT_EQ(r.prefill().worker_id(), "p-engine");
  EXPECT_EQ(r.prefill().worker_address(), "127.0.0.1:11");
  EXPECT_EQ(r.decode().daemon_id(), "d");
  EXPECT_EQ(r.decode().worker_id(), "d-engine");
  EXPECT_EQ(r.decode().worker_address(), "127.0.0.1:12");
  EXPECT_EQ(r.reason(), "only_candidate");  // one prefill candidate
  const std::map<std::string, v1::MemberInfo> members = Members();
  EXPECT_EQ(members.at("d").role(), v1::ROLE_BOTH);
  EXPECT_EQ(members.at("d").effective_role(), v1::ROLE_DECODE);
  EXPECT_EQ(members.at("p").effective_role(), v1::ROLE_PREFILL);
  EXPECT_EQ(members.at("d-engine").kind(), v1::MEMBER_KIND_WORKER);
  EXPECT_EQ(members.at("d-engine").daemon_id(), "d");

  // With the prefill daemon gone, nothing can prefill: UNAVAILABLE.
  v1::DeregisterRequest leave;
  leave.set_member_id("p");
  v1::DeregisterResponse left;
  ASSERT_TRUE(Call(*stub_, &Stub::Deregister, leave, &left).ok());
  std::string message;
  EXPECT_EQ(RouteCode(RouteTokens("s", Tokens(100, 1)), &message), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(message, HasSubstr("no live daemon can prefill"));
}

TEST_F(CoordinatorServiceTest, RegisterAnswersTheIntervalsAndListMembersFillsEverything) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.heartbeat_interval = absl::Milliseconds(250);
  Start(options);
  daemons_.push_back(TestDaemon::Start("a"));
  TestDaemon& a = daemons_.back();
  v1::RegisterResponse reg;
  ASSERT_TRUE(Call(*stub_, &Stub::Register, DaemonRegistration("a", *a.daemon, *a.client), &reg).ok());
  EXPECT_DOUBLE_EQ(reg.heartbeat_interval_s(), 0.25);
  EXPECT_DOUBLE_EQ(reg.member_timeout_s(), absl::ToDoubleSeconds(options.member_timeout));
  EXPECT_FALSE(reg.coordinator_instance().empty());
  ASSERT_TRUE(Register(WorkerRegistration("a-engine", "a", v1::ROLE_BOTH, 9)).ok());
  a.Commit("s", 1, Tokens(3 * BlockTokens(), 1));
  ASSERT_TRUE(CaughtUp(a));
  v1::MemberLoad load;
  load.set_queued_prefill_tokens(0);
  load.set_decode_batch(2);
  load.set_free_blocks(200);
  load.set_capacity_blocks(256);
  load.set_last_event_sequence(a.client->GetStats()->last_event_sequence);
  ASSERT_TRUE(Heartbeat("a", load).ok());

  const v1::ListMembersResponse list = List();
  EXPECT_EQ(list.coordinator_instance(), reg.coordinator_instance());
  EXPECT_EQ(list.routing_mode(), "hole-aware");
  EXPECT_EQ(list.model().name(), "tiny");
  EXPECT_EQ(list.model().block_tokens(), BlockTokens());
  EXPECT_EQ(list.index_entries(), 3);
  EXPECT_EQ(list.index_dropped_stored(), 0);
  EXPECT_EQ(list.stale_removed(), 0);
  ASSERT_EQ(list.members_size(), 2);
  const v1::MemberInfo& d = list.members(0);
  EXPECT_EQ(d.member_id(), "a");
  EXPECT_EQ(d.kind(), v1::MEMBER_KIND_DAEMON);
  EXPECT_EQ(d.address(), a.daemon->local_address());
  EXPECT_EQ(d.gpu(), -1);
  EXPECT_EQ(d.role(), v1::ROLE_BOTH);
  EXPECT_EQ(d.effective_role(), v1::ROLE_BOTH);
  EXPECT_EQ(d.load().free_blocks(), 200);
  EXPECT_EQ(d.load().capacity_blocks(), 256);
  EXPECT_EQ(d.load().decode_batch(), 2);
  EXPECT_GE(d.since_heartbeat_s(), 0);
  EXPECT_LT(d.since_heartbeat_s(), absl::ToDoubleSeconds(options.member_timeout));
  EXPECT_EQ(d.index_entries(), 3);
  EXPECT_EQ(d.applied_event_sequence(), load.last_event_sequence());
  EXPECT_TRUE(d.events_connected());
  EXPECT_EQ(d.instance(), a.client->GetStats()->daemon_instance);
  const v1::MemberInfo& w = list.members(1);
  EXPECT_EQ(w.member_id(), "a-engine");
  EXPECT_EQ(w.kind(), v1::MEMBER_KIND_WORKER);
  EXPECT_EQ(w.daemon_id(), "a");
  EXPECT_EQ(w.address(), "127.0.0.1:9");
  EXPECT_EQ(w.index_entries(), 0);
  EXPECT_FALSE(w.events_connected());
}

TEST_F(CoordinatorServiceTest, ExpiredMemberLeavesRoutingAndRejoins) {
  FakeClock& clock = fake_clock_;
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.clock = &clock;
  options.member_timeout = absl::Seconds(5);  // on the fake clock
  Start(options);
  TestDaemon& a = AddDaemon("a");
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("b", 1)).ok());
  a.Commit("s", 1, Tokens(4 * BlockTokens(), 3));
  ASSERT_TRUE(CaughtUp(a));

  clock.Advance(absl::Seconds(4));
  ASSERT_TRUE(Heartbeat("b").ok());
  clock.Advance(absl::Seconds(2));  // a: 6 s without a heartbeat
  // It leaves the registry first (routes skip it from then on), then its
  // watcher stops and its blocks leave the index.
  ASSERT_TRUE(WaitUntil([&] { return Members().count("a") == 0; }));
  ASSERT_TRUE(WaitUntil([&] { return List().index_entries() == 0; }));
  grpc::Status hb = Heartbeat("a");
  EXPECT_EQ(hb.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(hb.error_message(), HasSubstr("register again"));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(MustRoute(RouteTokens("s", Tokens(4 * BlockTokens(), 3))).prefill().daemon_id(), "b");
  }
  // Rejoin: register again; the snapshot brings its blocks back.
  ASSERT_TRUE(
      Register(DaemonRegistration("a", *a.daemon, *a.client)).ok());
  ASSERT_TRUE(CaughtUp(a));
  EXPECT_EQ(Members().at("a").index_entries(), 4);
  EXPECT_EQ(MustRoute(RouteTokens("s", Tokens(4 * BlockTokens(), 3))).prefill().daemon_id(), "a");

  // Every member stops: routing has nobody left.
  clock.Advance(absl::Seconds(6));
  ASSERT_TRUE(WaitUntil([&] { return List().members_size() == 0; }));
  EXPECT_EQ(RouteCode(RouteTokens("s", Tokens(16, 1))), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(CoordinatorServiceTest, RestartedDaemonReRegisteringDropsItsOldBlocksAtOnce) {
  Start();
  TestDaemon& a = AddDaemon("a");
  a.Commit("s", 1, Tokens(5 * BlockTokens(), 3));
  ASSERT_TRUE(CaughtUp(a));
  ASSERT_EQ(Members().at("a").index_entries(), 5);
  // The same member id comes back as a new run, on an address where nothing
  // answers yet: the old run's blocks are gone when Register returns.
  v1::RegisterRequest moved = DaemonRegistration("a", *a.daemon, *a.client);
  moved.set_instance("a-new-run");
  moved.set_address("127.0.0.1:1");
  ASSERT_TRUE(Register(moved).ok());
  std::map<std::string, v1::MemberInfo> members = Members();
  EXPECT_EQ(members.at("a").index_entries(), 0);
  EXPECT_EQ(List().index_entries(), 0);
  EXPECT_EQ(members.at("a").instance(), "a-new-run");
  EXPECT_FALSE(members.at("a").events_connected());
  // Back on its real address: the snapshot brings back what it holds.
  ASSERT_TRUE(Register(DaemonRegistration("a", *a.daemon, *a.client)).ok());
  ASSERT_TRUE(CaughtUp(a));
  EXPECT_EQ(Members().at("a").index_entries(), 5);
}

TEST_F(CoordinatorServiceTest, ReportTtftComparesWithThePrediction) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  const v1::RouteResponse r = MustRoute(RouteTokens("s", Tokens(256, 1)));
  ASSERT_GT(r.prediction().predicted_ttft_s(), 0);
  v1::ReportTtftRequest report;
  report.set_route_id(r.route_id());
  report.set_ttft_s(2 * r.prediction().predicted_ttft_s());
  v1::ReportTtftResponse resp;
  ASSERT_TRUE(Call(*stub_, &Stub::ReportTtft, report, &resp).ok());
  EXPECT_DOUBLE_EQ(resp.predicted_ttft_s(), r.prediction().predicted_ttft_s());
  EXPECT_NEAR(resp.relative_error(), 0.5, 1e-12);
  // Reported once only.
  const grpc::Status twice = Call(*stub_, &Stub::ReportTtft, report, &resp);
  EXPECT_EQ(twice.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(twice.error_message(), HasSubstr("already reported"));
}

// ------------------------------------------------------------ bad input

TEST_F(CoordinatorServiceTest, BadRegistrationsGetPreciseCodes) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.max_members = 2;
  Start(options);
  auto code = [&](const v1::RegisterRequest& r, absl::string_view substring) {
    const grpc::Status s = Register(r);
    EXPECT_THAT(s.error_message(), HasSubstr(std::string(substring)));
    return s.error_code();
  };
  v1::RegisterRequest r = SyntheticDaemonRegistration("x", 1);
  r.set_member_id("");
  EXPECT_EQ(code(r, "member_id is empty"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x/y", 1);
  EXPECT_EQ(code(r, "character '/'"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.set_kind(v1::MEMBER_KIND_UNSPECIFIED);
  EXPECT_EQ(code(r, "MEMBER_KIND_UNSPECIFIED"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.set_kind(static_cast<v1::MemberKind>(9));
  EXPECT_EQ(code(r, "kind 9"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.set_role(static_cast<v1::Role>(7));
  EXPECT_EQ(code(r, "role 7"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.set_address("");
  EXPECT_EQ(code(r, "address is empty"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.set_address("localhost");
  EXPECT_EQ(code(r, "HOST:PORT"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.clear_model();
  EXPECT_EQ(code(r, "model is required"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.mutable_model()->set_block_tokens(0);
  EXPECT_EQ(code(r, "model:"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.clear_calibration();
  EXPECT_EQ(code(r, "calibration is required"), grpc::StatusCode::INVALID_ARGUMENT);
  r = SyntheticDaemonRegistration("x", 1);
  r.mutable_calibration()->set_attn_kv_bytes_per_s(-5);
  EXPECT_EQ(code(r, "calibration:"), grpc::StatusCode::INVALID_ARGUMENT);
  r = WorkerRegistration("w", "", v1::ROLE_DECODE, 3);
  EXPECT_EQ(code(r, "daemon_id is empty"), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(List().members_size(), 0);  // none of them registered

  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  r = SyntheticDaemonRegistration("y", 2);
  r.mutable_model()->set_num_layers(7);
  EXPECT_EQ(code(r, "model.num_layers is 7"), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("y", 2)).ok());
  EXPECT_EQ(code(SyntheticDaemonRegistration("z", 3), "member table is full"),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(CoordinatorServiceTest, BadHeartbeatsAndDeregistrationsGetPreciseCodes) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  EXPECT_EQ(Heartbeat("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Heartbeat("nobody").error_code(), grpc::StatusCode::NOT_FOUND);
  v1::MemberLoad negative;
  negative.set_free_blocks(-1);
  const grpc::Status s = Heartbeat("x", negative);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("load.free_blocks = -1 is outside [0, 2^40]"));
  // Huge loads would overflow the sums routing forms (a daemon's and its
  // workers' queues): refused by name too.
  v1::MemberLoad huge;
  huge.set_queued_prefill_tokens(std::numeric_limits<int64_t>::max() - 10);
  const grpc::Status h = Heartbeat("x", huge);
  EXPECT_EQ(h.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(h.error_message(), HasSubstr("load.queued_prefill_tokens"));
  v1::DeregisterRequest d;
  v1::DeregisterResponse resp;
  EXPECT_EQ(Call(*stub_, &Stub::Deregister, d, &resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  d.set_member_id("nobody");
  EXPECT_EQ(Call(*stub_, &Stub::Deregister, d, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  d.set_member_id("x");
  EXPECT_TRUE(Call(*stub_, &Stub::Deregister, d, &resp).ok());
  EXPECT_EQ(Heartbeat("x").error_code(), grpc::StatusCode::NOT_FOUND);
}

// --client-rate-limit on Route: past its burst a client gets RESOURCE_EXHAUSTED
// naming the limit, without being routed; the limiter is per client, so a
// refused client does not touch anyone else's budget.
TEST_F(CoordinatorServiceTest, RouteOverTheClientRateLimitIsRefused) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.client_rate_limit.requests_per_second = 0.5;
  options.client_rate_limit.burst = 2;
  Start(options);
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  for (int i = 0; i < 2; ++i) MustRoute(RouteTokens("s", Tokens(40, i)));
  std::string message;
  EXPECT_EQ(RouteCode(RouteTokens("s", Tokens(40, 9)), &message),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(message, HasSubstr("Route: client 'ip:127.0.0.1' is over its limit of 0.5 "
                                 "requests/s (burst 2)"));
}

TEST_F(CoordinatorServiceTest, BadRoutesGetPreciseCodes) {
  CoordinatorOptions options = LocalCoordinatorOptions();
  options.max_route_tokens = 1000;
  Start(options);
  std::string message;
  // Nothing registered yet.
  EXPECT_EQ(RouteCode(RouteTokens("s", Tokens(10, 1)), &message), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(message, HasSubstr("no cache daemon is registered"));
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());

  EXPECT_EQ(RouteCode(v1::RouteRequest(), &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("token_ids and block_hashes are both empty"));
  EXPECT_EQ(RouteCode(RouteTokens("s", Tokens(1001, 1)), &message),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("more than max_route_tokens 1000"));
  std::vector<TokenId> tokens = Tokens(40, 1);
  tokens[17] = -3;
  EXPECT_EQ(RouteCode(RouteTokens("s", tokens), &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("token_ids[17] = -3 is negative"));
  tokens[17] = ::asymcache::testing::kTinyVocab;
  EXPECT_EQ(RouteCode(RouteTokens("s", tokens), &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("token_ids[17] = 1024 is outside the vocabulary"));

  const int B = BlockTokens();
  v1::RouteRequest hashes;
  for (int i = 0; i < 3; ++i) ToProto(BlockHash{static_cast<uint64_t>(i + 1), 9}, hashes.add_block_hashes());
  EXPECT_EQ(RouteCode(hashes, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("num_tokens must be positive"));
  hashes.set_num_tokens(3 * B + 1);  // needs 4 hashes
  EXPECT_EQ(RouteCode(hashes, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("3 block_hashes for num_tokens"));
  hashes.set_num_tokens(2 * B);  // needs 2
  EXPECT_EQ(RouteCode(hashes, &message), grpc::StatusCode::INVALID_ARGUMENT);
  hashes.set_num_tokens(1001);
  EXPECT_EQ(RouteCode(hashes, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("max_route_tokens"));
  hashes.set_num_tokens(3 * B - 2);  // consistent: OK
  EXPECT_EQ(RouteCode(hashes), grpc::StatusCode::OK);

  v1::RouteRequest agent = RouteTokens("s", Tokens(20, 1));
  agent.mutable_agent()->set_tool("search");
  EXPECT_EQ(RouteCode(agent, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("without agent.job_id"));
  agent.mutable_agent()->clear_tool();
  agent.mutable_agent()->set_last_step(true);
  EXPECT_EQ(RouteCode(agent), grpc::StatusCode::INVALID_ARGUMENT);
  agent.mutable_agent()->set_job_id(std::string(300, 'j'));
  EXPECT_EQ(RouteCode(agent, &message), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(message, HasSubstr("agent.job_id"));
}

TEST_F(CoordinatorServiceTest, BadTtftReportsGetPreciseCodes) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  const uint64_t id = MustRoute(RouteTokens("s", Tokens(20, 1))).route_id();
  auto code = [&](uint64_t route_id, double ttft) {
    v1::ReportTtftRequest r;
    r.set_route_id(route_id);
    r.set_ttft_s(ttft);
    v1::ReportTtftResponse resp;
    return Call(*stub_, &Stub::ReportTtft, r, &resp).error_code();
  };
  EXPECT_EQ(code(0, 0.1), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(id, 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(id, -1), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(id, std::nan("")), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(id, INFINITY), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(code(id ^ 1, 0.1), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(code(id, 0.1), grpc::StatusCode::OK);  // the bad ones consumed nothing
}

TEST(CoordinatorServiceShutdown, StoppedAcceptingServiceRefusesNewWorkWithUnavailable) {
  // The service on a server of its own, so that the server keeps serving
  // while the service refuses (Coordinator::Shutdown closes the port too,
  // and the transport's UNAVAILABLE would hide the service's).
  absl::StatusOr<std::unique_ptr<CoordinatorState>> state =
      CoordinatorState::Create(LocalCoordinatorOptions(), nullptr);
  ASSERT_TRUE(state.ok()) << state.status();
  CoordinatorService service(state->get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Stub> stub = CoordinatorStub("127.0.0.1:" + std::to_string(port));
  v1::RegisterResponse registered;
  ASSERT_TRUE(Call(*stub, &Stub::Register, SyntheticDaemonRegistration("x", 1), &registered).ok());
  v1::RouteResponse routed;
  ASSERT_TRUE(Call(*stub, &Stub::Route, RouteTokens("s", Tokens(20, 1)), &routed).ok());

  service.StopAccepting();
  const grpc::Status route = Call(*stub, &Stub::Route, RouteTokens("s", Tokens(20, 1)), &routed);
  EXPECT_EQ(route.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(route.error_message(), HasSubstr("shutting down"));
  EXPECT_THAT(route.error_message(), HasSubstr("Route"));
  const grpc::Status late =
      Call(*stub, &Stub::Register, SyntheticDaemonRegistration("late", 2), &registered);
  EXPECT_EQ(late.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(late.error_message(), HasSubstr("shutting down"));
  v1::ListMembersResponse list;
  EXPECT_EQ(Call(*stub, &Stub::ListMembers, v1::ListMembersRequest(), &list).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ((*state)->registry().members(), 1);  // the refused Register changed nothing
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

TEST_F(CoordinatorServiceTest, StateStaysReadableAfterShutdownAndTakesNoNewMembers) {
  Start();
  ASSERT_TRUE(Register(SyntheticDaemonRegistration("x", 1)).ok());
  coordinator_->Shutdown();
  EXPECT_EQ(coordinator_->state().registry().members(), 1);
  MemberRegistration late;
  late.member_id = "late";
  EXPECT_EQ(coordinator_->state().Register(late).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace asymcache

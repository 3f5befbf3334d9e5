// Faults survived (issue #9, "Faults"; docs/reliability_faults.md): real
// coordinator, daemon and worker processes on 127.0.0.1 (fault_cluster.h),
// broken on purpose while requests run, and every request's answer checked
// against the dense no-cache reference (greedy, so the tokens are a pure
// function of the prompt). The promise: each request gets exactly the
// reference's tokens or a clear error — never a wrong token — and the
// surviving daemons hold no block of a finished request.
//
//   DaemonKilledDuringSteps      kill -9 one of two daemons under a stream of
//                                requests through the coordinator
//   RestartedDaemonRejoins       the same daemon back on its port: its worker
//                                re-maps the new pool without restarting, the
//                                coordinator ramps it in (ListMembers)
//   PeerKilledMidTransfer        the exporting daemon killed while the
//                                importer reads its blocks over UCX; a decode
//                                worker whose kv_source died rebuilds
//   CoordinatorReplicaRestart    one of two coordinators killed and restarted
//                                under a stream of requests
//   HungDaemonDuringSteps        one of two daemons SIGSTOPped under a stream
//                                of requests, then SIGCONTed
//
// Each test is bounded (kFaultBound per wait, the ctest TIMEOUT overall) and
// prints the children's logs when it fails.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cachecore/block_hash.h"
#include "gtest/gtest.h"
#include "services/client/client.h"
#include "tests/services/faults/fault_cluster.h"

namespace asymcache {
namespace {

using testing::FaultCluster;
using testing::Generate;
using testing::Generated;
using testing::kFaultBound;
using testing::Outcome;
using testing::Prompts;

constexpr absl::Duration kStreamDeadline = absl::Seconds(30);

class FaultsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (absl::Status s = FaultCluster::FindBinaries(&cluster_); !s.ok()) {
      GTEST_SKIP() << s.message();
    }
  }
  void TearDown() override {
    if (HasFailure()) cluster_.DumpLogs();
  }

  // Coordinator "c0", daemons d0/d1 with workers w0/w1 (role both).
  void StartTwoDaemonCluster(const std::vector<std::string>& coordinator_flags = {}) {
    ASSERT_TRUE(cluster_.StartCoordinator("c0", 0, coordinator_flags).ok());
    const std::vector<std::string> coordinators = {cluster_.address("c0")};
    for (int i = 0; i < 2; ++i) {
      const std::string d = absl::StrCat("d", i);
      const std::string w = absl::StrCat("w", i);
      absl::Status s = cluster_.StartDaemon(d, 0, coordinators);
      ASSERT_TRUE(s.ok()) << s;
      s = cluster_.StartWorker(w, d, coordinators);
      ASSERT_TRUE(s.ok()) << s;
    }
    const absl::Status s = cluster_.WaitForMembers("c0", {"d0", "d1", "w0", "w1"});
    ASSERT_TRUE(s.ok()) << s;
  }

  // Until `daemon` holds no block of any request (no lease, writes, pins,
  // transfers); false with the last stats in `seen` otherwise.
  bool Settled(const std::string& daemon, std::string* seen) {
    return testing::WaitFor([&] {
      absl::StatusOr<v1::GetStatsResponse> stats = testing::DaemonStatsOf(daemon);
      *seen = stats.ok() ? stats->DebugString() : stats.status().ToString();
      return stats.ok() && testing::NothingHeld(*stats);
    });
  }

  FaultCluster cluster_;
};

// Runs prompts [begin, end) through `target` from `threads` client threads,
// adding each answer to `outcome`. `on_done` (may be empty) runs after each.
void RunRequests(const std::string& target, const Prompts& prompts, int begin, int end,
                 int threads, Outcome* outcome, absl::Mutex* mu,
                 const std::function<void()>& on_done = {}) {
  std::atomic<int> next{begin};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&] {
      auto stub = testing::StubTo<v1::Worker>(target);
      for (int i = next++; i < end; i = next++) {
        const Generated g = Generate(*stub, prompts.request(i), kStreamDeadline);
        {
          absl::MutexLock lock(mu);
          outcome->Add(g, prompts.reference(i));
        }
        if (on_done) on_done();
      }
    });
  }
  for (std::thread& c : clients) c.join();
}

TEST_F(FaultsTest, DaemonKilledDuringStepsEveryRequestExactOrClearError) {
  ASSERT_NO_FATAL_FAILURE(StartTwoDaemonCluster());
  constexpr int kRequests = 32;
  const Prompts prompts(kRequests, /*new_tokens=*/48, /*seed=*/901);

  // Four client threads through the coordinator; d0 is SIGKILLed while its
  // worker is running requests (its running count seen > 0) after a quarter
  // of the requests completed.
  Outcome outcome;
  absl::Mutex mu;
  std::atomic<int> done{0};
  std::atomic<bool> killed{false};
  std::thread killer([&] {
    testing::WaitFor([&] { return done.load() >= kRequests / 4; });
    testing::WaitFor([&] {
      absl::StatusOr<v1::GetWorkerStatsResponse> w = testing::WorkerStatsOf(cluster_.address("w0"));
      return w.ok() && w->running() > 0;
    });
    cluster_.Kill("d0");
    killed = true;
  });
  RunRequests(cluster_.address("c0"), prompts, 0, kRequests, 4, &outcome, &mu,
              [&] { ++done; });
  killer.join();
  ASSERT_TRUE(killed.load());
  std::printf("[faults] kill -9 daemon during steps: %s\n", outcome.ToString().c_str());

  EXPECT_EQ(outcome.wrong, 0) << outcome.ToString();
  EXPECT_EQ(outcome.completed + outcome.errors, kRequests);
  // The proxy regenerates what d0's worker failed: every request completes.
  EXPECT_EQ(outcome.errors, 0) << outcome.ToString();
  EXPECT_GE(outcome.retried, 1) << "no request was in flight on the killed daemon: "
                                << outcome.ToString();

  // The coordinator stops routing there: d0 leaves within the member timeout.
  std::string members;
  EXPECT_TRUE(testing::WaitFor([&] {
    absl::StatusOr<v1::ListMembersResponse> list = testing::ListMembersOf(cluster_.address("c0"));
    members = list.ok() ? list->DebugString() : list.status().ToString();
    return list.ok() && testing::FindMember(*list, "d0") == nullptr;
  })) << members;
  // Afterwards every request is served at once (no retry) and exactly.
  Outcome after;
  RunRequests(cluster_.address("c0"), prompts, 0, 8, 2, &after, &mu);
  EXPECT_EQ(after.completed, 8) << after.ToString();
  EXPECT_EQ(after.retried, 0) << after.ToString();

  // The worker of the dead daemon answers UNAVAILABLE at once (no hang).
  auto w0 = testing::StubTo<v1::Worker>(cluster_.address("w0"));
  const absl::Time start = absl::Now();
  const Generated direct = Generate(*w0, prompts.request(0), kStreamDeadline);
  EXPECT_EQ(direct.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << direct.status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));

  // The surviving daemon holds nothing of the finished requests.
  std::string seen;
  EXPECT_TRUE(Settled(cluster_.address("d1"), &seen)) << seen;
}

// A daemon that hangs (SIGSTOP: its process and sockets alive, answering
// nothing, not even heartbeats) while its worker runs steps. The worker's
// daemon RPCs end at their deadline (--rpc-timeout=2s) and fail its requests;
// the coordinator's proxy regenerates them on the other daemon; the silent
// member leaves the coordinator's list. After SIGCONT the daemon serves again:
// it rejoins, its worker answers exactly through it, and the leases of the
// requests that failed during the hang are released (by the worker, or at
// the daemon's --lease-timeout).
TEST_F(FaultsTest, HungDaemonDuringStepsRequestsRetriedElsewhereThenItRecovers) {
  ASSERT_TRUE(cluster_.StartCoordinator("c0", 0).ok());
  const std::vector<std::string> coordinators = {cluster_.address("c0")};
  for (int i = 0; i < 2; ++i) {
    const std::string d = absl::StrCat("d", i);
    absl::Status s = cluster_.StartDaemon(d, 0, coordinators, {"--lease-timeout=4s"});
    ASSERT_TRUE(s.ok()) << s;
    s = cluster_.StartWorker(absl::StrCat("w", i), d, coordinators);
    ASSERT_TRUE(s.ok()) << s;
  }
  absl::Status members = cluster_.WaitForMembers("c0", {"d0", "d1", "w0", "w1"});
  ASSERT_TRUE(members.ok()) << members;

  constexpr int kRequests = 24;
  const Prompts prompts(kRequests, /*new_tokens=*/48, /*seed=*/905);
  Outcome outcome;
  absl::Mutex mu;
  std::atomic<int> done{0};
  std::atomic<bool> stopped{false};
  const pid_t d0 = cluster_.pid("d0");
  std::thread hanger([&] {
    testing::WaitFor([&] { return done.load() >= kRequests / 4; });
    testing::WaitFor([&] {
      absl::StatusOr<v1::GetWorkerStatsResponse> w = testing::WorkerStatsOf(cluster_.address("w0"));
      return w.ok() && w->running() > 0;
    });
    stopped = ::kill(d0, SIGSTOP) == 0;
  });
  const absl::Time start = absl::Now();
  RunRequests(cluster_.address("c0"), prompts, 0, kRequests, 4, &outcome, &mu,
              [&] { ++done; });
  const absl::Duration took = absl::Now() - start;
  hanger.join();
  ASSERT_TRUE(stopped.load());
  std::printf("[faults] daemon hung (SIGSTOP) during steps: %s in %s\n",
              outcome.ToString().c_str(), absl::FormatDuration(took).c_str());
  EXPECT_EQ(outcome.wrong, 0) << outcome.ToString();
  EXPECT_EQ(outcome.completed, kRequests) << outcome.ToString();
  EXPECT_GE(outcome.retried, 1) << "no request was in flight on the hung daemon: "
                                << outcome.ToString();
  // Each hung request costs about one RPC deadline before its retry; nothing
  // waits on the hung daemon for long.
  EXPECT_LT(took, absl::Seconds(40));

  // The coordinator stops routing to the silent daemon (no heartbeats).
  std::string listed;
  EXPECT_TRUE(testing::WaitFor([&] {
    absl::StatusOr<v1::ListMembersResponse> list = testing::ListMembersOf(cluster_.address("c0"));
    listed = list.ok() ? list->DebugString() : list.status().ToString();
    return list.ok() && testing::FindMember(*list, "d0") == nullptr;
  })) << listed;

  // Resumed: it rejoins, and its worker serves exactly through it again.
  ASSERT_EQ(::kill(d0, SIGCONT), 0);
  members = cluster_.WaitForMembers("c0", {"d0", "d1", "w0", "w1"});
  ASSERT_TRUE(members.ok()) << members;
  auto w0 = testing::StubTo<v1::Worker>(cluster_.address("w0"));
  Outcome direct;
  EXPECT_TRUE(testing::WaitFor([&] {
    const Generated g = Generate(*w0, prompts.request(1), kStreamDeadline);
    if (!g.status.ok()) return false;  // the worker may still be re-checking its daemon
    absl::MutexLock lock(&mu);
    direct.Add(g, prompts.reference(1));
    return true;
  }));
  EXPECT_EQ(direct.completed, 1) << direct.ToString();
  EXPECT_EQ(direct.wrong, 0) << direct.ToString();

  // Nothing of any finished or failed request stays held on either daemon.
  std::string seen;
  EXPECT_TRUE(Settled(cluster_.address("d0"), &seen)) << seen;
  EXPECT_TRUE(Settled(cluster_.address("d1"), &seen)) << seen;
}

TEST_F(FaultsTest, RestartedDaemonRejoinsEmptyReattachedAndRampedIn) {
  ASSERT_NO_FATAL_FAILURE(StartTwoDaemonCluster({"--rejoin-ramp=4s"}));
  const Prompts prompts(12, /*new_tokens=*/20, /*seed=*/902);
  absl::Mutex mu;
  Outcome warm;
  RunRequests(cluster_.address("c0"), prompts, 0, 6, 2, &warm, &mu);
  ASSERT_EQ(warm.completed, 6) << warm.ToString();

  const std::string old_instance = testing::DaemonStatsOf(cluster_.address("d0"))->daemon_instance();
  const int d0_port = cluster_.port("d0");
  const pid_t w0_pid = cluster_.pid("w0");
  cluster_.Kill("d0");
  // While it is down its worker fails requests with UNAVAILABLE, promptly.
  auto w0 = testing::StubTo<v1::Worker>(cluster_.address("w0"));
  const Generated down = Generate(*w0, prompts.request(0), kStreamDeadline);
  EXPECT_EQ(down.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << down.status.error_message();

  // Back under the same member id and port: an empty pool, a new run.
  absl::Status restarted = cluster_.StartDaemon("d0", d0_port, {cluster_.address("c0")});
  ASSERT_TRUE(restarted.ok()) << restarted;
  absl::StatusOr<v1::GetStatsResponse> fresh = testing::DaemonStatsOf(cluster_.address("d0"));
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_NE(fresh->daemon_instance(), old_instance);
  EXPECT_EQ(fresh->indexed_blocks(), 0);

  // The coordinator ramps it in: its weight starts below 1 and grows to 1.
  std::vector<double> weights;
  std::string members;
  EXPECT_TRUE(testing::WaitFor([&] {
    absl::StatusOr<v1::ListMembersResponse> list = testing::ListMembersOf(cluster_.address("c0"));
    members = list.ok() ? list->DebugString() : list.status().ToString();
    if (!list.ok()) return false;
    const v1::MemberInfo* d0 = testing::FindMember(*list, "d0");
    if (d0 == nullptr || d0->instance() != fresh->daemon_instance()) return false;
    weights.push_back(d0->ramp_weight());
    return d0->ramp_weight() >= 1.0;
  })) << members;
  ASSERT_GE(weights.size(), 2u);
  EXPECT_LT(weights.front(), 1.0);
  for (size_t i = 1; i < weights.size(); ++i) EXPECT_GE(weights[i], weights[i - 1]);
  std::printf("[faults] ramp weights seen: first %.3f, %zu samples to 1\n", weights.front(),
              weights.size());

  // The worker process (same pid) follows: it re-maps the new run's pool.
  std::string worker_seen;
  EXPECT_TRUE(testing::WaitFor([&] {
    absl::StatusOr<v1::GetWorkerStatsResponse> w = testing::WorkerStatsOf(cluster_.address("w0"));
    worker_seen = w.ok() ? w->DebugString() : w.status().ToString();
    return w.ok() && w->daemon_instance() == fresh->daemon_instance() &&
           w->daemon_reattaches() >= 1;
  })) << worker_seen;
  EXPECT_EQ(cluster_.pid("w0"), w0_pid);

  // Requests on the rejoined daemon: directly on its worker, and through the
  // coordinator (which now routes some of them there), all exact.
  const int64_t w0_tokens = testing::WorkerStatsOf(cluster_.address("w0"))->generated_tokens();
  Outcome direct;
  RunRequests(cluster_.address("w0"), prompts, 0, 4, 1, &direct, &mu);
  EXPECT_EQ(direct.completed, 4) << direct.ToString();
  Outcome routed;
  RunRequests(cluster_.address("c0"), prompts, 4, 12, 2, &routed, &mu);
  EXPECT_EQ(routed.completed, 8) << routed.ToString();
  EXPECT_EQ(routed.wrong + direct.wrong, 0);
  EXPECT_GT(testing::WorkerStatsOf(cluster_.address("w0"))->generated_tokens(),
            w0_tokens + 4 * 20);  // the direct ones, plus routed ones
  std::string seen;
  EXPECT_TRUE(Settled(cluster_.address("d0"), &seen)) << seen;
  EXPECT_TRUE(Settled(cluster_.address("d1"), &seen)) << seen;
}

// The importing daemon reads a large export over UCX tcp; the exporter is
// SIGKILLed once the importer has blocks in transfer. Nothing partial is
// indexed: the import either failed and left none of the blocks resident,
// or (the kill came after the last byte) indexed all of them; in-transfer
// blocks are freed either way.
TEST_F(FaultsTest, PeerKilledMidTransferIndexesNothingPartial) {
  // llama-3-8b blocks (2 MiB each on the host pool) so that a transfer lasts
  // long enough to be caught in flight.
  const std::vector<std::string> big = {"--model=llama-3-8b", "--pool-bytes=400MiB",
                                        "--ucx-transports=tcp"};
  absl::Status s = cluster_.StartDaemon("exporter", 0, {}, big);
  ASSERT_TRUE(s.ok()) << s;
  s = cluster_.StartDaemon("importer", 0, {}, big);
  ASSERT_TRUE(s.ok()) << s;

  ClientOptions options;
  options.target = cluster_.address("exporter");
  std::unique_ptr<Client> exporter = *Client::Create(options);
  options.target = cluster_.address("importer");
  std::unique_ptr<Client> importer = *Client::Create(options);
  absl::StatusOr<DaemonStats> exporter_stats = exporter->GetStats();
  ASSERT_TRUE(exporter_stats.ok()) << exporter_stats.status();
  const int block_tokens = exporter_stats->model.block_tokens;
  const int64_t blocks = std::min<int64_t>(exporter_stats->capacity_blocks - 8, 180);

  // Seal `blocks` blocks on the exporter (their bytes do not matter here).
  std::vector<int32_t> tokens(static_cast<size_t>(blocks * block_tokens));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>((i * 7919) % 50000);
  {
    absl::StatusOr<ScopedLease> lease = exporter->BeginStep("transfer", 1, tokens);
    ASSERT_TRUE(lease.ok()) << lease.status();
    ASSERT_TRUE(lease->Commit().ok());
    ASSERT_TRUE(lease->Release().ok());
  }
  const std::vector<BlockHash> hashes = ChainHashes("transfer", tokens, block_tokens);

  absl::StatusOr<ImportSummary> imported = absl::UnknownError("not run");
  std::atomic<bool> import_returned{false};
  std::thread import([&] {
    imported = importer->ImportBlocks(cluster_.address("exporter"), hashes, absl::Seconds(20));
    import_returned = true;
  });
  bool caught = testing::WaitFor([&] {
    absl::StatusOr<DaemonStats> st = importer->GetStats(absl::Seconds(2));
    return (st.ok() && st->in_transfer_blocks > 0) || import_returned.load();
  });
  absl::StatusOr<DaemonStats> during = importer->GetStats(absl::Seconds(2));
  cluster_.Kill("exporter");
  import.join();
  ASSERT_TRUE(caught);
  std::printf("[faults] import under a peer kill: %s (in transfer when killed: %lld)\n",
              imported.ok() ? "completed before the kill" : imported.status().ToString().c_str(),
              during.ok() ? static_cast<long long>(during->in_transfer_blocks) : -1LL);

  absl::StatusOr<std::vector<std::optional<int64_t>>> resident = importer->Lookup(hashes);
  ASSERT_TRUE(resident.ok()) << resident.status();
  int64_t indexed = 0;
  for (const auto& r : *resident) indexed += r.has_value() ? 1 : 0;
  if (imported.ok()) {
    EXPECT_EQ(indexed, blocks);  // all of it arrived
  } else {
    EXPECT_EQ(indexed, 0) << "a failed import indexed " << indexed << " of " << blocks;
    EXPECT_TRUE(imported.status().code() == absl::StatusCode::kUnavailable ||
                imported.status().code() == absl::StatusCode::kDeadlineExceeded)
        << imported.status();
  }
  // In-transfer blocks are freed (a timed-out read quarantines them for 30 s:
  // the bound allows for that).
  absl::StatusOr<DaemonStats> after;
  const absl::Time deadline = absl::Now() + absl::Seconds(40);
  do {
    after = importer->GetStats();
    if (after.ok() && after->in_transfer_blocks == 0) break;
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < deadline);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->in_transfer_blocks, 0);
  EXPECT_EQ(after->indexed_blocks, indexed);
  EXPECT_EQ(after->free_blocks + after->sealed_blocks, after->capacity_blocks);
}

// A decode worker whose kv_source daemon was killed rebuilds the prompt: the
// tokens equal the no-cache reference.
TEST_F(FaultsTest, DecodeWorkerRebuildsWhenTheKvSourceDied) {
  absl::Status s = cluster_.StartDaemon("dp", 0, {});
  ASSERT_TRUE(s.ok()) << s;
  s = cluster_.StartDaemon("dd", 0, {});
  ASSERT_TRUE(s.ok()) << s;
  s = cluster_.StartWorker("wp", "dp", {}, "prefill");
  ASSERT_TRUE(s.ok()) << s;
  s = cluster_.StartWorker("wd", "dd", {}, "decode");
  ASSERT_TRUE(s.ok()) << s;
  const Prompts prompts(2, /*new_tokens=*/24, /*seed=*/903);
  auto prefill = testing::StubTo<v1::Worker>(cluster_.address("wp"));
  auto decode = testing::StubTo<v1::Worker>(cluster_.address("wd"));

  for (int i = 0; i < 2; ++i) {
    v1::GenerateRequest first = prompts.request(i);
    first.set_max_new_tokens(1);
    const Generated head = Generate(*prefill, first, kStreamDeadline);
    ASSERT_TRUE(head.status.ok()) << head.status.error_message();
    ASSERT_EQ(head.tokens.size(), 1u);
    ASSERT_EQ(head.tokens[0], prompts.reference(i)[0]);
    const bool kill_source = i == 1;  // request 0: the import works (control)
    const std::string source = cluster_.address("dp");
    if (kill_source) cluster_.Kill("dp");
    v1::GenerateRequest rest = prompts.request(i);
    rest.add_prompt_tokens(head.tokens[0]);
    rest.set_max_new_tokens(prompts.request(i).max_new_tokens() - 1);
    rest.set_kv_source(source);
    rest.set_kv_source_tokens(prompts.request(i).prompt_tokens_size());
    const Generated tail = Generate(*decode, rest, kStreamDeadline);
    ASSERT_TRUE(tail.status.ok()) << tail.status.error_message();
    std::vector<int32_t> tokens = head.tokens;
    tokens.insert(tokens.end(), tail.tokens.begin(), tail.tokens.end());
    EXPECT_EQ(tokens, prompts.reference(i)) << "request " << i;
    if (kill_source) {
      EXPECT_EQ(tail.stats.imported_blocks(), 0);
      EXPECT_EQ(tail.stats.computed_prompt_tokens(), rest.prompt_tokens_size());  // rebuilt
    } else {
      EXPECT_GT(tail.stats.imported_blocks(), 0);
    }
  }
  std::string seen;
  EXPECT_TRUE(Settled(cluster_.address("dd"), &seen)) << seen;
}

TEST_F(FaultsTest, CoordinatorReplicaRestartRoutingContinuesAndCatchesUp) {
  const int p0 = testing::FreeLocalPort();
  const int p1 = testing::FreeLocalPort();
  ASSERT_NE(p0, 0);
  ASSERT_NE(p1, 0);
  ASSERT_NE(p0, p1);
  ASSERT_TRUE(cluster_.StartCoordinator("c0", p0).ok());
  ASSERT_TRUE(cluster_.StartCoordinator("c1", p1).ok());
  const std::vector<std::string> coordinators = {cluster_.address("c0"), cluster_.address("c1")};
  for (int i = 0; i < 2; ++i) {
    const std::string d = absl::StrCat("d", i);
    absl::Status s = cluster_.StartDaemon(d, 0, coordinators);
    ASSERT_TRUE(s.ok()) << s;
    s = cluster_.StartWorker(absl::StrCat("w", i), d, coordinators);
    ASSERT_TRUE(s.ok()) << s;
  }
  const std::vector<std::string> everyone = {"d0", "d1", "w0", "w1"};
  for (const char* c : {"c0", "c1"}) {
    const absl::Status s = cluster_.WaitForMembers(c, everyone);
    ASSERT_TRUE(s.ok()) << s;
  }

  // The frontend: one channel over both replicas (pick_first moves to the
  // other address when one fails); a call that fails with UNAVAILABLE is
  // retried — on the other replica, since the failed one is gone — and any
  // tokens it had received are checked against the retry's.
  const std::string both = absl::StrCat("ipv4:127.0.0.1:", p0, ",127.0.0.1:", p1);
  constexpr int kRequests = 24;
  const Prompts prompts(kRequests, /*new_tokens=*/32, /*seed=*/904);
  Outcome outcome;
  int frontend_retries = 0;
  absl::Mutex mu;
  std::atomic<int> done{0};
  std::thread killer([&] {
    testing::WaitFor([&] { return done.load() >= kRequests / 3; });
    cluster_.Kill("c0");
  });
  {
    std::atomic<int> next{0};
    std::vector<std::thread> clients;
    for (int t = 0; t < 2; ++t) {
      clients.emplace_back([&] {
        auto stub = testing::StubTo<v1::Worker>(both);
        for (int i = next++; i < kRequests; i = next++) {
          Generated g = Generate(*stub, prompts.request(i), kStreamDeadline);
          for (int retry = 0; retry < 3 && g.status.error_code() == grpc::StatusCode::UNAVAILABLE;
               ++retry) {
            const std::vector<int32_t> before = g.tokens;
            absl::SleepFor(absl::Milliseconds(100));
            g = Generate(*stub, prompts.request(i), kStreamDeadline);
            if (g.status.ok() && !std::equal(before.begin(), before.end(), g.tokens.begin())) {
              g.status = grpc::Status(grpc::StatusCode::ABORTED, "retry disagreed");
            }
            absl::MutexLock lock(&mu);
            ++frontend_retries;
          }
          absl::MutexLock lock(&mu);
          outcome.Add(g, prompts.reference(i));
          ++done;
        }
      });
    }
    for (std::thread& c : clients) c.join();
  }
  killer.join();
  std::printf("[faults] coordinator replica killed: %s, frontend retries %d\n",
              outcome.ToString().c_str(), frontend_retries);
  EXPECT_EQ(outcome.wrong, 0);
  EXPECT_EQ(outcome.completed, kRequests) << outcome.ToString();

  // c1 kept every member throughout.
  absl::StatusOr<v1::ListMembersResponse> c1 = testing::ListMembersOf(cluster_.address("c1"));
  ASSERT_TRUE(c1.ok()) << c1.status();
  for (const std::string& id : everyone) EXPECT_NE(testing::FindMember(*c1, id), nullptr) << id;

  // c0 restarts on its port, empty; within a heartbeat every member has
  // registered again and its event streams are up; it routes exactly.
  ASSERT_TRUE(cluster_.StartCoordinator("c0", p0).ok());
  const absl::Status caught_up = cluster_.WaitForMembers("c0", everyone);
  ASSERT_TRUE(caught_up.ok()) << caught_up;
  Outcome after;
  RunRequests(cluster_.address("c0"), prompts, 0, 6, 2, &after, &mu);
  EXPECT_EQ(after.completed, 6) << after.ToString();
  std::string seen;
  EXPECT_TRUE(Settled(cluster_.address("d0"), &seen)) << seen;
  EXPECT_TRUE(Settled(cluster_.address("d1"), &seen)) << seen;
}

}  // namespace
}  // namespace asymcache

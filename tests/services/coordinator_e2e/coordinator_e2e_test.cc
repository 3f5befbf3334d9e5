// The cluster, end to end, as separate processes on 127.0.0.1 (DESIGN.md §4):
// three asymcache-daemon processes registered (through their MemberRegistrar)
// with two asymcache-coordinator replicas, with short heartbeat and timeout
// settings so the whole scenario takes seconds:
//   (a) a context committed on daemon B through asymcache::Client is routed
//       to B by both replicas (once their event-fed indexes have it);
//   (b) daemon C killed with SIGKILL leaves both replicas' member lists and
//       routes once its member timeout passes;
//   (c) a replica killed with SIGKILL and restarted on the same port gets the
//       members back (NOT_FOUND heartbeats make them register again),
//       rebuilds its index from the daemons' snapshots and routes (a)'s
//       context to B like the other replica;
//   (d) daemon B killed and restarted with the same member id (and port)
//       rejoins as a new instance, and its old blocks vanish from both
//       indexes.
// Every child is a testing::ChildProcess (tests/services/child_process.h):
// SIGKILLed and reaped on destruction, PR_SET_PDEATHSIG against leaks. The
// binaries come from tests/services/test_binaries.h; the test skips, saying
// why, when one is missing. Child stderr goes to files whose tails are printed on failure.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "gtest/gtest.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "services/client/client.h"
#include "tests/services/child_process.h"
#include "tests/services/test_binaries.h"

namespace asymcache {
namespace {

// Cluster timing: heartbeats every 200 ms, members time out after 3 s: 15
// heartbeats per timeout, so five processes on two loaded cores (ASan,
// ctest -j2) do not expire a live daemon, while (b) still sees a dead one go
// within seconds.
constexpr absl::Duration kHeartbeat = absl::Milliseconds(200);
constexpr absl::Duration kMemberTimeout = absl::Seconds(3);
// Bound of every wait for the cluster to converge: only a failing run waits
// it out (converging takes about a second here, a few under ASan).
constexpr absl::Duration kConverge = absl::Seconds(20);
constexpr char kSalt[] = "tenant-e2e";

using testing::ChildProcess;

// A service binary started as a child (tests/services/child_process.h), its
// stderr in `log_path`; nullptr (the failure recorded) when it does not
// reach READY. A server restarted on a killed one's port retries while the
// port is taken (StartOnBusyPort).
std::unique_ptr<ChildProcess> StartChild(const std::string& name, const std::string& binary,
                                         const std::vector<std::string>& flags,
                                         const std::string& log_path) {
  testing::ChildProcessOptions options;
  options.name = name;
  options.binary = binary;
  options.flags = flags;
  options.stderr_path = log_path;
  absl::StatusOr<std::unique_ptr<ChildProcess>> child = testing::StartOnBusyPort(options);
  if (!child.ok()) {
    ADD_FAILURE() << child.status();
    return nullptr;
  }
  return *std::move(child);
}

std::string Tail(const std::string& path, size_t bytes) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  return all.size() <= bytes ? all : all.substr(all.size() - bytes);
}

std::vector<TokenId> Context(int seed, int tokens) {
  std::vector<TokenId> out(static_cast<size_t>(tokens));
  for (int i = 0; i < tokens; ++i) out[static_cast<size_t>(i)] = (seed * 7919 + i * 131) % 1000;
  return out;
}

class CoordinatorReplica {
 public:
  explicit CoordinatorReplica(const std::string& address)
      : stub_(v1::Coordinator::NewStub(
            grpc::CreateChannel(address, grpc::InsecureChannelCredentials()))) {}

  // ListMembers, or the failed call's status.
  absl::StatusOr<v1::ListMembersResponse> List() const {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    v1::ListMembersResponse response;
    const grpc::Status s = stub_->ListMembers(&ctx, v1::ListMembersRequest(), &response);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return response;
  }

  absl::StatusOr<v1::RouteResponse> Route(const std::vector<TokenId>& tokens,
                                          bool explain = false) const {
    v1::RouteRequest request;
    request.set_salt(kSalt);
    request.mutable_token_ids()->Assign(tokens.begin(), tokens.end());
    request.set_explain(explain);
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    v1::RouteResponse response;
    const grpc::Status s = stub_->Route(&ctx, request, &response);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return response;
  }

  // The listed member, or nullptr.
  static const v1::MemberInfo* Find(const v1::ListMembersResponse& list, const std::string& id) {
    for (const v1::MemberInfo& m : list.members()) {
      if (m.member_id() == id) return &m;
    }
    return nullptr;
  }

 private:
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

// Polls `check` (which explains itself in *why when false) until it holds or
// `bound` passes.
bool Eventually(absl::Duration bound, const std::function<bool(std::string* why)>& check,
                std::string* why) {
  const absl::Time deadline = absl::Now() + bound;
  while (true) {
    why->clear();
    if (check(why)) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));  // polling another process: no condition to wait on
  }
}

class ClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_bin_ = testing::DaemonBinary();
    coordinator_bin_ = testing::CoordinatorBinary();
    if (daemon_bin_.empty()) GTEST_SKIP() << "no asymcache-daemon binary (test_binaries.h)";
    if (coordinator_bin_.empty()) {
      GTEST_SKIP() << "no asymcache-coordinator binary (test_binaries.h: build it, or set "
                      "ASYMCACHE_COORDINATOR_BIN)";
    }
    char dir[] = "/tmp/asymcache_e2e_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
  }

  void TearDown() override {
    if (HasFailure()) {
      for (const auto& [name, path] : logs_) {
        std::fprintf(stderr, "---- %s stderr (tail of %s) ----\n%s\n", name.c_str(), path.c_str(),
                     Tail(path, 3000).c_str());
      }
    }
    daemons_.clear();
    coordinators_.clear();
    for (const auto& [name, path] : logs_) ::unlink(path.c_str());
    if (!log_dir_.empty()) ::rmdir(log_dir_.c_str());
  }

  std::string LogPath(const std::string& name) {
    const std::string path = absl::StrCat(log_dir_, "/", name, ".log");
    logs_.emplace_back(name, path);
    return path;
  }

  std::unique_ptr<ChildProcess> StartCoordinator(const std::string& name, int port) {
    return StartChild(
        name, coordinator_bin_,
        {"--plaintext", absl::StrCat("--listen=127.0.0.1:", port), "--metrics-port=-1",
         absl::StrCat("--heartbeat-interval=", absl::FormatDuration(kHeartbeat)),
         absl::StrCat("--member-timeout=", absl::FormatDuration(kMemberTimeout)),
         "--maintenance-interval=50ms", "--watch-backoff-initial=50ms",
         "--watch-backoff-max=200ms",
         // Deterministic choice between a daemon holding the context and
         // daemons that do not: no fetch plans, no tie tolerance.
         "--allow-fetch=false", "--tie-absolute=0s", "--tie-relative=0",
         "--shutdown-grace=1s"},
        LogPath(name));
  }

  std::unique_ptr<ChildProcess> StartDaemon(const std::string& member_id, int port) {
    std::vector<std::string> coordinators;
    for (int p : coordinator_ports_) coordinators.push_back(absl::StrCat("127.0.0.1:", p));
    return StartChild(
        member_id, daemon_bin_,
        {"--plaintext", absl::StrCat("--listen=127.0.0.1:", port), "--metrics-port=-1",
         "--backend=host", "--model=tiny", "--pool-bytes=32MiB", "--shutdown-grace=1s",
         absl::StrCat("--coordinators=", absl::StrJoin(coordinators, ",")),
         absl::StrCat("--member-id=", member_id), "--coordinator-retry-max=200ms",
         "--coordinator-rpc-timeout=500ms"},
        LogPath(absl::StrCat(member_id, "-", ++starts_)));
  }

  std::string daemon_bin_;
  std::string coordinator_bin_;
  std::string log_dir_;
  std::vector<std::pair<std::string, std::string>> logs_;
  int starts_ = 0;
  std::vector<int> coordinator_ports_;
  // Destroyed (killed) daemons first, then coordinators (TearDown).
  std::vector<std::unique_ptr<ChildProcess>> coordinators_;
  std::vector<std::unique_ptr<ChildProcess>> daemons_;
};

// Both replicas list exactly `ids` as daemons with their event streams up.
std::function<bool(std::string*)> ListsExactly(const std::vector<CoordinatorReplica*>& replicas,
                                               std::set<std::string> ids) {
  return [replicas, ids](std::string* why) {
    for (size_t r = 0; r < replicas.size(); ++r) {
      absl::StatusOr<v1::ListMembersResponse> list = replicas[r]->List();
      if (!list.ok()) {
        *why = absl::StrCat("replica ", r, ": ", list.status().ToString());
        return false;
      }
      std::set<std::string> listed;
      for (const v1::MemberInfo& m : list->members()) {
        if (m.kind() != v1::MEMBER_KIND_DAEMON) continue;
        listed.insert(m.member_id());
        if (!m.events_connected()) {
          *why = absl::StrCat("replica ", r, ": events of ", m.member_id(), " not connected");
          return false;
        }
        if (m.load().capacity_blocks() <= 0) {
          *why = absl::StrCat("replica ", r, ": no heartbeat load from ", m.member_id(), " yet");
          return false;
        }
      }
      if (listed != ids) {
        *why = absl::StrCat("replica ", r, " lists {", absl::StrJoin(listed, ","), "}");
        return false;
      }
    }
    return true;
  };
}

// Every daemon `replica` lists has heartbeated after `since`, so the pending
// load earlier Route calls added to it is gone.
std::function<bool(std::string*)> HeartbeatedSince(CoordinatorReplica* replica, absl::Time since) {
  return [replica, since](std::string* why) {
    const absl::Time asked = absl::Now();  // the server's view is taken later
    absl::StatusOr<v1::ListMembersResponse> list = replica->List();
    if (!list.ok()) {
      *why = list.status().ToString();
      return false;
    }
    for (const v1::MemberInfo& m : list->members()) {
      if (m.kind() == v1::MEMBER_KIND_DAEMON &&
          m.since_heartbeat_s() >= absl::ToDoubleSeconds(asked - since)) {
        *why = absl::StrCat(m.member_id(), ": no heartbeat for ", m.since_heartbeat_s(), " s");
        return false;
      }
    }
    return true;
  };
}

// Both replicas route `tokens` to `daemon_id`, predicting at least
// `min_hit_tokens` resident there.
std::function<bool(std::string*)> RoutesTo(const std::vector<CoordinatorReplica*>& replicas,
                                           const std::vector<TokenId>& tokens,
                                           const std::string& daemon_id, int64_t min_hit_tokens) {
  return [replicas, tokens, daemon_id, min_hit_tokens](std::string* why) {
    for (size_t r = 0; r < replicas.size(); ++r) {
      absl::StatusOr<v1::RouteResponse> route = replicas[r]->Route(tokens);
      if (!route.ok()) {
        *why = absl::StrCat("replica ", r, ": ", route.status().ToString());
        return false;
      }
      if (route->prefill().daemon_id() != daemon_id ||
          route->prediction().hit_tokens() < min_hit_tokens) {
        *why = absl::StrCat("replica ", r, " routes to ", route->prefill().daemon_id(), " with ",
                            route->prediction().hit_tokens(), " hit tokens (", route->reason(),
                            ")");
        return false;
      }
    }
    return true;
  };
}

TEST_F(ClusterTest, RoutesByIndexSurvivesDaemonAndCoordinatorDeaths) {
  // Two replicas, then three daemons registered with both.
  coordinators_.push_back(StartCoordinator("coordinator-1", 0));
  coordinators_.push_back(StartCoordinator("coordinator-2", 0));
  ASSERT_NE(coordinators_[0], nullptr);
  ASSERT_NE(coordinators_[1], nullptr);
  coordinator_ports_ = {coordinators_[0]->port(), coordinators_[1]->port()};
  for (const char* id : {"daemon-a", "daemon-b", "daemon-c"}) {
    daemons_.push_back(StartDaemon(id, 0));
    ASSERT_NE(daemons_.back(), nullptr) << id;
  }
  CoordinatorReplica r1(coordinators_[0]->address());
  auto r2 = std::make_unique<CoordinatorReplica>(coordinators_[1]->address());
  std::vector<CoordinatorReplica*> both = {&r1, r2.get()};
  std::string why;
  ASSERT_TRUE(Eventually(kConverge, ListsExactly(both, {"daemon-a", "daemon-b", "daemon-c"}), &why))
      << why;
  {
    absl::StatusOr<v1::ListMembersResponse> list = r1.List();
    ASSERT_TRUE(list.ok()) << list.status();
    const v1::MemberInfo* b = CoordinatorReplica::Find(*list, "daemon-b");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->address(), daemons_[1]->address());
    EXPECT_EQ(list->model().name(), "tiny");
  }

  // (a) A context committed on B is routed to B by both replicas.
  const int block_tokens = ModelConfig::Named("tiny").value().block_tokens;
  const std::vector<TokenId> context = Context(1, 64 * block_tokens);
  {
    ClientOptions options;
    options.target = daemons_[1]->address();
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
    ASSERT_TRUE(client.ok()) << client.status();
    absl::StatusOr<ScopedLease> lease = (*client)->BeginStep(kSalt, 1, context);
    ASSERT_TRUE(lease.ok()) << lease.status();
    ASSERT_TRUE(lease->Commit().ok());
    ASSERT_TRUE(lease->Release().ok());
  }
  // Every committed block is a hit (the last block may be left for the
  // engine to recompute, so one block's tokens of slack).
  const int64_t min_hits = static_cast<int64_t>(context.size()) - block_tokens;
  ASSERT_TRUE(Eventually(kConverge, RoutesTo(both, context, "daemon-b", min_hits), &why)) << why;
  // The polls above routed the whole context elsewhere while the index
  // lagged; that pending load counts until each daemon's next heartbeat.
  const absl::Time polled = absl::Now();
  ASSERT_TRUE(Eventually(kConverge, HeartbeatedSince(&r1, polled), &why)) << why;

  // Contexts no daemon holds are spread over all three (so the check in (b)
  // that none goes to C can fail).
  std::set<std::string> spread;
  for (int i = 0; i < 30; ++i) {
    absl::StatusOr<v1::RouteResponse> route = r1.Route(Context(1000 + i, 4 * block_tokens));
    ASSERT_TRUE(route.ok()) << route.status();
    spread.insert(route->prefill().daemon_id());
  }
  EXPECT_EQ(spread, (std::set<std::string>{"daemon-a", "daemon-b", "daemon-c"}));

  // (b) C dies: once its member timeout passes, neither replica lists it or
  // routes to it (the bound only caps a failing run).
  daemons_[2]->Kill();
  ASSERT_TRUE(Eventually(kMemberTimeout + kConverge, ListsExactly(both, {"daemon-a", "daemon-b"}),
                         &why))
      << why;
  for (CoordinatorReplica* replica : both) {
    std::set<std::string> targets;
    for (int i = 0; i < 60; ++i) {
      absl::StatusOr<v1::RouteResponse> route = replica->Route(Context(2000 + i, 4 * block_tokens));
      ASSERT_TRUE(route.ok()) << route.status();
      targets.insert(route->prefill().daemon_id());
      targets.insert(route->decode().daemon_id());
    }
    EXPECT_EQ(targets.count("daemon-c"), 0u) << absl::StrJoin(targets, ",");
  }

  // (c) Replica 2 is killed and restarted on the same port: the members come
  // back, its index is rebuilt from snapshots, it routes (a)'s context to B.
  const int port2 = coordinators_[1]->port();
  std::string old_instance;
  {
    absl::StatusOr<v1::ListMembersResponse> list = r2->List();
    ASSERT_TRUE(list.ok()) << list.status();
    old_instance = list->coordinator_instance();
  }
  coordinators_[1]->Kill();
  coordinators_[1] = StartCoordinator("coordinator-2-restarted", port2);
  ASSERT_NE(coordinators_[1], nullptr) << "port " << port2 << " could not be bound again";
  r2 = std::make_unique<CoordinatorReplica>(coordinators_[1]->address());
  both = {&r1, r2.get()};
  {
    absl::StatusOr<v1::ListMembersResponse> list = r2->List();
    ASSERT_TRUE(list.ok()) << list.status();
    EXPECT_NE(list->coordinator_instance(), old_instance);
  }
  ASSERT_TRUE(Eventually(kConverge, ListsExactly({r2.get()}, {"daemon-a", "daemon-b"}), &why))
      << why;
  ASSERT_TRUE(Eventually(kConverge, RoutesTo(both, context, "daemon-b", min_hits), &why)) << why;

  // (d) B restarts with the same member id and port: a new instance, whose
  // pool is empty; both replicas drop its old blocks.
  std::string b_instance;
  {
    absl::StatusOr<v1::ListMembersResponse> list = r1.List();
    ASSERT_TRUE(list.ok()) << list.status();
    const v1::MemberInfo* b = CoordinatorReplica::Find(*list, "daemon-b");
    ASSERT_NE(b, nullptr);
    EXPECT_GE(b->index_entries(), static_cast<int64_t>(context.size()) / block_tokens);
    b_instance = b->instance();
  }
  const int port_b = daemons_[1]->port();
  daemons_[1]->Kill();
  daemons_[1] = StartDaemon("daemon-b", port_b);
  ASSERT_NE(daemons_[1], nullptr) << "port " << port_b << " could not be bound again";
  ASSERT_TRUE(Eventually(
      kConverge,
      [&](std::string* why) {
        for (size_t r = 0; r < both.size(); ++r) {
          absl::StatusOr<v1::ListMembersResponse> list = both[r]->List();
          if (!list.ok()) {
            *why = list.status().ToString();
            return false;
          }
          const v1::MemberInfo* b = CoordinatorReplica::Find(*list, "daemon-b");
          if (b == nullptr || b->instance() == b_instance || b->index_entries() != 0 ||
              !b->events_connected()) {
            *why = absl::StrCat("replica ", r, ": daemon-b ",
                                b == nullptr ? "not listed"
                                             : absl::StrCat("instance ", b->instance(), ", ",
                                                            b->index_entries(), " entries"));
            return false;
          }
        }
        return true;
      },
      &why))
      << why;
  for (CoordinatorReplica* replica : both) {
    absl::StatusOr<v1::RouteResponse> route = replica->Route(context, /*explain=*/true);
    ASSERT_TRUE(route.ok()) << route.status();
    EXPECT_EQ(route->prediction().hit_tokens(), 0);
    for (const v1::TtftPrediction& c : route->candidates()) {
      EXPECT_EQ(c.hit_tokens(), 0) << c.daemon_id();
    }
  }
}

}  // namespace
}  // namespace asymcache

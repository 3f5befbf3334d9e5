// FaultCluster: the multi-process cluster the fault tests (faults_test.cc)
// break on purpose — real asymcache-coordinator, asymcache-daemon and
// asymcache-worker processes on 127.0.0.1 (tiny model, host pools, CPU
// backend), each a testing::ChildProcess the test can SIGKILL and start
// again under the same member id and port — plus what the tests measure
// with: the dense no-cache reference (model/dense_reference.h) of a prompt,
// Generate streams, ListMembers, GetStats and GetWorkerStats.
//
// Timing settings are shortened so that each fault plays out in about a
// second (heartbeat 200 ms, member timeout 1 s, worker daemon check 200 ms);
// every wait is bounded (kFaultBound) and fails the test with what it saw.
//
// Contract: test-only. Not thread-safe, except Reference() (const after
// construction) and the free functions, which any thread may call. Killed
// daemons leave shared memory: each daemon gets its own --shm-name, unlinked
// when its process is killed or stopped.
#ifndef ASYMCACHE_TESTS_SERVICES_FAULTS_FAULT_CLUSTER_H_
#define ASYMCACHE_TESTS_SERVICES_FAULTS_FAULT_CLUSTER_H_

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "model/dense_reference.h"
#include "model/llama_config.h"
#include "model/weight_source.h"
#include "tests/services/child_process.h"
#include "tests/services/free_port.h"
#include "tests/services/test_binaries.h"
#include "tests/services/worker/generate_stream.h"

#ifndef ASYMCACHE_BUILT_WORKER
#define ASYMCACHE_BUILT_WORKER nullptr
#endif

namespace asymcache::testing {

// Bound of every wait of these tests (a process start, a member leaving or
// joining, counters settling): only a broken run waits it out.
inline constexpr absl::Duration kFaultBound = absl::Seconds(20);
// The workers' random-weight seed (every worker and the reference the same).
inline constexpr uint64_t kWeightSeed = 11;
inline constexpr int kTinyVocab = 1024;

inline std::string WorkerBinary() {
  return FindTestBinary("ASYMCACHE_WORKER_BIN", ASYMCACHE_BUILT_WORKER, "asymcache-worker");
}

inline grpc::Status ToGrpc(const absl::Status& s) {
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// A stub of `Service` (v1::Worker, v1::Coordinator, v1::CacheDaemon) on a new channel.
template <typename Service>
std::unique_ptr<typename Service::Stub> StubTo(const std::string& address) {
  return Service::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

// One unary call with a 5 s deadline.
template <typename Stub, typename Request, typename Response>
grpc::Status CallUnary(Stub& stub,
                       grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                    Response*),
                       const Request& request, Response* response) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  return (stub.*method)(&context, request, response);
}

inline absl::StatusOr<v1::ListMembersResponse> ListMembersOf(const std::string& coordinator) {
  auto stub = StubTo<v1::Coordinator>(coordinator);
  v1::ListMembersResponse response;
  const grpc::Status s =
      CallUnary(*stub, &v1::Coordinator::Stub::ListMembers, v1::ListMembersRequest(), &response);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return response;
}

inline const v1::MemberInfo* FindMember(const v1::ListMembersResponse& list,
                                        const std::string& id) {
  for (const v1::MemberInfo& m : list.members()) {
    if (m.member_id() == id) return &m;
  }
  return nullptr;
}

inline absl::StatusOr<v1::GetStatsResponse> DaemonStatsOf(const std::string& daemon) {
  auto stub = StubTo<v1::CacheDaemon>(daemon);
  v1::GetStatsResponse response;
  const grpc::Status s =
      CallUnary(*stub, &v1::CacheDaemon::Stub::GetStats, v1::GetStatsRequest(), &response);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return response;
}

inline absl::StatusOr<v1::GetWorkerStatsResponse> WorkerStatsOf(const std::string& worker) {
  auto stub = StubTo<v1::Worker>(worker);
  v1::GetWorkerStatsResponse response;
  const grpc::Status s = CallUnary(*stub, &v1::Worker::Stub::GetWorkerStats,
                                   v1::GetWorkerStatsRequest(), &response);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
  return response;
}

// Polls `done` every 20 ms until it is true or kFaultBound passes; false then.
template <typename Done>
bool WaitFor(Done done) {
  const absl::Time deadline = absl::Now() + kFaultBound;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return true;
}

// No block of any request is held: no lease, nothing being written, nothing
// pinned, nothing in transfer (the daemon's own accounting; commits and
// releases run just after a stream ends, so callers poll).
inline bool NothingHeld(const v1::GetStatsResponse& s) {
  return s.active_leases() == 0 && s.writing_blocks() == 0 && s.pinned_blocks() == 0 &&
         s.in_transfer_blocks() == 0 && s.active_exports() == 0;
}

// The prompts of a test and their no-cache answers.
class Prompts {
 public:
  // `count` prompts of 20..99 random tokens (seeded), `new_tokens` each,
  // greedy; references from the dense run.
  Prompts(int count, int new_tokens, uint32_t seed) {
    std::mt19937 rng(seed);
    absl::StatusOr<model::LlamaConfig> tiny = model::LlamaConfig::Named("tiny");
    absl::StatusOr<model::WeightSource> weights = model::WeightSource::Random(*tiny, kWeightSeed);
    for (int i = 0; i < count; ++i) {
      v1::GenerateRequest request;
      const int length = 20 + static_cast<int>(rng() % 80);
      for (int t = 0; t < length; ++t) {
        request.add_prompt_tokens(static_cast<int32_t>(rng() % kTinyVocab));
      }
      request.set_max_new_tokens(new_tokens);
      request.set_salt("faults");
      model::DenseGenerateOptions dense;
      dense.max_new_tokens = new_tokens;
      dense.keep_logits = false;
      absl::StatusOr<model::DenseGeneration> reference = model::GenerateDense(
          *weights,
          std::vector<int32_t>(request.prompt_tokens().begin(), request.prompt_tokens().end()),
          dense);
      references_.push_back(reference.ok() ? reference->tokens : std::vector<int32_t>{});
      requests_.push_back(std::move(request));
    }
  }
  int size() const { return static_cast<int>(requests_.size()); }
  const v1::GenerateRequest& request(int i) const { return requests_[i]; }
  const std::vector<int32_t>& reference(int i) const { return references_[i]; }

 private:
  std::vector<v1::GenerateRequest> requests_;
  std::vector<std::vector<int32_t>> references_;
};

// What a stream of requests came to: the measured outcome the report gives.
struct Outcome {
  int completed = 0;      // OK, every token equal to the reference
  int wrong = 0;          // OK but a token differs: must stay 0
  int errors = 0;         // ended with an error (clear: a code and a message)
  int retried = 0;        // completed after the proxy re-routed (stats.attempts > 1)
  std::map<std::string, int> error_codes;  // "UNAVAILABLE: <first message>" -> count

  void Add(const Generated& g, const std::vector<int32_t>& reference) {
    if (!g.status.ok()) {
      ++errors;
      ++error_codes[absl::StrCat(g.status.error_code(), ": ", g.status.error_message())];
      return;
    }
    if (g.tokens != reference) {
      ++wrong;
      return;
    }
    ++completed;
    if (g.stats.attempts() > 1) ++retried;
  }
  std::string ToString() const {
    std::string out = absl::StrCat("completed=", completed, " wrong=", wrong, " errors=", errors,
                                   " retried=", retried);
    for (const auto& [what, n] : error_codes) absl::StrAppend(&out, "\n  ", n, " x ", what);
    return out;
  }
};

class FaultCluster {
 public:
  // Fails (nullopt-like: ok() false) when a binary is missing; the caller skips.
  static absl::Status FindBinaries(FaultCluster* c) {
    c->daemon_bin_ = DaemonBinary();
    c->coordinator_bin_ = CoordinatorBinary();
    c->worker_bin_ = WorkerBinary();
    if (c->daemon_bin_.empty() || c->coordinator_bin_.empty() || c->worker_bin_.empty()) {
      return absl::NotFoundError(
          "asymcache-daemon, -coordinator or -worker is not built (test_binaries.h)");
    }
    char dir[] = "/tmp/asymcache_faults_XXXXXX";
    if (::mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
    c->log_dir_ = dir;
    return absl::OkStatus();
  }

  ~FaultCluster() {
    for (auto& [name, child] : children_) child.reset();  // kill, unlink shm
    for (const std::string& path : logs_) ::unlink(path.c_str());
    if (!log_dir_.empty()) ::rmdir(log_dir_.c_str());
  }

  // Prints every child's stderr log (call when the test failed).
  void DumpLogs() const {
    for (const std::string& path : logs_) {
      std::fprintf(stderr, "---- %s ----\n%s\n", path.c_str(), FileContents(path).c_str());
    }
  }

  // A coordinator on `port` (0 = any) with the short timings plus `extra`.
  absl::Status StartCoordinator(const std::string& name, int port,
                                const std::vector<std::string>& extra = {}) {
    std::vector<std::string> flags = {"--plaintext", absl::StrCat("--listen=127.0.0.1:", port),
                                      "--metrics-port=-1",
                                      "--heartbeat-interval=200ms",
                                      "--member-timeout=1s",
                                      "--maintenance-interval=50ms",
                                      "--watch-backoff-max=500ms",
                                      "--shutdown-grace=1s"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return Start(name, coordinator_bin_, std::move(flags), "");
  }

  // A daemon (tiny model, 8 MiB host pool = 1024 blocks) registered as
  // `member_id` with `coordinators`, on `port` (0 = any).
  absl::Status StartDaemon(const std::string& member_id, int port,
                           const std::vector<std::string>& coordinators,
                           const std::vector<std::string>& extra = {}) {
    const std::string shm =
        absl::StrCat("/asymcache-faults-", ::getpid(), "-", member_id, "-", ++shm_serial_);
    std::vector<std::string> flags = {"--plaintext", absl::StrCat("--listen=127.0.0.1:", port),
                                      "--metrics-port=-1",
                                      "--backend=host",
                                      "--model=tiny",
                                      "--pool-bytes=8MiB",
                                      absl::StrCat("--shm-name=", shm),
                                      absl::StrCat("--member-id=", member_id),
                                      "--coordinator-retry-max=200ms",
                                      "--shutdown-grace=1s"};
    if (!coordinators.empty()) {
      flags.push_back(absl::StrCat("--coordinators=", absl::StrJoin(coordinators, ",")));
    }
    flags.insert(flags.end(), extra.begin(), extra.end());
    return Start(member_id, daemon_bin_, std::move(flags), shm);
  }

  // A worker (tiny, seed kWeightSeed, CPU) on daemon `daemon_id` (started
  // here), registered as `member_id`.
  absl::Status StartWorker(const std::string& member_id, const std::string& daemon_id,
                           const std::vector<std::string>& coordinators,
                           const std::string& role = "both") {
    std::vector<std::string> flags = {absl::StrCat("--daemon=", address(daemon_id)),
                                      "--plaintext", "--listen=127.0.0.1:0",
                                      "--metrics-port=-1",
                                      "--model=tiny",
                                      absl::StrCat("--seed=", kWeightSeed),
                                      "--cpu-threads=1",
                                      absl::StrCat("--role=", role),
                                      "--rpc-timeout=2s",
                                      "--daemon-check-interval=200ms",
                                      "--coordinator-retry-max=200ms",
                                      "--shutdown-grace=1s"};
    if (!coordinators.empty()) {
      flags.push_back(absl::StrCat("--coordinators=", absl::StrJoin(coordinators, ",")));
      flags.push_back(absl::StrCat("--member-id=", member_id));
      flags.push_back(absl::StrCat("--daemon-member-id=", daemon_id));
    }
    return Start(member_id, worker_bin_, std::move(flags), "");
  }

  // SIGKILL (and reap) a child; its shared memory is unlinked.
  void Kill(const std::string& name) { children_.at(name)->Kill(); }
  pid_t pid(const std::string& name) const { return children_.at(name)->pid(); }
  int port(const std::string& name) const { return children_.at(name)->port(); }
  std::string address(const std::string& name) const { return children_.at(name)->address(); }

  // Until `coordinator` lists every id in `members` as routable: daemons
  // with their event stream up, workers present.
  absl::Status WaitForMembers(const std::string& coordinator,
                              const std::vector<std::string>& members) {
    std::string last;
    const bool ok = WaitFor([&] {
      absl::StatusOr<v1::ListMembersResponse> list = ListMembersOf(address(coordinator));
      if (!list.ok()) {
        last = list.status().ToString();
        return false;
      }
      last = list->DebugString();
      for (const std::string& id : members) {
        const v1::MemberInfo* m = FindMember(*list, id);
        if (m == nullptr) return false;
        if (m->kind() == v1::MEMBER_KIND_DAEMON && !m->events_connected()) return false;
      }
      return true;
    });
    if (ok) return absl::OkStatus();
    return absl::DeadlineExceededError(absl::StrCat(
        coordinator, " never listed ", absl::StrJoin(members, ", "), "; last: ", last));
  }

 private:
  absl::Status Start(const std::string& name, const std::string& binary,
                     std::vector<std::string> flags, const std::string& shm) {
    ChildProcessOptions options;
    options.name = name;
    options.binary = binary;
    options.flags = std::move(flags);
    options.stderr_path = absl::StrCat(log_dir_, "/", name, ".log");
    logs_.push_back(options.stderr_path);
    children_.erase(name);  // a previous run of this name (killed): reaped here
    // Restarts reuse the killed process's port (StartOnBusyPort says why).
    absl::StatusOr<std::unique_ptr<ChildProcess>> child = StartOnBusyPort(options);
    if (!child.ok()) {
      if (!shm.empty()) ::shm_unlink(shm.c_str());
      return child.status();
    }
    if (!shm.empty()) (*child)->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });
    children_[name] = *std::move(child);
    return absl::OkStatus();
  }

  std::string daemon_bin_;
  std::string coordinator_bin_;
  std::string worker_bin_;
  std::string log_dir_;
  std::vector<std::string> logs_;
  int shm_serial_ = 0;
  std::map<std::string, std::unique_ptr<ChildProcess>> children_;
};

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_FAULTS_FAULT_CLUSTER_H_

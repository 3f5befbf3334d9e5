// ServiceCluster: the real AsymCache binaries run as child processes on
// 127.0.0.1 for the reliability tests — one asymcache-daemon (tiny model,
// host pool in shared memory), one asymcache-worker beside it (tiny model,
// random weights, cpu backend), and optionally one asymcache-coordinator that
// both register with (requests then go through its Generate proxy too).
// Ports are picked by the kernel (--listen=127.0.0.1:0, READY line); every
// connection is plaintext (--plaintext; docs/security.md).
//
// Also here: what the tests read from those processes — the daemon's block
// accounting (BlockAccounting, WaitForIdlePool), the worker's queue, a child's
// resident memory (ResidentBytes) — and ClientProcess, a client binary run as
// a child that a test can SIGKILL mid-stream.
//
// Contract: test-only. Start() returns a serving cluster or an error with
// every child already stopped (the error carries their stderr logs). The destructor SIGTERMs
// the children in reverse start order and SIGKILLs what does not stop within
// the grace; the daemon's shared memory is unlinked when it dies. Not
// thread-safe, except the stubs, which are gRPC's (thread-safe).
//
// Binaries: test_binaries.h (ASYMCACHE_DAEMON_BIN / _COORDINATOR_BIN and
// ASYMCACHE_WORKER_BIN override the build's paths). Start() fails with
// NOT_FOUND naming the binary when one is missing.
#ifndef ASYMCACHE_TESTS_RELIABILITY_SERVICE_CLUSTER_H_
#define ASYMCACHE_TESTS_RELIABILITY_SERVICE_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "tests/services/child_process.h"

namespace asymcache::testing {

struct ServiceClusterOptions {
  // KV pool of the daemon (its byte syntax). Default 4MiB: 128 blocks of the
  // tiny shape (32 KiB a block), small enough that a few concurrent requests
  // evict.
  std::string pool_bytes = "4MiB";
  // Start a coordinator; the daemon and the worker register with it.
  // Default false.
  bool coordinator = false;
  // Start the worker. Default true (the limits test runs servers alone).
  bool worker = true;
  // Extra flags appended to each binary's command line (e.g. small limits).
  std::vector<std::string> daemon_flags;
  std::vector<std::string> worker_flags;
  std::vector<std::string> coordinator_flags;
  // Directory for the children's stderr logs. Required.
  std::string log_dir;
  // Bound on each child's READY line. 60 s: a TSan build starts several
  // times slower than a plain one.
  absl::Duration ready_timeout = absl::Seconds(60);
};

// The daemon's block accounting from GetStats.
struct BlockAccounting {
  int64_t capacity = 0;
  int64_t free = 0;
  int64_t writing = 0;
  int64_t sealed_evictable = 0;
  int64_t pinned = 0;
  int64_t in_transfer = 0;
  int64_t active_leases = 0;
  int64_t active_exports = 0;
  int64_t agent_pinned_blocks = 0;
  int64_t evictions = 0;
  int64_t hit_tokens = 0;
  int64_t steps = 0;

  // No block held by anyone: nothing being written, pinned or in transfer,
  // no lease, export or agent pin; every block free or sealed-evictable.
  bool Idle() const {
    return writing == 0 && pinned == 0 && in_transfer == 0 && active_leases == 0 &&
           active_exports == 0 && agent_pinned_blocks == 0 &&
           free + sealed_evictable == capacity;
  }
  std::string DebugString() const;
};

class ServiceCluster {
 public:
  static absl::StatusOr<std::unique_ptr<ServiceCluster>> Start(
      const ServiceClusterOptions& options);
  ~ServiceCluster();
  ServiceCluster(const ServiceCluster&) = delete;
  ServiceCluster& operator=(const ServiceCluster&) = delete;

  v1::CacheDaemon::Stub& daemon() { return *daemon_stub_; }
  // Preconditions: options.worker / options.coordinator.
  v1::Worker::Stub& worker() { return *worker_stub_; }
  v1::Coordinator::Stub& coordinator() { return *coordinator_stub_; }
  // The coordinator's Generate proxy (asymcache.v1.Worker on the coordinator).
  v1::Worker::Stub& coordinator_proxy() { return *proxy_stub_; }

  ChildProcess& daemon_process() { return *daemon_; }
  ChildProcess& worker_process() { return *worker_; }
  ChildProcess& coordinator_process() { return *coordinator_; }
  bool has_worker() const { return worker_ != nullptr; }
  bool has_coordinator() const { return coordinator_ != nullptr; }

  absl::StatusOr<BlockAccounting> Accounting();
  absl::StatusOr<v1::GetWorkerStatsResponse> WorkerStats();
  // Polls the daemon (every 20 ms, up to `bound`) until Accounting().Idle()
  // and, when `include_worker` (and there is one), the worker's stats show
  // nothing running or waiting. Returns the last accounting;
  // DEADLINE_EXCEEDED saying what is still held.
  absl::StatusOr<BlockAccounting> WaitForIdlePool(absl::Duration bound,
                                                  bool include_worker = true);

  // Every child's stderr log, for a failure message.
  std::string Logs() const;

 private:
  ServiceCluster() = default;
  absl::Status StartAll(const ServiceClusterOptions& options);
  absl::StatusOr<std::unique_ptr<ChildProcess>> StartChild(const ServiceClusterOptions& options,
                                                           const std::string& name,
                                                           const std::string& binary,
                                                           std::vector<std::string> flags);
  absl::Status WaitForWorkerRegistered();

  std::vector<std::string> logs_;
  std::unique_ptr<ChildProcess> coordinator_;
  std::unique_ptr<ChildProcess> daemon_;
  std::unique_ptr<ChildProcess> worker_;
  std::unique_ptr<v1::CacheDaemon::Stub> daemon_stub_;
  std::unique_ptr<v1::Worker::Stub> worker_stub_;
  std::unique_ptr<v1::Coordinator::Stub> coordinator_stub_;
  std::unique_ptr<v1::Worker::Stub> proxy_stub_;
};

// Resident set size of process `pid` (VmRSS of /proc/<pid>/status), bytes.
absl::StatusOr<int64_t> ResidentBytes(pid_t pid);

// A client binary (reliability_generate_client) run as a child: stdout is a
// pipe to the test, stderr is the test's. PR_SET_PDEATHSIG(SIGKILL) keeps a
// crashed test from leaking it; the destructor SIGKILLs and reaps it. Not
// thread-safe.
class ClientProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ClientProcess>> Spawn(const std::string& binary,
                                                             std::vector<std::string> args);
  ~ClientProcess();
  ClientProcess(const ClientProcess&) = delete;
  ClientProcess& operator=(const ClientProcess&) = delete;

  // The next stdout line (without its newline); DEADLINE_EXCEEDED when none
  // comes within `bound`, FAILED_PRECONDITION when stdout closes first.
  absl::StatusOr<std::string> ReadLine(absl::Duration bound);
  // SIGKILL and reap (idempotent).
  void Kill();
  pid_t pid() const { return pid_; }

 private:
  ClientProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}

  const pid_t pid_;
  const int stdout_fd_;
  std::string buffer_;
  bool reaped_ = false;
};

// The reliability client binary's path (ASYMCACHE_GENERATE_CLIENT_BIN, the
// build's, or beside the test); "" when none exists.
std::string GenerateClientBinary();

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_RELIABILITY_SERVICE_CLUSTER_H_

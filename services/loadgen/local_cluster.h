// LocalCluster: starts an AsymCache cluster on this machine as child
// processes (ServiceProcess) for asymcache-bench and scripts/demo.sh — cache
// daemons, one worker beside each daemon, and optionally a coordinator — all
// on 127.0.0.1 with ports picked by the kernel.
//
// Topologies:
//   * no coordinator, one daemon + one worker (role both): requests go to the
//     worker directly (target() = the worker) — the single-GPU serving setup
//     the bench measures systems on;
//   * with a coordinator: every daemon and worker registers with it and
//     requests go through its Generate proxy (target() = the coordinator);
//     with split_roles, daemon 0's worker is the prefill worker and daemon
//     1's the decode worker (KV moved daemon to daemon), other daemons'
//     workers serve both roles.
// Start() waits until the coordinator lists every worker, so the first
// request finds a route. Every child gets --plaintext (the binaries require an
// explicit transport choice, docs/security.md): a local cluster listens on
// 127.0.0.1 only. A TLS cluster is started by its operator and driven with
// asymcache-bench --target and --tls-*.
//
// Contract: Start() either returns a serving cluster or an error with every
// child already stopped. Stop() sends SIGTERM in reverse start order
// (workers, daemons, coordinator) and waits for each; the destructor calls
// Stop(). Not thread-safe.
//
// Errors: INVALID_ARGUMENT for bad options (naming the field), NOT_FOUND for
// a binary missing from bin_dir, and a child's start error (its stderr log
// named) otherwise.
#ifndef ASYMCACHE_SERVICES_LOADGEN_LOCAL_CLUSTER_H_
#define ASYMCACHE_SERVICES_LOADGEN_LOCAL_CLUSTER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "services/common/service_process.h"

namespace asymcache::loadgen {

struct LocalClusterOptions {
  // Directory holding asymcache-daemon, asymcache-worker and
  // asymcache-coordinator. "" = the directory of the running executable, then
  // the build tree's layout around it (services/{daemon,worker,coordinator}/
  // under the build root) — so a bench run from the build tree or from an
  // installed bin/ finds its siblings.
  std::string bin_dir;
  // Directory for the children's stderr logs (<name>.log). Required: a failed
  // start must point at a log.
  std::string log_dir;

  // Cache daemons (one worker each). 1. >= 1; split_roles needs >= 2.
  int daemons = 1;
  // Start a coordinator and route through it. Default false.
  bool coordinator = false;
  // Prefill on daemon 0's worker, decode on daemon 1's. Needs a coordinator.
  bool split_roles = false;

  // Model shape for daemons and workers (tiny, llama-3-8b, llama-3-70b-tp).
  // "tiny": the CPU demo shape.
  std::string model = "tiny";
  // Pool: "host" (shared memory, CPU worker) or "cuda" (GPU, CUDA worker).
  std::string backend = "host";
  // KV pool size per daemon, in the daemons' byte syntax (e.g. 64MiB, 20GiB).
  // Default 16MiB: with the tiny shape (8 KiB a block) 2048 blocks, small
  // enough that the demo's workload evicts.
  std::string pool_bytes = "16MiB";
  // Eviction policy of every daemon (lru, lfu, lru-tail, front-first, asym).
  std::string policy = "asym";
  // Cost-model calibration file for the daemons ("" = theirs: measured on
  // start for cuda, built-in for host).
  std::string calibration;
  // Chunking of every worker: "adaptive" (under tpot_target) or "fixed"
  // (fixed_budget_tokens a step).
  std::string chunking = "adaptive";
  int64_t fixed_budget_tokens = 2048;
  // Prefill order of every worker (--prefill-order): "arrival" (FCFS) or
  // "least-remaining".
  std::string prefill_order = "arrival";
  absl::Duration tpot_target = absl::Milliseconds(50);
  // What tpot_target bounds (the worker's --tpot-slo): "request-mean" or
  // "per-step".
  std::string tpot_slo = "request-mean";
  // Adaptive chunking's budget floor while requests wait for admission
  // (the worker's --overload-budget-tokens; 0 = off).
  int64_t overload_budget_tokens = 2048;
  // Seed of the workers' random weights (every worker the same: a prefill /
  // decode pair must compute the same model).
  uint64_t seed = 1;
  // cpu backend threads per worker (0 = all cores).
  int cpu_threads = 0;
  // GPU of daemon i (and its worker): gpus[i % gpus.size()]. Default {0}.
  std::vector<int> gpus = {0};
  // Worker i writes a step trace (--step-trace, services/worker/step_trace.h)
  // to <log_dir>/worker-i.steps.jsonl. Default false.
  bool step_traces = false;
  // Extra flags appended to every daemon's / worker's command line.
  std::vector<std::string> daemon_flags;
  std::vector<std::string> worker_flags;
  // Bound on each child's READY line. 120 s: a CUDA worker initializes
  // llama-3-8b's 16 GB of random weights and a CUDA daemon calibrates first.
  absl::Duration ready_timeout = absl::Seconds(120);
  // SIGTERM grace per child at Stop(). 10 s.
  absl::Duration stop_grace = absl::Seconds(10);

  absl::Status Validate() const;
};

class LocalCluster {
 public:
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const LocalClusterOptions& options);
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  // Where Generate requests go (the coordinator, else worker 0).
  std::string target() const;
  // The first worker (GetWorkerStats) and daemon (GetStats) addresses.
  std::string worker_address(int i) const { return workers_[i]->address(); }
  std::string daemon_address(int i) const { return daemons_[i]->address(); }
  int worker_count() const { return static_cast<int>(workers_.size()); }
  // "name  grpc=127.0.0.1:P  metrics=http://127.0.0.1:M/metrics" per child.
  std::vector<std::string> Endpoints() const;
  // Stops every child (reverse order); the first error, children all stopped.
  absl::Status Stop();

 private:
  explicit LocalCluster(LocalClusterOptions options) : options_(std::move(options)) {}
  absl::Status StartAll();
  absl::StatusOr<std::unique_ptr<ServiceProcess>> StartChild(const std::string& name,
                                                              const std::string& binary,
                                                              std::vector<std::string> flags);
  absl::Status WaitForWorkersRegistered();

  const LocalClusterOptions options_;
  std::string bin_dir_;
  std::unique_ptr<ServiceProcess> coordinator_;
  std::vector<std::unique_ptr<ServiceProcess>> daemons_;
  std::vector<std::unique_ptr<ServiceProcess>> workers_;
};

// The directory `bin_dir` resolves to (see LocalClusterOptions::bin_dir) and
// the path of `binary` in it; NOT_FOUND naming the places looked in.
absl::StatusOr<std::string> FindServiceBinary(const std::string& bin_dir,
                                              const std::string& binary);

}  // namespace asymcache::loadgen

#endif  // ASYMCACHE_SERVICES_LOADGEN_LOCAL_CLUSTER_H_

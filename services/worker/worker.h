// Worker: one running reference worker (DESIGN.md §4) — the model backend on
// the co-located cache daemon's pool, the step loop (engine.h), the gRPC
// server (asymcache.v1.Worker + grpc.health.v1 + reflection), the metrics
// endpoint and, with coordinators configured, cluster membership as a
// WORKER member. The binary asymcache-worker is flag parsing around Start();
// tests start workers in-process on 127.0.0.1:0.
//
// Start(), in order: connect to the daemon (waiting up to
// daemon_connect_timeout), read its stats (the calibration the chunk
// scheduler uses), build the weights (model_dir, or random weights of the
// named shape), map the daemon's pool (AttachPool, which refuses a model
// whose KV shape differs from the daemon's), create the backend (cpu or cuda)
// over the mapping, start the engine, serve gRPC and metrics, register with
// the coordinators.
//
// Shutdown(): leave the cluster (deregister, so coordinators stop routing
// here), mark health NOT_SERVING, refuse new Generate calls with
// UNAVAILABLE, give in-flight streams shutdown_grace to finish (then they
// are cancelled, which releases their blocks), stop the server, the stats
// thread and the engine. The backend, the pool mapping and the daemon client
// go with the Worker's destruction; engine() stays readable until then.
//
// Ownership: the Worker owns everything it builds. Thread-safety:
// thread-safe; Shutdown() may be called from several threads (the first does
// the work, the others wait for it) and by the destructor.
#ifndef ASYMCACHE_SERVICES_WORKER_WORKER_H_
#define ASYMCACHE_SERVICES_WORKER_WORKER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/worker/engine.h"
#include "services/worker/worker_options.h"

namespace asymcache {
class MemberRegistrar;  // services/coordinator/member_registrar.h
}  // namespace asymcache

namespace asymcache::worker {

class Worker {
 public:
  // INVALID_ARGUMENT for bad options or a model the backend refuses;
  // DEADLINE_EXCEEDED when the daemon does not connect in time; UNAVAILABLE
  // when a port cannot be bound or the daemon fails; FAILED_PRECONDITION when
  // the model's KV shape differs from the daemon's (or no GPU / no CUDA
  // build for the cuda backend); NOT_FOUND for a missing model directory or
  // shared-memory pool (a daemon on another host).
  static absl::StatusOr<std::unique_ptr<Worker>> Start(const WorkerOptions& options);
  ~Worker();  // Shutdown()
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Bound ports (the real ones when 0 was asked for); metrics_port() is -1
  // when metrics are disabled.
  int grpc_port() const;
  int metrics_port() const;
  // "127.0.0.1:<grpc_port>" for local clients.
  std::string local_address() const;
  // The identity used with the coordinators (also when standalone: what it
  // would register as).
  const std::string& member_id() const;
  const std::string& advertise_address() const;
  // nullptr when standalone (no coordinators).
  MemberRegistrar* registrar();

  void Shutdown();
  // Blocks until Shutdown() has finished (e.g. from a signal handler thread).
  void Wait();

  Engine& engine();

 private:
  struct Server;
  explicit Worker(std::unique_ptr<Server> server);
  std::unique_ptr<Server> server_;
};

}  // namespace asymcache::worker

#endif  // ASYMCACHE_SERVICES_WORKER_WORKER_H_

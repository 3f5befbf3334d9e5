// Coordinator: one running coordinator replica (DESIGN.md §3.6, §4) — the
// core (CoordinatorState: registry, event-fed block index, router), the
// metrics endpoint and the gRPC server (Coordinator service, the Worker
// service's Generate proxied to the routed workers (generate_proxy.h),
// grpc.health.v1, reflection), plus a maintenance thread that expires
// members and refreshes the gauges. The binary asymcache-coordinator is
// flag parsing around Start(); tests start coordinators in-process on
// 127.0.0.1:0.
//
// Lifecycle: Start() builds everything, binds the ports and serves;
// Shutdown() marks the health service NOT_SERVING, refuses new RPCs with
// UNAVAILABLE, gives in-flight RPCs (proxied Generate streams) shutdown_grace
// to finish, then cancels them (and their worker calls), stops the
// server, the maintenance thread and every event watcher. state() stays
// readable until destruction. Thread-safe.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/coordinator/coordinator_options.h"

namespace asymcache {

class CoordinatorState;  // services/coordinator/coordinator_state.h

class Coordinator {
 public:
  // INVALID_ARGUMENT for bad options; UNAVAILABLE when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Start(const CoordinatorOptions& options);
  ~Coordinator();  // Shutdown()
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Bound ports (the real ones when 0 was asked for); metrics_port() is -1
  // when metrics are disabled.
  int grpc_port() const;
  int metrics_port() const;
  // "127.0.0.1:<grpc_port>" for local clients.
  std::string local_address() const;

  void Shutdown();
  // Blocks until Shutdown() has finished (e.g. from a signal handler thread).
  void Wait();

  // The core: registry(), index(), router(), Route() (a benchmark fills the
  // index directly; tests inspect it).
  CoordinatorState& state();

 private:
  struct Server;
  explicit Coordinator(std::unique_ptr<Server> server);
  std::unique_ptr<Server> server_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_H_

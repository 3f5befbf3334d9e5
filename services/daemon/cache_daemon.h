// CacheDaemon: one running cache daemon (DESIGN.md §4) — the KV pool, the
// KvCache over it, agent pins, KV event hub, block transfer, metrics and the
// gRPC server (CacheDaemon service + grpc.health.v1 + reflection). The binary
// asymcache-daemon is flag parsing around Start(); tests start daemons
// in-process on 127.0.0.1:0.
//
// Lifecycle: Start() builds everything, binds the ports and serves; Shutdown()
// marks the health service NOT_SERVING, refuses new RPCs with UNAVAILABLE,
// ends event streams (after flushing queued events), gives in-flight RPCs
// shutdown_grace to finish and stops the server and the maintenance thread.
// Leases, exports and pins still held are released when the CacheDaemon is
// destroyed (the binary destroys it right after Shutdown; state() stays
// readable in between). Thread-safe.
//
// Cluster membership: with DaemonOptions::coordinators set, Start() (once the
// server is up) starts a MemberRegistrar that registers this daemon with
// every coordinator (kind DAEMON, its model shape, calibration and run
// instance) and heartbeats its load; Shutdown() deregisters first, so
// coordinators stop routing here before RPCs are refused.
#ifndef ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_H_
#define ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "services/daemon/daemon_options.h"

namespace asymcache {

class CacheDaemonState;  // services/daemon/daemon_state.h
class MemberRegistrar;   // services/coordinator/member_registrar.h

class CacheDaemon {
 public:
  // Validates options, creates the pool, loads or measures the calibration,
  // starts the server. INVALID_ARGUMENT for bad options; UNAVAILABLE when a
  // port cannot be bound; RESOURCE_EXHAUSTED when the pool cannot be allocated.
  static absl::StatusOr<std::unique_ptr<CacheDaemon>> Start(const DaemonOptions& options);
  ~CacheDaemon();  // Shutdown()

  // Bound ports (the real ones when 0 was asked for); metrics_port() is -1
  // when metrics are disabled.
  int grpc_port() const;
  int metrics_port() const;
  // "127.0.0.1:<grpc_port>" for local clients.
  std::string local_address() const;

  void Shutdown();
  // Blocks until Shutdown() has finished (e.g. from a signal handler thread).
  void Wait();

  // The assembled core (tests inspect stats and consistency through it).
  CacheDaemonState& state();

  // The id and address this daemon registers under (resolved defaults; see
  // DaemonOptions::member_id and advertise_address).
  const std::string& member_id() const;
  const std::string& advertise_address() const;
  // The coordinator registrar; nullptr when standalone (no coordinators).
  MemberRegistrar* registrar();

 private:
  struct Server;
  explicit CacheDaemon(std::unique_ptr<Server> server);
  std::unique_ptr<Server> server_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_CACHE_DAEMON_H_

// The parts a service's in-process server is assembled from (CacheDaemon,
// Coordinator, Worker): the gRPC server itself (one or more services plus
// grpc.health.v1 and reflection, message size limits, the bound port), its graceful stop, the
// maintenance thread that ticks at a fixed interval, and the latch that makes
// Shutdown() run once while later callers wait for it.
//
// Errors: absl::Status (UNAVAILABLE when the gRPC port cannot be bound).
// Ownership and thread-safety: per class below.
#ifndef ASYMCACHE_SERVICES_COMMON_GRPC_SERVER_PARTS_H_
#define ASYMCACHE_SERVICES_COMMON_GRPC_SERVER_PARTS_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "grpcpp/server.h"
#include "services/common/transport_security.h"

namespace asymcache {

// A started gRPC server and the port it bound (the real one when port 0 was
// asked for).
struct StartedGrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

// Serves `service` (not owned; must outlive the server) on `listen`
// (HOST:PORT) with `security`'s server credentials (mutual TLS or plaintext,
// transport_security.h) and grpc.health.v1 (SERVING) and server reflection,
// messages up to `max_message_bytes` each way. UNAVAILABLE "--listen: cannot
// serve gRPC on LISTEN (...)" when the address cannot be bound;
// INVALID_ARGUMENT (transport_security.h) for bad security options.
absl::StatusOr<StartedGrpcServer> StartGrpcServer(const std::string& listen,
                                                  const TransportSecurityOptions& security,
                                                  int max_message_bytes, grpc::Service* service);
// The same with several services on one server (e.g. the coordinator's
// Coordinator service and its Generate proxy): each is registered once, none
// is owned, each must outlive the server; their full method names must not
// clash. Precondition: `services` is not empty and holds no null.
absl::StatusOr<StartedGrpcServer> StartGrpcServer(const std::string& listen,
                                                  const TransportSecurityOptions& security,
                                                  int max_message_bytes,
                                                  absl::Span<grpc::Service* const> services);

// Health NOT_SERVING, so load balancers stop sending work.
void MarkNotServing(grpc::Server& server);

// Stops the server: in-flight RPCs get `grace`, then are cancelled; returns
// once every RPC has ended.
void StopGrpcServer(grpc::Server& server, absl::Duration grace);

// A thread that calls `tick` every `interval` until Stop(). Ownership: owns
// the thread; `tick` runs only on it. Thread-safety: Stop() may be called from
// any thread, once at a time; the destructor stops.
class PeriodicThread {
 public:
  PeriodicThread(absl::Duration interval, std::function<void()> tick);
  ~PeriodicThread();  // Stop()
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

  // Wakes the thread (a tick in progress finishes) and joins it. Idempotent.
  void Stop();

 private:
  absl::Notification stop_;
  std::thread thread_;
};

// Makes a Shutdown() run once: the first Begin() returns true and that caller
// runs the shutdown and then calls Finish(); every other Begin() waits for
// Finish() and returns false. Thread-safe.
class ShutdownLatch {
 public:
  bool Begin() ABSL_LOCKS_EXCLUDED(mu_);
  void Finish();
  // Blocks until Finish().
  void Wait() { finished_.WaitForNotification(); }

 private:
  absl::Mutex mu_;
  bool begun_ ABSL_GUARDED_BY(mu_) = false;
  absl::Notification finished_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_GRPC_SERVER_PARTS_H_

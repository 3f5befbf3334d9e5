// MetricsExposer: serves a Prometheus registry over HTTP at
// http://<host>:<port>/metrics (text exposition format 0.0.4), the endpoint a
// Prometheus server scrapes.
//
// What it is: a thin RAII wrapper around prometheus::Exposer (civetweb). Start()
// binds the listening socket; bind failures (port in use, address not local,
// malformed address) come back as an absl::Status instead of the exception
// prometheus-cpp throws. Port 0 binds an ephemeral port; port() reports the port
// actually bound. The endpoint also carries prometheus-cpp's own exposer_*
// metrics (scrapes, bytes, latency).
//
// Ownership: the exposer owns its registry (shared with the HTTP threads, which
// hold it weakly); metrics registered in registry() live as long as the
// exposer. Destroying the exposer stops serving: it closes the socket and joins
// the HTTP threads before the registry goes away (in milliseconds: the
// destructor wakes civetweb's listener thread, which otherwise notices the
// stop only at its next 2 s poll timeout).
//
// Thread-safety: thread-safe. registry() may be used from any thread while the
// HTTP threads collect it (prometheus-cpp registries and metrics are
// thread-safe).
#ifndef ASYMCACHE_SERVICES_COMMON_METRICS_EXPOSER_H_
#define ASYMCACHE_SERVICES_COMMON_METRICS_EXPOSER_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prometheus {
class Exposer;
class Registry;
}  // namespace prometheus

namespace asymcache {

struct MetricsExposerOptions {
  // IPv4 address or host name to bind; "0.0.0.0" listens on every interface.
  // Default: loopback only. IPv6 literals are not supported (civetweb build).
  std::string host = "127.0.0.1";
  // 0 = an ephemeral port chosen by the kernel (see MetricsExposer::port()),
  // otherwise 1..65535.
  int port = 0;
  // HTTP worker threads, 1..64. Scrapes are rare and cheap; 2 lets a slow
  // client not block a Prometheus scrape.
  int num_threads = 2;

  // INVALID_ARGUMENT naming the field: empty host or one containing ':', ','
  // or whitespace; port outside 0..65535; num_threads outside 1..64.
  absl::Status Validate() const;
};

class MetricsExposer {
 public:
  // Binds host:port and starts serving an empty registry. INVALID_ARGUMENT for
  // bad options; UNAVAILABLE with "host:port" and the system's reason (e.g.
  // "Address already in use") when the socket cannot be bound.
  static absl::StatusOr<std::unique_ptr<MetricsExposer>> Start(
      const MetricsExposerOptions& options);

  ~MetricsExposer();
  MetricsExposer(const MetricsExposer&) = delete;
  MetricsExposer& operator=(const MetricsExposer&) = delete;

  // The port actually bound (the ephemeral one when options.port was 0).
  int port() const { return port_; }
  // "host:port" with the bound port, e.g. "127.0.0.1:39231".
  std::string address() const;
  // The registry served at /metrics; register metric families here.
  prometheus::Registry& registry() const { return *registry_; }

 private:
  MetricsExposer(std::string host, int port, std::shared_ptr<prometheus::Registry> registry,
                 std::unique_ptr<prometheus::Exposer> exposer);

  // Immutable after construction. Declaration order matters: the exposer (and
  // its HTTP threads) is destroyed before the registry.
  const std::string host_;
  const int port_;
  const std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;  // reset only by the destructor
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_METRICS_EXPOSER_H_

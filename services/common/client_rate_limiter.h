// ClientRateLimiter: requests per second per client, for the servers that
// take requests from outside the cluster (the worker's Generate, the
// coordinator's Generate proxy and Route; docs/security.md, "Limits").
//
// A token bucket per client: `rate` tokens a second, at most `burst` saved;
// a request takes one token or is refused with RESOURCE_EXHAUSTED naming the
// client and the limit (gRPC clients retry with backoff). The client is the
// authenticated identity when the call has one (mutual TLS: the certificate's
// CN/SAN, so a tenant cannot dodge its limit by opening connections), else the
// peer's IP address (port dropped). Cluster components in --trusted-peers are
// not limited (the coordinator's proxy forwards every tenant's requests).
//
// Memory is bounded: at most `max_clients` buckets; past that, the bucket
// untouched longest is dropped (a dropped client starts again with a full
// burst: forgetting only ever admits, never refuses wrongly).
//
// Contract: thread-safe (one mutex; O(1) per request, O(max_clients) only
// when a full table drops its oldest bucket). rate == 0 turns it off.
#ifndef ASYMCACHE_SERVICES_COMMON_CLIENT_RATE_LIMITER_H_
#define ASYMCACHE_SERVICES_COMMON_CLIENT_RATE_LIMITER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace asymcache {

struct ClientRateLimitOptions {
  // Requests a second per client. 0 (the default) = no limit: the right rate
  // depends on the deployment (a frontend fleet behind one identity needs a
  // far higher one than a single tenant), so it is the operator's choice.
  double requests_per_second = 0;
  // Requests a client may make at once after being idle. 0 = two seconds'
  // worth (2 × requests_per_second, at least 1).
  int64_t burst = 0;
  // Most clients tracked. 65536: a few MiB at most.
  int64_t max_clients = 65536;

  // INVALID_ARGUMENT naming the field (`flag_prefix` + name, e.g.
  // "client-rate-limit").
  absl::Status Validate() const;
  bool enabled() const { return requests_per_second > 0; }
  int64_t effective_burst() const;
};

class ClientRateLimiter {
 public:
  // `exempt`: identities never limited (the --trusted-peers). `now` is the
  // clock (absl::Now by default; tests pass their own).
  ClientRateLimiter(ClientRateLimitOptions options, std::vector<std::string> exempt,
                    std::function<absl::Time()> now = absl::Now);

  // OK, or RESOURCE_EXHAUSTED "<what>: client '<client>' is over its limit of
  // N requests/s (burst B)". Always OK when the limiter is off.
  absl::Status Admit(absl::string_view client, absl::string_view what) ABSL_LOCKS_EXCLUDED(mu_);
  // The same for a server call: ClientKey(context).
  absl::Status Admit(const grpc::ServerContextBase& context, absl::string_view what)
      ABSL_LOCKS_EXCLUDED(mu_);

  // "id:<identity>" for an authenticated call, else "ip:<address>"
  // (grpc peer "ipv4:1.2.3.4:567" -> "ip:1.2.3.4", "ipv6:[::1]:5" -> "ip:[::1]").
  static std::string ClientKey(const grpc::ServerContextBase& context);
  bool exempt(absl::string_view identity) const { return exempt_.contains(identity); }

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time refilled;
  };
  const ClientRateLimitOptions options_;
  const absl::flat_hash_set<std::string> exempt_;
  const std::function<absl::Time()> now_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_CLIENT_RATE_LIMITER_H_

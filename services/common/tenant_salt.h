// TenantSaltPolicy: the salt a tenant request runs under (DESIGN.md §2: the
// salt keeps one tenant from hitting, timing or probing another's blocks).
// With TLS on, the salt comes from the authenticated client identity, not
// from the request's `salt` field (docs/security.md):
//
//   plaintext                      the request's salt, as sent (nothing is
//                                  authenticated; isolation is the
//                                  frontend's job)
//   TLS, peer in trusted_peers     the request's salt, as sent: a cluster
//                                  component (e.g. the coordinator's
//                                  Generate proxy) forwards a salt it has
//                                  already derived
//   TLS, any other peer            "tenant:" + E(identity), plus "/" + the
//                                  request's salt when it names one: a
//                                  tenant may subdivide its own namespace,
//                                  never reach another's
//
// E escapes '%' as "%25" and '/' as "%2F", so the first '/' after "tenant:"
// ends the identity and no two (identity, salt) pairs give one salt.
//
// Used by the servers that take tenant requests: the worker's Generate, the
// coordinator's Generate proxy and Route. Membership RPCs (coordinator
// Register/Heartbeat/Deregister) ask IsTrusted instead.
//
// Errors: PERMISSION_DENIED for a TLS peer without an identity (a certificate
// with neither CN nor SAN).
//
// Contract: immutable after construction; thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_TENANT_SALT_H_
#define ASYMCACHE_SERVICES_COMMON_TENANT_SALT_H_

#include <string>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "services/common/transport_security.h"

namespace asymcache {

class TenantSaltPolicy {
 public:
  // Reads tls() and trusted_peers of `security` (validated by the caller).
  explicit TenantSaltPolicy(const TransportSecurityOptions& security);

  // Whether TLS is on (else every salt passes through).
  bool tls() const { return tls_; }

  // Whether `peer_identity` (PeerIdentity()) is a trusted cluster component.
  // With plaintext every peer is (nothing could tell them apart).
  bool IsTrusted(absl::string_view peer_identity) const;

  // The salt a request from `peer_identity` asking for `requested_salt` runs
  // under (the table above).
  absl::StatusOr<std::string> SaltFor(absl::string_view peer_identity,
                                      absl::string_view requested_salt) const;

 private:
  const bool tls_;
  const absl::flat_hash_set<std::string> trusted_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_TENANT_SALT_H_

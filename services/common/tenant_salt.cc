#include "services/common/tenant_salt.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace asymcache {

TenantSaltPolicy::TenantSaltPolicy(const TransportSecurityOptions& security)
    : tls_(security.tls()),
      trusted_(security.trusted_peers.begin(), security.trusted_peers.end()) {}

bool TenantSaltPolicy::IsTrusted(absl::string_view peer_identity) const {
  return !tls_ || trusted_.contains(peer_identity);
}

absl::StatusOr<std::string> TenantSaltPolicy::SaltFor(absl::string_view peer_identity,
                                                      absl::string_view requested_salt) const {
  if (IsTrusted(peer_identity)) return std::string(requested_salt);
  if (peer_identity.empty()) {
    return absl::PermissionDeniedError(
        "the client certificate names no identity (neither a subject CN nor a SAN), so no tenant "
        "salt can be derived for it");
  }
  // One pass: an escape's own '%' is never escaped again.
  const std::string escaped = absl::StrReplaceAll(peer_identity, {{"%", "%25"}, {"/", "%2F"}});
  if (requested_salt.empty()) return absl::StrCat("tenant:", escaped);
  return absl::StrCat("tenant:", escaped, "/", requested_salt);
}

}  // namespace asymcache

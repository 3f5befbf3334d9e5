// The transport security settings of a service binary's settings table
// (settings_table.h), one definition for asymcache-daemon,
// asymcache-coordinator and asymcache-worker: --plaintext, --tls-cert,
// --tls-key, --tls-ca and (where the binary takes tenant requests or
// members) --trusted-peers, the same names as YAML keys. What they mean and
// how they are checked: transport_security.h.
//
// Contract: pure functions building table rows; thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_SETTINGS_H_
#define ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_SETTINGS_H_

#include <vector>

#include "services/common/settings_table.h"
#include "services/common/transport_security.h"

namespace asymcache {

// Whether a binary's table gets --trusted-peers.
enum class TrustedPeersSetting { kWithout, kWith };

// The rows; `field` maps an Options* (and a const Options*) to its
// TransportSecurityOptions: [](auto* o) { return &o->security; }.
template <typename Options, typename Field>
std::vector<typename SettingsTable<Options>::Setting> TransportSecuritySettings(
    Field field, TrustedPeersSetting trusted_peers) {
  using Table = SettingsTable<Options>;
  std::vector<typename Table::Setting> rows = {
      Table::Bool("plaintext",
                  "serve and connect without TLS (no encryption, no authentication); "
                  "required unless the --tls-* files are given",
                  [field](auto* o) { return &field(o)->plaintext; }),
      Table::String("tls-cert",
                    "PEM certificate chain presented to peers (mutual TLS; with --tls-key and "
                    "--tls-ca)",
                    [field](auto* o) { return &field(o)->cert_file; }),
      Table::String("tls-key", "PEM private key of --tls-cert",
                    [field](auto* o) { return &field(o)->key_file; }),
      Table::String("tls-ca", "PEM CA bundle every peer's certificate must chain to",
                    [field](auto* o) { return &field(o)->ca_file; }),
  };
  if (trusted_peers == TrustedPeersSetting::kWith) {
    rows.push_back(Table::CommaList(
        "trusted-peers",
        "TLS identities (certificate CN) of cluster components, comma-separated: they may "
        "register, and their requests' salt is trusted; every other peer is a tenant",
        [field](auto* o) { return &field(o)->trusted_peers; }));
  }
  return rows;
}

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_TRANSPORT_SECURITY_SETTINGS_H_

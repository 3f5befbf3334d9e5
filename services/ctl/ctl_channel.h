// The one place asymcachectl opens a gRPC channel. Every subcommand calls
// MakeChannel, so transport security is added here and nowhere else:
// plaintext, or mutual TLS with the cluster's certificates (--tls-cert,
// --tls-key, --tls-ca; services/common/transport_security.h).
//
// Contract: a free function; thread-safe. The channel connects lazily (on
// the first call); an unreachable target surfaces as that call's
// UNAVAILABLE or DEADLINE_EXCEEDED, not here.
#ifndef ASYMCACHE_SERVICES_CTL_CTL_CHANNEL_H_
#define ASYMCACHE_SERVICES_CTL_CTL_CHANNEL_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/channel.h"
#include "services/common/transport_security.h"

namespace asymcache::ctl {

struct ChannelOptions {
  // Largest message sent or received, bytes. 64 MiB: the servers' default
  // max_message_bytes (a 1M-token request or a long member list). > 0.
  int max_message_bytes = 64 << 20;
  // Plaintext (the default: a client cannot weaken a server, which refuses
  // what it does not accept) or mutual TLS: this process presents cert_file
  // and key_file and verifies the server against ca_file, whose certificate
  // must name the target's host in its SANs (docs/security.md).
  TransportSecurityOptions security;

  // INVALID_ARGUMENT naming the bad field (TransportSecurityOptions::Validate
  // for `security`: it reads the files).
  absl::Status Validate() const;
};

// A channel to `target` (HOST:PORT, or any gRPC target URI such as
// dns:///cache-0:50051) with `options.security`'s credentials.
// INVALID_ARGUMENT for an empty target or invalid options.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options);

}  // namespace asymcache::ctl

#endif  // ASYMCACHE_SERVICES_CTL_CTL_CHANNEL_H_

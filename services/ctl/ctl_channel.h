// The one place asymcachectl opens a gRPC channel. Every subcommand calls
// MakeChannel, so transport security (TLS credentials, once the binaries
// speak it) is added here and nowhere else.
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

namespace asymcache::ctl {

struct ChannelOptions {
  // Largest message sent or received, bytes. 64 MiB: the servers' default
  // max_message_bytes (a 1M-token request or a long member list). > 0.
  int max_message_bytes = 64 << 20;

  // INVALID_ARGUMENT naming the bad field.
  absl::Status Validate() const;
};

// A channel to `target` (HOST:PORT, or any gRPC target URI such as
// dns:///cache-0:50051). Plaintext for now: the servers serve insecure gRPC.
// INVALID_ARGUMENT for an empty target or invalid options.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& target,
                                                           const ChannelOptions& options);

}  // namespace asymcache::ctl

#endif  // ASYMCACHE_SERVICES_CTL_CTL_CHANNEL_H_

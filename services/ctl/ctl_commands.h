// asymcachectl's subcommands (ctl_command_line.h lists them): each makes one
// RPC (generate: one server stream) to options.target through MakeChannel
// (ctl_channel.h), with options.EffectiveTimeout() as its deadline, and
// prints the answer to `out`: text tables, or JSON with options.json
// (ctl_output.h; generate prints one JSON line per stream message).
//
// Errors: the server's gRPC status with its code kept and the call named in
// front of its message, e.g. UNAVAILABLE "Coordinator.ListMembers on
// 10.0.0.5:50061: failed to connect to all addresses"; an unreachable server is
// UNAVAILABLE, one that does not answer in time DEADLINE_EXCEEDED. health: a
// status other than SERVING is printed to `out`, then UNAVAILABLE "TARGET is
// NOT_SERVING". What was printed before an error stays printed (generate's
// tokens streamed before a failure).
//
// Contract: RunCtlCommand blocks until the RPC ends; thread-compatible (one
// call per `out` at a time). Precondition: options.Validate() is OK.
#ifndef ASYMCACHE_SERVICES_CTL_CTL_COMMANDS_H_
#define ASYMCACHE_SERVICES_CTL_CTL_COMMANDS_H_

#include <cstdint>
#include <ostream>
#include <vector>

#include "absl/status/status.h"
#include "services/ctl/ctl_command_line.h"

namespace asymcache::ctl {

// Runs options.subcommand and prints its answer to `out`.
absl::Status RunCtlCommand(const CtlOptions& options, std::ostream& out);

// The prompt of route and generate: options.tokens when given, else
// options.random_tokens ids, each the next output of std::mt19937_64 seeded
// with options.seed, modulo options.vocab (the same ids on every platform for
// the same flags).
std::vector<int32_t> PromptTokens(const CtlOptions& options);

}  // namespace asymcache::ctl

#endif  // ASYMCACHE_SERVICES_CTL_CTL_COMMANDS_H_

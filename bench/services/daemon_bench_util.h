// Shared by the daemon benchmarks: start an in-process daemon on 127.0.0.1
// and commit a context through the public API (PlanStep -> CommitStep ->
// ReleaseStep). Errors come back as values so a benchmark can report them
// (state.SkipWithError) instead of aborting.
#ifndef ASYMCACHE_BENCH_SERVICES_DAEMON_BENCH_UTIL_H_
#define ASYMCACHE_BENCH_SERVICES_DAEMON_BENCH_UTIL_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "asymcache/v1/cache_daemon.grpc.pb.h"
#include "cachecore/types.h"
#include "services/common/grpc_status.h"
#include "services/daemon/cache_daemon.h"

namespace asymcache::bench {

// A daemon on 127.0.0.1:0, metrics off, host pool of `pool_bytes`, tiny model.
inline absl::StatusOr<std::unique_ptr<CacheDaemon>> StartLocalDaemon(
    int64_t pool_bytes, const std::string& ucx_transports = "") {
  DaemonOptions options;
  options.listen = "127.0.0.1:0";
  options.metrics_port = -1;
  options.pool_bytes = pool_bytes;
  options.ucx_transports = ucx_transports;
  return CacheDaemon::Start(options);
}

// Plans, commits and releases `tokens` under (salt, sequence): afterwards the
// context's full blocks are resident (evictable). The failing RPC's status.
inline absl::Status CommitContext(v1::CacheDaemon::Stub& stub, const std::string& salt,
                                  uint64_t sequence, absl::Span<const TokenId> tokens) {
  const auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(30); };
  v1::PlanStepRequest plan;
  plan.set_salt(salt);
  plan.set_sequence_id(sequence);
  plan.mutable_tokens()->Assign(tokens.begin(), tokens.end());
  v1::PlanStepResponse planned;
  grpc::ClientContext c1, c2, c3;
  c1.set_deadline(deadline());
  c2.set_deadline(deadline());
  c3.set_deadline(deadline());
  if (absl::Status s = FromGrpcStatus(stub.PlanStep(&c1, plan, &planned)); !s.ok()) return s;
  v1::CommitStepRequest commit;
  commit.set_lease_id(planned.lease_id());
  v1::CommitStepResponse committed;
  if (absl::Status s = FromGrpcStatus(stub.CommitStep(&c2, commit, &committed)); !s.ok()) return s;
  v1::ReleaseStepRequest release;
  release.set_lease_id(planned.lease_id());
  v1::ReleaseStepResponse released;
  return FromGrpcStatus(stub.ReleaseStep(&c3, release, &released));
}

}  // namespace asymcache::bench

#endif  // ASYMCACHE_BENCH_SERVICES_DAEMON_BENCH_UTIL_H_

// CoordinatorOptions: everything asymcache-coordinator can be told, with the
// default of every field documented beside it (and why). Flags and the
// optional YAML config file are parsed into this struct in one place
// (coordinator_config.h); the coordinator itself only reads
// CoordinatorOptions.
//
// Contract: a plain value; Validate() names the first bad field.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_OPTIONS_H_
#define ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_OPTIONS_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "cachecore/block_location_index.h"
#include "cachecore/clock.h"
#include "cachecore/model_config.h"
#include "cachecore/router.h"
#include "services/common/client_rate_limiter.h"
#include "services/common/transport_security.h"

namespace asymcache {

struct CoordinatorOptions {
  // gRPC listen address. Port 0 picks a free port (reported by the
  // coordinator). Default: all interfaces, port 50061 (the daemon's 50051 plus
  // ten, so both run side by side on one host).
  std::string listen = "0.0.0.0:50061";
  // Prometheus exposition on this port (0 = pick a free one, -1 = disabled),
  // bound on metrics_host. Default 9401 (the daemon uses 9400).
  int metrics_port = 9401;
  std::string metrics_host = "0.0.0.0";

  // Members heartbeat at least this often (RegisterResponse tells them).
  // 1 s: load reaches the router within a second, at a negligible RPC rate
  // (64 members = 64 tiny RPCs/s per replica). > 0.
  absl::Duration heartbeat_interval = absl::Seconds(1);
  // A member without a heartbeat for this long leaves routing (its index
  // entries are dropped; its next heartbeat gets NOT_FOUND and it registers
  // again). 5 s = five missed heartbeats: one lost or late heartbeat never
  // evicts a healthy member, a dead one stops receiving routes within
  // seconds. > heartbeat_interval.
  absl::Duration member_timeout = absl::Seconds(5);
  // How often the maintenance thread expires members and agent affinities
  // and refreshes the gauges. 100 ms: expiry is late by at most this much
  // (2 % of the default timeout); the work per run is O(members). > 0.
  absl::Duration maintenance_interval = absl::Milliseconds(100);

  // A daemon that rejoins — registers again under its member id with a new
  // run (a restart), also after it left (expired, deregistered) — comes back
  // with an empty pool; with nothing cached and no load it would win every
  // route at once and be flooded with cold prefills. Instead its share of
  // this replica's routes is capped by a weight growing linearly from 0 to 1
  // over this period (ListMembers' ramp_weight). 10 s: ten heartbeats, long
  // enough for its worker to re-map the new pool (one check interval) and
  // for its first routes' blocks to be indexed, short against an outage.
  // 0 = off (a rejoined daemon is routed like any other). >= 0.
  absl::Duration rejoin_ramp = absl::Seconds(10);
  // Generate through the coordinator (generate_proxy.h): routes tried per
  // call. A worker that fails with UNAVAILABLE (its daemon died or
  // restarted, the worker is going away) is not an answer: the call is
  // regenerated from the prompt on another route (the failed daemon
  // excluded), the tokens already streamed checked, not resent. 3: one dead
  // daemon plus one more failure before the client sees the error; a
  // regeneration costs a whole prefill, so the bound stays small. >= 1
  // (1 = no retry).
  int generate_attempts = 3;
  // Generate through the coordinator: the most bytes of worker messages one
  // proxied call queues for its client (the sum of their serialized sizes).
  // A client that reads slower than its worker generates — or stops reading
  // — would otherwise make the coordinator hold its whole generation (with
  // return_logits on a 128k vocabulary, ~0.5 MiB a token). Past the bound
  // the call stops reading from the worker (backpressure, not an error):
  // HTTP/2 flow control then holds back that one stream, the worker's other
  // streams on the shared channel flow on, and reading resumes once the
  // client has drained the queue to half the bound. A call holds at most the
  // bound plus one worker message (and gRPC's per-stream receive window).
  // 8 MiB: 16 tokens of 128k-vocabulary logits, or hundreds of thousands of
  // plain tokens (~10-20 bytes a message): slack enough for a client's read
  // jitter, while 1000 stalled clients cost 8 GiB rather than their whole
  // generations. > 0.
  int64_t proxy_max_buffered_bytes = int64_t{8} << 20;

  // Routing (cachecore/router.h documents each field and its default).
  RouterOptions router;
  // The event-fed block index (cachecore/block_location_index.h).
  BlockLocationIndexOptions index;

  // The cluster's model shape. Unset (default): the first daemon that
  // registers fixes it (until the last daemon leaves); set: every daemon must
  // match it. A daemon whose shape differs gets FAILED_PRECONDITION.
  std::optional<ModelConfig> expected_model;

  // WatchEvents reconnect backoff: the first retry after this long, doubling
  // up to watch_backoff_max. 100 ms / 5 s: a restarting daemon is picked up
  // within a fraction of a second, a dead one costs one connect attempt per
  // 5 s until its member times out. > 0, initial <= max.
  absl::Duration watch_backoff_initial = absl::Milliseconds(100);
  absl::Duration watch_backoff_max = absl::Seconds(5);
  // Longest wait for one WatchEvents connect attempt (a refused address fails
  // at once); then the backoff. 5 s: a healthy daemon on a local network
  // answers in milliseconds; an address that drops packets is retried
  // rather than waited on for gRPC's 20 s. > 0.
  absl::Duration watch_connect_timeout = absl::Seconds(5);

  // An agent job sticks to the daemon it was last routed to for this long
  // after its last route (while that daemon is alive; the job's last_step
  // ends it). 10 min: far above the daemon's longest agent pin TTL
  // (AgentPinOptions::max_ttl, 30 s), so a pinned job is never routed away
  // from its pins by an expired affinity, and a job idle longer than that
  // has lost its pins anyway. > 0.
  absl::Duration agent_affinity_ttl = absl::Minutes(10);
  // Most agent jobs remembered; beyond it the affinity expiring soonest is
  // dropped. 256 Ki jobs: far more than run at once on 64 daemons; each
  // entry keeps its job id (<= 128 bytes, held in the map and the expiry
  // order) and its daemon's id, ~200 bytes for 32-byte ids and ~600 at the
  // limits, so 50–150 MiB worst case. >= 1.
  int64_t max_agent_jobs = int64_t{1} << 18;

  // Registered members (daemons + workers). 1024: 16 times the design point
  // of 64 GPUs with a worker each; bounds the registry's memory and the cost
  // of building a route's candidate list. In [1, index.max_members].
  int max_members = 1024;
  // Longest context a Route may carry (token_ids, or num_tokens with
  // block_hashes). 1M tokens, the daemon's max_context_tokens. >= 1.
  int64_t max_route_tokens = int64_t{1} << 20;
  // Largest gRPC message accepted and sent (bytes), also used for the event
  // streams. 64 MiB holds a 1M-token Route and matches the daemon. > 0.
  int max_message_bytes = 64 << 20;
  // Routes remembered for ReportTtft (the oldest are forgotten first).
  // 65536: minutes of routes at hundreds of requests per second, ~3 MiB. >= 1.
  int64_t route_history = 65536;

  // SIGTERM: in-flight RPCs get this long to finish before being cancelled.
  // 20 s, the worker's: the Coordinator RPCs take microseconds, but a
  // proxied Generate stream lasts as long as its generation (a few hundred
  // tokens at a 50 ms TPOT finish), and a replica still exits inside
  // Kubernetes' default 30 s termination grace period. Shutdown waits only
  // as long as some RPC is in flight. >= 0.
  absl::Duration shutdown_grace = absl::Seconds(20);

  // Transport security of the gRPC server (Coordinator service and Generate
  // proxy) and of the channels to daemons (KV event streams) and workers
  // (proxied Generate): mutual TLS or plaintext
  // (services/common/transport_security.h). With TLS, security.trusted_peers
  // lists the components (daemons, workers): only they may Register,
  // Heartbeat and Deregister (PERMISSION_DENIED otherwise), and every other
  // peer's Route and Generate run under a salt derived from its identity
  // (services/common/tenant_salt.h); the list is then required. Default: the
  // library's (plaintext); the binary requires an explicit choice.
  TransportSecurityOptions security;
  // Generate and Route requests per second per client (services/common/
  // client_rate_limiter.h; the client is its certificate identity with TLS,
  // else its IP; security.trusted_peers are exempt): --client-rate-limit
  // (default 0 = no limit: the right rate is the deployment's) and
  // --client-rate-burst (default 0 = two seconds' worth).
  ClientRateLimitOptions client_rate_limit;

  // Tests only: an injected clock for heartbeats, member expiry and agent
  // affinity (must outlive the coordinator). nullptr = the real clock.
  Clock* clock = nullptr;

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_COORDINATOR_OPTIONS_H_

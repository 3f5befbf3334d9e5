// RouteLog: the routes a coordinator remembers so that ReportTtft can
// compare the TTFT a request got with the one predicted for it.
//
// Add() draws a random, non-zero 64-bit route id (not guessable from
// another route's, unique among the remembered routes) and remembers the
// route; at capacity the oldest route is forgotten. Take() returns a route
// and forgets it (a route is reported at most once, so a retried report
// cannot count twice).
//
// Bounded memory: `capacity` routes (~50 bytes each plus the daemon id).
// Thread-safety: thread-safe (one mutex; O(1) per call).
#ifndef ASYMCACHE_SERVICES_COORDINATOR_ROUTE_LOG_H_
#define ASYMCACHE_SERVICES_COORDINATOR_ROUTE_LOG_H_

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

namespace asymcache {

struct RouteRecord {
  double predicted_ttft_s = 0;
  std::string daemon_id;  // the prefill daemon
};

class RouteLog {
 public:
  // Precondition: capacity >= 1.
  explicit RouteLog(int64_t capacity);
  RouteLog(const RouteLog&) = delete;
  RouteLog& operator=(const RouteLog&) = delete;

  // Remembers a route; returns its id (never 0).
  uint64_t Add(RouteRecord record) ABSL_LOCKS_EXCLUDED(mu_);
  // The route with this id, forgotten by the call; nullopt when unknown
  // (never issued, already taken, or forgotten at capacity).
  std::optional<RouteRecord> Take(uint64_t route_id) ABSL_LOCKS_EXCLUDED(mu_);
  int64_t size() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const int64_t capacity_;
  mutable absl::Mutex mu_;
  absl::BitGen random_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, RouteRecord> routes_ ABSL_GUARDED_BY(mu_);
  // Ids in issue order; may hold ids already taken (skipped when evicting).
  std::deque<uint64_t> order_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_ROUTE_LOG_H_

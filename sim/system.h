// System: what a user picks between — an eviction policy plus a chunking
// scheduler (plus whether the cache is reused at all).
//
// Named systems (`--system`):
//   vllm                  lru-tail    + fixed budget   (vLLM automatic prefix caching + chunked prefill)
//   pensieve              front-first + fixed budget   (Pensieve: leading blocks first, non-contiguous reuse)
//   asymcache             asym        + adaptive budget, least-remaining prefill first (ours)
//   asym-fixed            asym        + fixed budget   (ablation: eviction lever only)
//   front-first-adaptive  front-first + adaptive       (ablation: chunking lever only)
//   lru-fixed             lru         + fixed budget   (ablation: plain LRU with non-contiguous reuse)
//   none                  lru         + fixed budget, no reuse (a fresh salt per request: nothing ever hits)
//   asymcache-arrival     asym        + adaptive, arrival order (ablation: the prefill-order lever)
// Every system but asymcache serves prefills in arrival order (FCFS, as vLLM
// and Pensieve do); asymcache serves the fewest remaining prefill tokens
// first (ChunkSchedulerOptions::PrefillOrder::kLeastRemaining).
// `all` expands to all eight in this order. A fixed-budget system takes an
// explicit budget with a suffix, e.g. `vllm:512`, `pensieve:8192`; without one
// it uses the default budget given to ParseSystems (the `--budget` flag). Any
// system takes a prefill-order suffix last, `@arrival` or `@least-remaining`,
// e.g. `asym-fixed@least-remaining`, `pensieve:4096@least-remaining`: the
// named system with that order (reported under the name as given).
//
// Contract: plain values; thread-safe as values.
#ifndef ASYMCACHE_SIM_SYSTEM_H_
#define ASYMCACHE_SIM_SYSTEM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "cachecore/chunk_scheduler.h"

namespace asymcache {

struct SystemSpec {
  std::string name;            // as reported: "vllm", "vllm:512", "asymcache", ...
  std::string base;            // the named system without a budget suffix
  std::string policy;          // MakeEvictionPolicy name
  bool adaptive_chunking = false;
  int64_t fixed_budget_tokens = 2048;  // used when !adaptive_chunking
  bool reuse = true;           // false: `none` (every request gets a fresh salt)
  // Prefill order: fewest remaining tokens first (asymcache) or arrival (FCFS).
  bool least_remaining_first = false;
};

// The spec's prefill order as the chunk scheduler takes it (and, through
// PrefillOrderName, as flags and files name it).
ChunkSchedulerOptions::PrefillOrder PrefillOrderOf(const SystemSpec& system);

// The eight base names, in report order.
std::vector<std::string> SystemNames();

// Parses a comma-separated list of names (`all` allowed, `name:N` budget
// suffix for fixed-budget systems, `@order` suffix for any). Duplicates are
// dropped (first wins). INVALID_ARGUMENT for unknown names, a budget suffix on
// an adaptive system, any suffix on `all`, an order other than arrival or
// least-remaining, or a budget that is not a positive multiple of
// `tile_tokens`.
absl::StatusOr<std::vector<SystemSpec>> ParseSystems(absl::string_view list,
                                                     int64_t default_budget_tokens,
                                                     int64_t tile_tokens = 16);

}  // namespace asymcache

#endif  // ASYMCACHE_SIM_SYSTEM_H_

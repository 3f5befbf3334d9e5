// The policy factory: maps names to the implementations in *_policy.h.
#include "cachecore/eviction_policy.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cachecore/asym_policy.h"
#include "cachecore/front_first_policy.h"
#include "cachecore/lfu_policy.h"
#include "cachecore/lru_policy.h"
#include "cachecore/lru_tail_policy.h"

namespace asymcache {

std::vector<std::string> EvictionPolicyNames() {
  return {"lru", "lfu", "lru-tail", "front-first", "asym"};
}

absl::StatusOr<std::unique_ptr<EvictionPolicy>> MakeEvictionPolicy(
    absl::string_view name, const CostModel* cost, const EvictionPolicyOptions& options) {
  if (options.shared_rate_half_life <= absl::ZeroDuration() ||
      options.shared_rate_half_life == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        "EvictionPolicyOptions.shared_rate_half_life: must be positive and finite");
  }
  if (options.sample_sequences < 0) {
    return absl::InvalidArgumentError(
        "EvictionPolicyOptions.sample_sequences: must be >= 0 (0 = the policy's default)");
  }
  if (options.exact_victim_search && options.sample_sequences > 0) {
    return absl::InvalidArgumentError(
        "EvictionPolicyOptions: exact_victim_search and sample_sequences > 0 contradict");
  }
  if (name == "lru") return std::unique_ptr<EvictionPolicy>(new LruPolicy());
  if (name == "lfu") return std::unique_ptr<EvictionPolicy>(new LfuPolicy());
  if (name == "lru-tail") return std::unique_ptr<EvictionPolicy>(new LruTailPolicy());
  if (name == "front-first" || name == "asym") {
    if (cost == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("eviction policy \"", name, "\" needs a CostModel (got null)"));
    }
    const AsymPolicyOptions search =
        options.exact_victim_search ? AsymPolicyOptions::Exact() : AsymPolicyOptions{};
    if (name == "asym") {
      return std::unique_ptr<EvictionPolicy>(new AsymPolicy(cost, options, search));
    }
    return std::unique_ptr<EvictionPolicy>(new FrontFirstPolicy(cost, options, search));
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown eviction policy \"", name,
                                                 "\"; known: ",
                                                 absl::StrJoin(EvictionPolicyNames(), ", ")));
}

}  // namespace asymcache

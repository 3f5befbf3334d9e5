// FrontFirstPolicy ("front-first"): Pensieve's retention value (§4.3.1 of the
// paper): value = Cost(position) / idle time of the block's conversation,
// lowest first, so the leading (cheapest) blocks of the longest-idle
// conversation go first, and reuse of non-contiguous contexts is allowed.
//
// It runs on AsymPolicy's engine (asym_policy.h) with the AsymCache refinements
// off: a block belongs to the last sequence that accessed it (Pensieve tracks
// per conversation; no shared-block rate), Cost = CostModel::RebuildCost with
// σ = 1, no Δseg term, and a fixed load of AsymPolicy::kDefaultLoadTokens tokens
// per step (Pensieve profiles its cost offline; SetLoadHint is ignored). Values
// are evaluated at PopVictim(now) (idle times grow), never frozen; the victim is
// the exact minimum, found through AsymPolicy's lower-bound heaps.
//
// Contract: as AsymPolicy (not thread-safe; `cost` must outlive the policy).
#ifndef ASYMCACHE_CACHECORE_FRONT_FIRST_POLICY_H_
#define ASYMCACHE_CACHECORE_FRONT_FIRST_POLICY_H_

#include "cachecore/asym_policy.h"

namespace asymcache {

class FrontFirstPolicy final : public AsymPolicy {
 public:
  // asym_options: as for AsymPolicy (search knobs only); MakeEvictionPolicy
  // uses the defaults.
  FrontFirstPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
                   const AsymPolicyOptions& asym_options = {});
};

}  // namespace asymcache

#endif  // ASYMCACHE_CACHECORE_FRONT_FIRST_POLICY_H_

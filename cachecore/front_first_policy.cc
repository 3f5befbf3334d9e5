#include "cachecore/front_first_policy.h"

namespace asymcache {

FrontFirstPolicy::FrontFirstPolicy(const CostModel* cost, const EvictionPolicyOptions& options,
                                   const AsymPolicyOptions& asym_options)
    : AsymPolicy(cost, options, asym_options,
                 Mode{.name = "front-first",
                      .shared_rates = false,
                      .segment_aware = false,
                      .follow_load = false}) {}

}  // namespace asymcache

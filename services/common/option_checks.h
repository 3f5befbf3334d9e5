// Checks that the service binaries' Options::Validate() share (daemon,
// coordinator, worker; STYLE.md §7): one wording for a bad flag value, and
// the rules of the fields every cluster member has (coordinator addresses,
// member ids).
//
// Errors: INVALID_ARGUMENT "--FIELD WANT, got VALUE", naming the flag.
// Contract: pure functions; thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_OPTION_CHECKS_H_
#define ASYMCACHE_SERVICES_COMMON_OPTION_CHECKS_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace asymcache {

// INVALID_ARGUMENT "--FIELD WANT, got VALUE" (VALUE as absl::StrCat prints it).
template <typename Value>
absl::Status FlagValueError(absl::string_view field, const Value& value, absl::string_view want) {
  return absl::InvalidArgumentError(absl::StrCat("--", field, " ", want, ", got ", value));
}

// OK for a positive, finite duration; else "--FIELD must be positive and
// finite, got D".
absl::Status CheckPositiveFinite(absl::string_view field, absl::Duration d);

// coordinator.proto RegisterRequest.member_id: [A-Za-z0-9._:-]{1,128}.
bool IsValidMemberId(absl::string_view id);

// OK for an empty id (a default is derived later) or a valid one; else
// "--FIELD must match [A-Za-z0-9._:-]{1,128}, got 'ID'".
absl::Status CheckMemberIdFlag(absl::string_view field, absl::string_view id);

// --coordinators: no empty entry, no address twice.
absl::Status CheckCoordinatorAddresses(const std::vector<std::string>& coordinators);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_OPTION_CHECKS_H_

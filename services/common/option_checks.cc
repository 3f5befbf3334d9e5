#include "services/common/option_checks.h"

#include <set>

#include "absl/strings/ascii.h"

namespace asymcache {

absl::Status CheckPositiveFinite(absl::string_view field, absl::Duration d) {
  if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
    return FlagValueError(field, absl::FormatDuration(d), "must be positive and finite");
  }
  return absl::OkStatus();
}

bool IsValidMemberId(absl::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return false;
    }
  }
  return true;
}

absl::Status CheckMemberIdFlag(absl::string_view field, absl::string_view id) {
  if (id.empty() || IsValidMemberId(id)) return absl::OkStatus();
  return FlagValueError(field, absl::StrCat("'", id, "'"), "must match [A-Za-z0-9._:-]{1,128}");
}

absl::Status CheckCoordinatorAddresses(const std::vector<std::string>& coordinators) {
  std::set<absl::string_view> seen;
  for (const std::string& c : coordinators) {
    if (c.empty()) {
      return FlagValueError("coordinators", "an empty entry", "must be host:port addresses");
    }
    if (!seen.insert(c).second) {
      return FlagValueError("coordinators", absl::StrCat("'", c, "' twice"),
                            "must not repeat an address");
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache

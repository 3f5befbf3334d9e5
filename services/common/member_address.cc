#include "services/common/member_address.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace asymcache {

std::string HostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

std::string AdvertiseAddress(absl::string_view advertise_address, absl::string_view listen,
                             int port) {
  if (!advertise_address.empty()) return std::string(advertise_address);
  absl::string_view host = listen;
  if (const size_t colon = host.rfind(':'); colon != absl::string_view::npos) {
    host = host.substr(0, colon);
  }
  if (host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]" || host == "*") {
    return absl::StrCat(HostName(), ":", port);
  }
  return absl::StrCat(host, ":", port);
}

std::string MemberIdOrDefault(absl::string_view member_id, int port) {
  if (!member_id.empty()) return std::string(member_id);
  return absl::StrCat(HostName(), ":", port);
}

}  // namespace asymcache

// How a service that joins the cluster (a cache daemon, a worker) names
// itself to the coordinators once its gRPC server is bound: the address
// others reach it at and its member id, each from its flag or, when that is
// empty, derived from the bound port and the host name.
//
// Contract: free functions; HostName() reads gethostname(2), the others are
// pure. Thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_MEMBER_ADDRESS_H_
#define ASYMCACHE_SERVICES_COMMON_MEMBER_ADDRESS_H_

#include <string>

#include "absl/strings/string_view.h"

namespace asymcache {

// This machine's host name; "localhost" when it has none.
std::string HostName();

// `advertise_address` (--advertise-address) when set; else `listen` (HOST:PORT)
// with the bound `port`, a wildcard or empty host (0.0.0.0, ::, [::], *)
// replaced by HostName().
std::string AdvertiseAddress(absl::string_view advertise_address, absl::string_view listen,
                             int port);

// `member_id` (--member-id) when set; else "HOSTNAME:PORT" with the bound port.
std::string MemberIdOrDefault(absl::string_view member_id, int port);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_MEMBER_ADDRESS_H_

// absl::Status <-> grpc::Status. absl and gRPC share code numbers, so the
// mapping is one to one and keeps the message (STYLE.md §6). Thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_GRPC_STATUS_H_
#define ASYMCACHE_SERVICES_COMMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace asymcache {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_GRPC_STATUS_H_

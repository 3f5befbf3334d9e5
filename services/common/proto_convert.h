// Conversions between asymcache.v1 protobuf messages and cachecore types.
//
// NOTE (client helper): this header was accidentally overwritten and has been
// reconstructed from proto_convert.cc — the declarations below are exactly the
// functions that file defines. Lead: please check it against your original.
//
// Conventions: ToProto(core, &message) fills the message; FromProto(message)
// returns the core value, as StatusOr where the message can be invalid
// (INVALID_ARGUMENT naming the field).
//
// Contract: pure functions, thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_PROTO_CONVERT_H_
#define ASYMCACHE_SERVICES_COMMON_PROTO_CONVERT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "asymcache/v1/cache_daemon.pb.h"
#include "asymcache/v1/types.pb.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"
#include "cachecore/step_plan.h"
#include "cachecore/types.h"

namespace asymcache {

// Block hashes.
BlockHash FromProto(const v1::BlockHash& hash);
void ToProto(const BlockHash& hash, v1::BlockHash* out);
std::vector<BlockHash> FromProto(const google::protobuf::RepeatedPtrField<v1::BlockHash>& hashes);

// Model shape. FromProto validates the shape (INVALID_ARGUMENT prefixed with
// `what`, e.g. "expected_model").
void ToProto(const ModelConfig& model, v1::ModelShape* out);
absl::StatusOr<ModelConfig> FromProto(const v1::ModelShape& shape, absl::string_view what);
// OK when `shape` is empty (not given) or matches `model` in every field that
// fixes a block (layers, heads, head_dim, dtype_bytes, block_tokens);
// FAILED_PRECONDITION naming the first differing field otherwise.
absl::Status CheckSameShape(const v1::ModelShape& shape, const ModelConfig& model,
                            absl::string_view what);

// Calibration.
void ToProto(const CalibrationParams& params, v1::Calibration* out);
CalibrationParams FromProto(const v1::Calibration& calibration);

// Step plans. Page hashes and allocated block ids are not on the wire
// (allocated = page_ids[allocated_pages[i]]); FromProto leaves hashes empty and
// checks only the array geometry.
void ToProto(const StepPlan& plan, int64_t contiguous_hit_tokens, v1::StepPlan* out);
absl::StatusOr<StepPlan> FromProto(const v1::StepPlan& in);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_PROTO_CONVERT_H_

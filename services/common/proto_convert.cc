#include "services/common/proto_convert.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace asymcache {

BlockHash FromProto(const v1::BlockHash& hash) {
  BlockHash out;
  out.lo = hash.lo();
  out.hi = hash.hi();
  return out;
}

void ToProto(const BlockHash& hash, v1::BlockHash* out) {
  out->set_lo(hash.lo);
  out->set_hi(hash.hi);
}

std::vector<BlockHash> FromProto(const google::protobuf::RepeatedPtrField<v1::BlockHash>& hashes) {
  std::vector<BlockHash> out;
  out.reserve(hashes.size());
  for (const v1::BlockHash& h : hashes) out.push_back(FromProto(h));
  return out;
}

void ToProto(const ModelConfig& model, v1::ModelShape* out) {
  out->set_name(model.name);
  out->set_num_layers(model.num_layers);
  out->set_num_q_heads(model.num_q_heads);
  out->set_num_kv_heads(model.num_kv_heads);
  out->set_head_dim(model.head_dim);
  out->set_dtype_bytes(model.dtype_bytes);
  out->set_block_tokens(model.block_tokens);
  out->set_hidden_size(model.hidden_size);
  out->set_intermediate_size(model.intermediate_size);
  out->set_vocab_size(model.vocab_size);
}

absl::StatusOr<ModelConfig> FromProto(const v1::ModelShape& shape, absl::string_view what) {
  ModelConfig model;
  model.name = shape.name();
  model.num_layers = shape.num_layers();
  model.num_q_heads = shape.num_q_heads();
  model.num_kv_heads = shape.num_kv_heads();
  model.head_dim = shape.head_dim();
  model.dtype_bytes = shape.dtype_bytes();
  model.block_tokens = shape.block_tokens();
  model.hidden_size = shape.hidden_size();
  model.intermediate_size = shape.intermediate_size();
  model.vocab_size = shape.vocab_size();
  if (absl::Status s = model.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", s.message()));
  }
  return model;
}

absl::Status CheckSameShape(const v1::ModelShape& shape, const ModelConfig& model,
                            absl::string_view what) {
  if (shape.ByteSizeLong() == 0) return absl::OkStatus();
  auto differs = [&](absl::string_view field, int64_t got, int64_t want) {
    return absl::FailedPreconditionError(absl::StrCat(what, ".", field, " is ", got,
                                                      " but this daemon serves ", model.name,
                                                      " with ", field, " ", want));
  };
  if (shape.num_layers() != model.num_layers)
    return differs("num_layers", shape.num_layers(), model.num_layers);
  if (shape.num_q_heads() != model.num_q_heads)
    return differs("num_q_heads", shape.num_q_heads(), model.num_q_heads);
  if (shape.num_kv_heads() != model.num_kv_heads)
    return differs("num_kv_heads", shape.num_kv_heads(), model.num_kv_heads);
  if (shape.head_dim() != model.head_dim) return differs("head_dim", shape.head_dim(), model.head_dim);
  if (shape.dtype_bytes() != model.dtype_bytes)
    return differs("dtype_bytes", shape.dtype_bytes(), model.dtype_bytes);
  if (shape.block_tokens() != model.block_tokens)
    return differs("block_tokens", shape.block_tokens(), model.block_tokens);
  return absl::OkStatus();
}

void ToProto(const CalibrationParams& params, v1::Calibration* out) {
  out->set_device(params.device);
  out->set_source(params.source);
  out->set_attn_flops_per_s(params.attn_flops_per_s);
  out->set_attn_kv_bytes_per_s(params.attn_kv_bytes_per_s);
  out->set_segment_overhead_s(params.segment_overhead_s);
  out->set_step_overhead_s(params.step_overhead_s);
  out->set_num_sms(params.num_sms);
  out->clear_linear_step();
  for (const auto& [tokens, seconds] : params.linear_step_s) {
    v1::Calibration::LinearPoint* p = out->add_linear_step();
    p->set_tokens(tokens);
    p->set_seconds(seconds);
  }
}

CalibrationParams FromProto(const v1::Calibration& calibration) {
  CalibrationParams params;
  params.device = calibration.device();
  params.source = calibration.source();
  params.attn_flops_per_s = calibration.attn_flops_per_s();
  params.attn_kv_bytes_per_s = calibration.attn_kv_bytes_per_s();
  params.segment_overhead_s = calibration.segment_overhead_s();
  params.step_overhead_s = calibration.step_overhead_s();
  params.num_sms = calibration.num_sms();
  for (const v1::Calibration::LinearPoint& p : calibration.linear_step()) {
    params.linear_step_s.emplace_back(p.tokens(), p.seconds());
  }
  return params;
}

namespace {

v1::Segment::Kind ToProto(Segment::Kind kind) {
  switch (kind) {
    case Segment::Kind::kResident:
      return v1::Segment::RESIDENT;
    case Segment::Kind::kHole:
      return v1::Segment::HOLE;
    case Segment::Kind::kTail:
      return v1::Segment::TAIL;
  }
  return v1::Segment::RESIDENT;
}

absl::StatusOr<Segment::Kind> FromProto(v1::Segment::Kind kind) {
  switch (kind) {
    case v1::Segment::RESIDENT:
      return Segment::Kind::kResident;
    case v1::Segment::HOLE:
      return Segment::Kind::kHole;
    case v1::Segment::TAIL:
      return Segment::Kind::kTail;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown segment kind ", static_cast<int>(kind)));
  }
}

}  // namespace

void ToProto(const StepPlan& plan, int64_t contiguous_hit_tokens, v1::StepPlan* out) {
  out->set_sequence_id(plan.sequence);
  out->set_context_tokens(plan.context_tokens);
  out->set_block_tokens(plan.block_tokens);
  out->mutable_segments()->Reserve(static_cast<int>(plan.segments.size()));
  for (const Segment& s : plan.segments) {
    v1::Segment* seg = out->add_segments();
    seg->set_begin(s.begin);
    seg->set_end(s.end);
    seg->set_kind(ToProto(s.kind));
  }
  out->mutable_page_ids()->Assign(plan.page_ids.begin(), plan.page_ids.end());
  out->mutable_page_positions()->Assign(plan.page_positions.begin(), plan.page_positions.end());
  out->mutable_page_lengths()->Assign(plan.page_lengths.begin(), plan.page_lengths.end());
  out->mutable_page_resident()->Reserve(static_cast<int>(plan.page_resident.size()));
  for (uint8_t r : plan.page_resident) out->add_page_resident(r != 0);
  out->mutable_query_positions()->Assign(plan.query_positions.begin(), plan.query_positions.end());
  out->mutable_allocated_pages()->Assign(plan.allocated_pages.begin(), plan.allocated_pages.end());
  out->set_hit_tokens(plan.hit_tokens);
  out->set_rebuild_tokens(plan.rebuild_tokens);
  out->set_new_tokens(plan.new_tokens);
  out->set_contiguous_hit_tokens(contiguous_hit_tokens);
}

absl::StatusOr<StepPlan> FromProto(const v1::StepPlan& in) {
  const int pages = in.page_ids_size();
  if (in.page_positions_size() != pages || in.page_lengths_size() != pages ||
      in.page_resident_size() != pages) {
    return absl::InvalidArgumentError(absl::StrCat(
        "StepPlan: page arrays disagree in length (page_ids ", pages, ", page_positions ",
        in.page_positions_size(), ", page_lengths ", in.page_lengths_size(), ", page_resident ",
        in.page_resident_size(), ")"));
  }
  StepPlan plan;
  plan.sequence = in.sequence_id();
  plan.context_tokens = in.context_tokens();
  plan.block_tokens = in.block_tokens();
  for (const v1::Segment& s : in.segments()) {
    absl::StatusOr<Segment::Kind> kind = FromProto(s.kind());
    if (!kind.ok()) return kind.status();
    plan.segments.push_back(Segment{s.begin(), s.end(), *kind});
  }
  plan.page_ids.assign(in.page_ids().begin(), in.page_ids().end());
  plan.page_positions.assign(in.page_positions().begin(), in.page_positions().end());
  plan.page_lengths.assign(in.page_lengths().begin(), in.page_lengths().end());
  for (bool r : in.page_resident()) plan.page_resident.push_back(r ? 1 : 0);
  plan.query_positions.assign(in.query_positions().begin(), in.query_positions().end());
  plan.allocated_pages.assign(in.allocated_pages().begin(), in.allocated_pages().end());
  for (int32_t page : plan.allocated_pages) {
    if (page < 0 || page >= pages) {
      return absl::InvalidArgumentError(
          absl::StrCat("StepPlan: allocated page index ", page, " outside [0, ", pages, ")"));
    }
    plan.allocated.push_back(plan.page_ids[page]);
  }
  plan.hit_tokens = in.hit_tokens();
  plan.rebuild_tokens = in.rebuild_tokens();
  plan.new_tokens = in.new_tokens();
  return plan;
}

}  // namespace asymcache

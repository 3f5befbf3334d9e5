#include "services/common/proto_convert.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/common/grpc_status.h"

namespace asymcache {
namespace {

using ::testing::HasSubstr;

StepPlan SamplePlan() {
  StepPlan p;
  p.sequence = 9;
  p.context_tokens = 40;
  p.block_tokens = 16;
  p.segments = {{0, 16, Segment::Kind::kResident}, {16, 32, Segment::Kind::kHole},
                {32, 40, Segment::Kind::kTail}};
  p.page_ids = {4, 7, 2};
  p.page_positions = {0, 16, 32};
  p.page_lengths = {16, 16, 8};
  p.page_resident = {1, 0, 0};
  for (int i = 16; i < 40; ++i) p.query_positions.push_back(i);
  p.allocated = {7, 2};
  p.allocated_pages = {1, 2};
  p.hit_tokens = 16;
  p.rebuild_tokens = 16;
  p.new_tokens = 8;
  return p;
}

TEST(ProtoConvert, StepPlanRoundTrips) {
  const StepPlan plan = SamplePlan();
  v1::StepPlan wire;
  ToProto(plan, 16, &wire);
  EXPECT_EQ(wire.contiguous_hit_tokens(), 16);
  EXPECT_EQ(wire.segments(1).kind(), v1::Segment::HOLE);
  absl::StatusOr<StepPlan> back = FromProto(wire);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->segments, plan.segments);
  EXPECT_EQ(back->page_ids, plan.page_ids);
  EXPECT_EQ(back->page_resident, plan.page_resident);
  EXPECT_EQ(back->query_positions, plan.query_positions);
  EXPECT_EQ(back->allocated, plan.allocated);
  EXPECT_EQ(back->new_tokens, 8);
}

TEST(ProtoConvert, MalformedPlansAreInvalid) {
  v1::StepPlan wire;
  ToProto(SamplePlan(), 16, &wire);
  v1::StepPlan short_lengths = wire;
  short_lengths.mutable_page_lengths()->RemoveLast();
  EXPECT_THAT(FromProto(short_lengths).status().message(), HasSubstr("disagree in length"));
  v1::StepPlan bad_page = wire;
  bad_page.set_allocated_pages(0, 3);
  EXPECT_THAT(FromProto(bad_page).status().message(), HasSubstr("outside [0, 3)"));
  v1::StepPlan bad_kind = wire;
  bad_kind.mutable_segments(0)->set_kind(static_cast<v1::Segment::Kind>(7));
  EXPECT_EQ(FromProto(bad_kind).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProtoConvert, ShapesCompareByKvLayout) {
  const ModelConfig model = *ModelConfig::Named("llama-3-8b");
  v1::ModelShape shape;
  EXPECT_TRUE(CheckSameShape(shape, model, "x").ok());  // unset = no expectation
  ToProto(model, &shape);
  EXPECT_TRUE(CheckSameShape(shape, model, "x").ok());
  shape.set_name("another label");  // the label is not the layout
  EXPECT_TRUE(CheckSameShape(shape, model, "x").ok());
  shape.set_block_tokens(32);
  const absl::Status s = CheckSameShape(shape, model, "req.model");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("req.model.block_tokens is 32"));
  absl::StatusOr<ModelConfig> back = FromProto(shape, "shape");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->block_tokens, 32);
  shape.set_num_kv_heads(3);  // does not divide 32
  EXPECT_THAT(FromProto(shape, "shape").status().message(), HasSubstr("shape: "));
}

TEST(ProtoConvert, CalibrationAndHashesRoundTrip) {
  CalibrationParams p = CostModel::DefaultH100Llama3_8B();
  p.num_sms = 132;
  v1::Calibration wire;
  ToProto(p, &wire);
  const CalibrationParams back = FromProto(wire);
  EXPECT_EQ(back.device, p.device);
  EXPECT_EQ(back.attn_flops_per_s, p.attn_flops_per_s);
  EXPECT_EQ(back.num_sms, 132);
  EXPECT_EQ(back.linear_step_s, p.linear_step_s);
  const BlockHash h{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  v1::BlockHash wh;
  ToProto(h, &wh);
  EXPECT_EQ(FromProto(wh), h);
}

TEST(GrpcStatus, CodesAndMessagesMapOneToOne) {
  for (int code = 0; code <= 16; ++code) {
    const absl::Status s(static_cast<absl::StatusCode>(code), code == 0 ? "" : "why");
    const grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(FromGrpcStatus(g), s);
  }
}

}  // namespace
}  // namespace asymcache

// SequencePages: pending runs, valid rows, copies from the previous lease,
// in-place decode extension, the rollover into ExtendLease's next page and
// the pages a step's queries may see.
#include "services/worker/sequence_pages.h"

#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace asymcache::worker {
namespace {

using Runs = std::vector<std::pair<int64_t, int64_t>>;

// A plan of `context` tokens in 16-token pages: pages listed in `resident`
// are resident, the others allocated; block ids are base + page index.
StepPlan MakePlan(int64_t context, const std::vector<bool>& resident, int32_t base) {
  StepPlan plan;
  plan.context_tokens = context;
  plan.block_tokens = 16;
  const int64_t pages = (context + 15) / 16;
  for (int64_t k = 0; k < pages; ++k) {
    const int32_t length = static_cast<int32_t>(std::min<int64_t>(16, context - k * 16));
    plan.page_ids.push_back(base + static_cast<int32_t>(k));
    plan.page_positions.push_back(static_cast<int32_t>(k * 16));
    plan.page_lengths.push_back(length);
    const bool res = k < static_cast<int64_t>(resident.size()) && resident[k];
    plan.page_resident.push_back(res ? 1 : 0);
    if (!res) {
      for (int32_t i = 0; i < length; ++i) plan.query_positions.push_back(static_cast<int32_t>(k * 16 + i));
    }
  }
  return plan;
}

TEST(SequencePagesTest, PendingRunsFollowHolesAndTailAndShrinkAsComputed) {
  SequencePages pages(MakePlan(70, {true, false, true, false, false}, 100));
  EXPECT_EQ(pages.pending(), (Runs{{16, 32}, {48, 70}}));
  EXPECT_EQ(pages.pending_tokens(), 38);
  pages.MarkComputed(16, 24);
  EXPECT_EQ(pages.pending(), (Runs{{24, 32}, {48, 70}}));
  pages.MarkComputed(24, 32);
  pages.MarkComputed(48, 60);
  EXPECT_EQ(pages.pending(), (Runs{{60, 70}}));
  EXPECT_FALSE(pages.done());
  pages.MarkComputed(60, 70);
  EXPECT_TRUE(pages.done());
  EXPECT_EQ(pages.Slot(65), (std::pair<int32_t, int32_t>{104, 1}));
}

TEST(SequencePagesTest, VisiblePagesStopAtTheLargestQueryPosition) {
  SequencePages pages(MakePlan(70, {true, true}, 7));
  msa::BatchTablesStorage tables;
  pages.AppendVisiblePages(40, &tables);
  EXPECT_EQ(tables.kv_page_ids, (std::vector<int32_t>{7, 8, 9}));
  EXPECT_EQ(tables.kv_page_pos, (std::vector<int32_t>{0, 16, 32}));
  EXPECT_EQ(tables.kv_page_len, (std::vector<int32_t>{16, 16, 9}));
  EXPECT_EQ(tables.kv_indptr, (std::vector<int32_t>{0, 3}));
}

TEST(SequencePagesTest, PrivatePartialPageExtendsInPlaceUntilFull) {
  SequencePages pages(MakePlan(37, {true, true}, 0));
  pages.MarkComputed(32, 37);
  EXPECT_FALSE(pages.CanExtendInPlace());  // not private until the commit says so
  pages.set_last_page_private(true);
  for (int64_t position = 37; position < 48; ++position) {
    ASSERT_TRUE(pages.CanExtendInPlace()) << position;
    pages.ExtendInPlace();
    EXPECT_EQ(pages.pending(), (Runs{{position, position + 1}}));
    EXPECT_FALSE(pages.CanExtendInPlace());  // the new token is not computed yet
    pages.MarkComputed(position, position + 1);
  }
  EXPECT_EQ(pages.context_tokens(), 48);
  EXPECT_FALSE(pages.CanExtendInPlace());  // the page is full: plan the next one
}

TEST(SequencePagesTest, AFullPrivatePageRollsOverIntoTheNextBlock) {
  SequencePages pages(MakePlan(37, {true, true}, 0));
  pages.MarkComputed(32, 37);
  pages.set_last_page_private(true);
  EXPECT_FALSE(pages.PrivatePageIsFull());
  for (int64_t p = 37; p < 48; ++p) {
    pages.ExtendInPlace();
    EXPECT_FALSE(pages.PrivatePageIsFull()) << p;  // position p is not computed yet
    pages.MarkComputed(p, p + 1);
  }
  ASSERT_TRUE(pages.PrivatePageIsFull());
  pages.StartPrivatePage(90);  // ExtendLease's block for positions 48..63
  EXPECT_EQ(pages.context_tokens(), 49);
  EXPECT_EQ(pages.pending(), (Runs{{48, 49}}));
  EXPECT_EQ(pages.Slot(48), (std::pair<int32_t, int32_t>{90, 0}));
  EXPECT_EQ(pages.Slot(47), (std::pair<int32_t, int32_t>{2, 15}));
  EXPECT_FALSE(pages.PrivatePageIsFull());
  EXPECT_FALSE(pages.CanExtendInPlace());  // 48 is not computed yet
  pages.MarkComputed(48, 49);
  EXPECT_TRUE(pages.CanExtendInPlace());
  EXPECT_TRUE(pages.LastPageIsOwnPartial());
  msa::BatchTablesStorage tables;
  pages.AppendVisiblePages(48, &tables);
  EXPECT_EQ(tables.kv_page_ids, (std::vector<int32_t>{0, 1, 2, 90}));
  EXPECT_EQ(tables.kv_page_pos, (std::vector<int32_t>{0, 16, 32, 48}));
  EXPECT_EQ(tables.kv_page_len, (std::vector<int32_t>{16, 16, 16, 1}));
  // A later plan of the longer context copies the new page's rows, not the
  // sealed one's (its rows are resident wherever the plan finds them).
  SequencePages next(MakePlan(50, {true, true, true}, 200));
  const std::vector<SequencePages::RowCopy> copies = next.TakeCopiesFrom(pages);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src_block, 90);
  EXPECT_EQ(copies[0].rows, 1);
  EXPECT_EQ(next.pending(), (Runs{{49, 50}}));
}

TEST(SequencePagesTest, CopiesComeFromThePreviousLeasesComputedRows) {
  // Previous lease: 48 tokens, last page private and full (computed in place).
  SequencePages previous(MakePlan(37, {true, true}, 0));
  previous.MarkComputed(32, 37);
  previous.set_last_page_private(true);
  for (int64_t p = 37; p < 48; ++p) {
    previous.ExtendInPlace();
    previous.MarkComputed(p, p + 1);
  }
  // Next plan: 49 tokens; page 2 (the full one) and page 3 newly allocated.
  SequencePages next(MakePlan(49, {true, true}, 50));
  EXPECT_EQ(next.pending(), (Runs{{32, 49}}));
  const std::vector<SequencePages::RowCopy> copies = next.TakeCopiesFrom(previous);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].src_block, 2);
  EXPECT_EQ(copies[0].dst_block, 52);
  EXPECT_EQ(copies[0].rows, 16);
  EXPECT_EQ(copies[0].first_position, 32);
  EXPECT_EQ(next.pending(), (Runs{{48, 49}}));  // only the new token is computed
}

TEST(SequencePagesTest, NothingIsCopiedThatThePreviousLeaseDidNotCompute) {
  SequencePages previous(MakePlan(40, {true}, 0));
  previous.MarkComputed(16, 20);  // rows 0..3 of page 1 only
  SequencePages next(MakePlan(41, {true}, 60));
  const std::vector<SequencePages::RowCopy> copies = next.TakeCopiesFrom(previous);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0].rows, 4);
  EXPECT_EQ(next.pending(), (Runs{{20, 41}}));
}

}  // namespace
}  // namespace asymcache::worker

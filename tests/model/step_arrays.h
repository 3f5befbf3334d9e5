// StepArrays: the arrays one model step (model_backend.h ForwardBatch) spans
// over, filled sequence by sequence the way the worker's engine lays them
// out: a sequence's page list runs from position 0 to its last query (the
// last page cut there), its queries take their tokens and K/V slots from the
// sequence's token and page lists, and the sampled rows follow the query
// order. The CPU and CUDA backend tests build their steps with it, and so
// does bench/gpu/model_step_bench.cc.
//
// Contract: header-only, no GoogleTest; plain values (thread-compatible). A
// ForwardBatch from batch() borrows the arrays: keep the StepArrays alive and
// unchanged while it is used.
#ifndef ASYMCACHE_TESTS_MODEL_STEP_ARRAYS_H_
#define ASYMCACHE_TESTS_MODEL_STEP_ARRAYS_H_

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "absl/types/span.h"
#include "kernels/msa.h"
#include "model/model_backend.h"

namespace asymcache::model {

// Which of a sequence's query rows are sampled.
enum class SampleRows { kNone, kLast, kAll };

struct StepArrays {
  msa::BatchTablesStorage tables;
  std::vector<int32_t> token_ids;
  std::vector<int32_t> slot_page_ids;
  std::vector<int32_t> slot_offsets;
  std::vector<int32_t> sample_rows;
  std::vector<SamplingParams> sampling;

  // Appends one sequence's share of the step: queries at `positions`
  // (increasing, not empty) of the sequence whose tokens by position are
  // `tokens` and whose page b holds positions [b B, (b + 1) B) (`pages`,
  // covering the last query); `sample` picks the sampled rows, each with
  // `sampling`; !write_kv gives every query slot page -1 (the pool already
  // holds its rows).
  void Append(absl::Span<const int32_t> tokens, absl::Span<const int32_t> pages,
              absl::Span<const int32_t> positions, int32_t block_tokens,
              SampleRows sample = SampleRows::kLast, const SamplingParams& sampling_params = {},
              bool write_kv = true) {
    const int32_t end = positions.back() + 1;
    for (int32_t b = 0; b * block_tokens < end; ++b) {
      tables.kv_page_ids.push_back(pages[b]);
      tables.kv_page_pos.push_back(b * block_tokens);
      tables.kv_page_len.push_back(std::min(block_tokens, end - b * block_tokens));
    }
    tables.kv_indptr.push_back(static_cast<int32_t>(tables.kv_page_ids.size()));
    for (const int32_t p : positions) {
      tables.q_pos.push_back(p);
      token_ids.push_back(tokens[p]);
      slot_page_ids.push_back(write_kv ? pages[p / block_tokens] : -1);
      slot_offsets.push_back(p % block_tokens);
      const bool last = p + 1 == end;
      if (sample == SampleRows::kAll || (sample == SampleRows::kLast && last)) {
        sample_rows.push_back(static_cast<int32_t>(tables.q_pos.size()) - 1);
        sampling.push_back(sampling_params);
      }
    }
    tables.q_indptr.push_back(static_cast<int32_t>(tables.q_pos.size()));
  }

  ForwardBatch batch(bool want_logits = true) const {
    ForwardBatch b;
    b.token_ids = token_ids;
    b.tables = tables.view();
    b.slot_page_ids = slot_page_ids;
    b.slot_offsets = slot_offsets;
    b.sample_rows = sample_rows;
    b.sampling = sampling;
    b.want_logits = want_logits;
    return b;
  }
};

// Positions [begin, end) (empty when end <= begin).
inline std::vector<int32_t> Range(int32_t begin, int32_t end) {
  std::vector<int32_t> range(std::max(0, end - begin));
  std::iota(range.begin(), range.end(), begin);
  return range;
}

// `count` tokens uniform in [0, vocab).
inline std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int64_t vocab, int32_t count) {
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab) - 1);
  std::vector<int32_t> tokens(count);
  for (int32_t& t : tokens) t = token(rng);
  return tokens;
}

}  // namespace asymcache::model

#endif  // ASYMCACHE_TESTS_MODEL_STEP_ARRAYS_H_

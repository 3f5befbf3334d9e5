// Runs an MSA CUDA plan (kernels/msa_plan.h) on the CPU, in double, the way
// the CUDA kernels read it, for tests that check a plan's exactness without
// a GPU.
//
// What: reads everything the device would read from the plan's host
// workspace block (work items, merge groups, q_pos, page ids, page
// positions, per-page key offsets), never from the batch: for each item, each
// of its rows r < num_rows (token q_token_begin + r / G, q head
// kv_head * G + r % G) attends to the item's logical keys [kv_begin, kv_end)
// of its sequence (key -> page by division when uniform_pages, else by the
// per-page key offsets, as the kernels do), masked by kv_pos > q_pos of the
// row's token; an unsplit item writes out/lse, a split item its partial rows,
// and each merge group combines its chunks (m = max lse, w = 2^(lse - m);
// empty states give 0 / -inf). Full softmax per item in double: a different
// algorithm from the kernels' online one, the same decomposition.
//
// Checks the decomposition: counts the writes of every (token, q head) row
// (an unsplit item's row or a merge group's row) and of every partial row;
// `writes` and `partial_writes` come back for the caller to expect ones.
// Also flags, in `bad_uniform_keys`, keys whose page by division (when the
// item claims uniform pages) differs from the one by key offsets, and in
// `bad_page_walk_keys`, keys of items with partial pages that the decode
// kernel's page walk (WalkPartialPages below: from item.kv_begin_page, 64
// keys a tile) would not resolve to the page the key offsets name.
//
// Preconditions: the plan came from PlanMsa on `host_ws` for `shape` and a
// batch whose q / kv_pool tensors are passed (layouts of kernels/msa.h).
// Header-only; pure.
#ifndef ASYMCACHE_TESTS_KERNELS_MSA_PLAN_EXECUTOR_H_
#define ASYMCACHE_TESTS_KERNELS_MSA_PLAN_EXECUTOR_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/msa.h"
#include "kernels/msa_plan.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::msa::testing {

struct PlanExecution {
  std::vector<double> out;          // [total_q][Hq][D]; NaN where never written
  std::vector<double> lse;          // [total_q][Hq], base 2; NaN where never written
  std::vector<int32_t> writes;      // [total_q][Hq]: final writes of each row
  std::vector<int32_t> partial_writes;  // [num_partial_rows]
  int64_t bad_uniform_keys = 0;
  int64_t bad_page_walk_keys = 0;
};

// The decode kernel's walk of a sequence with partial pages
// (kernels/msa_kernel.cuh, MsaDecodeKernel): tiles of `tile_keys` keys from
// kv_begin; a tile's first page is item.kv_begin_page (tile 0) or the one the
// previous tile named. Of the candidate pages first .. first + tile_keys - 1
// (those that exist), the ones after `first` starting at t0 + r for r in
// [1, tile_keys) set bit r of a mask; key t0 + j takes page first + (set bits
// in [1, j]); the next tile's first page is first + (set bits) + (1 if a page
// of first + 1 .. first + tile_keys starts at t0 + tile_keys). Fills page_of_key[j] with the local page the walk
// gives key kv_begin + j; the caller checks it against the key offsets.
// page_start: the workspace's per-page key offsets.
inline void WalkPartialPages(const MsaWorkItem& item, const int32_t* page_start,
                                int32_t tile_keys, std::vector<int32_t>* page_of_key) {
  const int32_t keys = std::max(0, item.kv_end - item.kv_begin);
  page_of_key->assign(static_cast<size_t>(keys), -1);
  int32_t first = item.kv_begin_page;
  std::vector<bool> starts(static_cast<size_t>(tile_keys));
  for (int32_t t0 = item.kv_begin; t0 < item.kv_end; t0 += tile_keys) {
    std::fill(starts.begin(), starts.end(), false);
    bool at_end = false;
    for (int32_t j = 0; j <= tile_keys; ++j) {  // page first + tile_keys: at_end only
      const int32_t page = first + j;
      if (page < 0 || page >= item.num_pages) continue;
      const int64_t rel = int64_t{page_start[item.page_begin + page]} - t0;
      if (rel >= 1 && rel < tile_keys) starts[static_cast<size_t>(rel)] = true;
      at_end |= rel == tile_keys;
    }
    int32_t set_bits = 0;
    for (int32_t j = 0; j < tile_keys; ++j) {
      set_bits += starts[static_cast<size_t>(j)] ? 1 : 0;
      const int32_t t = t0 + j;
      if (t >= item.kv_end) continue;
      (*page_of_key)[static_cast<size_t>(t - item.kv_begin)] = first + set_bits;
    }
    first += set_bits + (at_end ? 1 : 0);
  }
}

inline PlanExecution ExecutePlanOnCpu(const MsaPlan& plan, const void* host_ws,
                                      const AttentionShape& shape, const void* q,
                                      const void* kv_pool) {
  const auto* base = static_cast<const unsigned char*>(host_ws);
  const auto* items = reinterpret_cast<const MsaWorkItem*>(base + plan.items_offset);
  const auto* groups = reinterpret_cast<const MsaMergeGroup*>(base + plan.merge_groups_offset);
  const auto* q_pos = reinterpret_cast<const int32_t*>(base + plan.q_pos_offset);
  const auto* page_ids = reinterpret_cast<const int32_t*>(base + plan.page_ids_offset);
  const auto* page_pos = reinterpret_cast<const int32_t*>(base + plan.page_pos_offset);
  const auto* page_start = reinterpret_cast<const int32_t*>(base + plan.page_token_start_offset);

  const int64_t hq = shape.num_q_heads;
  const int64_t hkv = shape.num_kv_heads;
  const int64_t dim = shape.head_dim;
  const int64_t group = shape.group_size();
  const int64_t page_size = shape.page_size;
  const double scale = shape.EffectiveScale();
  const double kNaN = std::numeric_limits<double>::quiet_NaN();
  const double kNegInf = -std::numeric_limits<double>::infinity();

  PlanExecution ex;
  ex.out.assign(static_cast<size_t>(plan.total_q * hq * dim), kNaN);
  ex.lse.assign(static_cast<size_t>(plan.total_q * hq), kNaN);
  ex.writes.assign(static_cast<size_t>(plan.total_q * hq), 0);
  ex.partial_writes.assign(static_cast<size_t>(plan.num_partial_rows), 0);
  std::vector<double> partial_out(static_cast<size_t>(plan.num_partial_rows) * dim, kNaN);
  std::vector<double> partial_lse(static_cast<size_t>(plan.num_partial_rows), kNaN);

  // Element offset of key t's K row (the item's kv head) in the pool, and its
  // position.
  auto locate = [&](const MsaWorkItem& item, int32_t t, int64_t* k_offset, int64_t* pos) {
    // Largest page with key offset <= t (the kernels' binary search).
    int32_t lo = 0;
    int32_t hi = item.num_pages - 1;
    while (lo < hi) {
      const int32_t mid = (lo + hi + 1) / 2;
      if (page_start[item.page_begin + mid] <= t) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    int32_t gp = item.page_begin + lo;
    int32_t in_page = t - page_start[gp];
    if (item.uniform_pages) {
      const int32_t by_division = item.page_begin + t / static_cast<int32_t>(page_size);
      if (by_division != gp || t % page_size != in_page) ++ex.bad_uniform_keys;
      gp = by_division;
      in_page = t % static_cast<int32_t>(page_size);
    }
    *k_offset = ((int64_t{page_ids[gp]} * 2) * page_size + in_page) * hkv * dim +
                int64_t{item.kv_head} * dim;
    *pos = int64_t{page_pos[gp]} + in_page;
  };

  std::vector<double> scores;
  std::vector<int32_t> walked;
  std::vector<double> row_out(static_cast<size_t>(dim));
  std::vector<double> q_row(static_cast<size_t>(dim));
  for (int32_t i = 0; i < plan.num_items(); ++i) {
    const MsaWorkItem& item = items[i];
    const int32_t keys = std::max(0, item.kv_end - item.kv_begin);
    // The item's keys (K, V rows of its kv head) and positions, gathered once.
    std::vector<double> k_rows(static_cast<size_t>(keys) * dim);
    std::vector<double> v_rows(static_cast<size_t>(keys) * dim);
    std::vector<int64_t> k_pos(static_cast<size_t>(keys));
    const int64_t v_shift = page_size * hkv * dim;  // V block follows the page's K block
    if (!item.uniform_pages) {
      WalkPartialPages(item, page_start, /*tile_keys=*/64, &walked);
    }
    for (int32_t j = 0; j < keys; ++j) {
      int64_t k_offset = 0;
      locate(item, item.kv_begin + j, &k_offset, &k_pos[j]);
      if (!item.uniform_pages) {
        const int32_t t = item.kv_begin + j;
        const int32_t page = walked[static_cast<size_t>(j)];
        const bool holds = page >= 0 && page_start[item.page_begin + page] <= t &&
                           (page + 1 == item.num_pages || t < page_start[item.page_begin + page + 1]);
        if (!holds) ++ex.bad_page_walk_keys;
      }
      for (int64_t d = 0; d < dim; ++d) {
        k_rows[j * dim + d] = LoadElement(shape.dtype, kv_pool, k_offset + d);
        v_rows[j * dim + d] = LoadElement(shape.dtype, kv_pool, k_offset + v_shift + d);
      }
    }
    for (int32_t r = 0; r < item.num_rows; ++r) {
      const int64_t token = item.q_token_begin + r / group;
      const int64_t head = int64_t{item.kv_head} * group + r % group;
      const int64_t q_offset = (token * hq + head) * dim;
      for (int64_t d = 0; d < dim; ++d) q_row[d] = LoadElement(shape.dtype, q, q_offset + d);
      scores.assign(static_cast<size_t>(keys), kNegInf);
      double max_score = kNegInf;
      for (int32_t j = 0; j < keys; ++j) {
        if (k_pos[j] > q_pos[token]) continue;  // causal mask by absolute position
        double dot = 0.0;
        for (int64_t d = 0; d < dim; ++d) dot += q_row[d] * k_rows[j * dim + d];
        scores[j] = dot * scale;
        max_score = std::max(max_score, scores[j]);
      }
      std::fill(row_out.begin(), row_out.end(), 0.0);
      double row_lse = kNegInf;
      if (max_score != kNegInf) {
        double sum = 0.0;
        for (int32_t j = 0; j < keys; ++j) {
          if (scores[j] == kNegInf) continue;
          const double w = std::exp(scores[j] - max_score);
          sum += w;
          for (int64_t d = 0; d < dim; ++d) row_out[d] += w * v_rows[j * dim + d];
        }
        for (double& v : row_out) v /= sum;
        row_lse = (max_score + std::log(sum)) / std::log(2.0);
      }
      if (item.partial_row < 0) {
        std::copy(row_out.begin(), row_out.end(), ex.out.begin() + q_offset);
        ex.lse[token * hq + head] = row_lse;
        ++ex.writes[token * hq + head];
      } else {
        const int64_t pr = int64_t{item.partial_row} + r;
        if (pr >= 0 && pr < plan.num_partial_rows) {
          std::copy(row_out.begin(), row_out.end(), partial_out.begin() + pr * dim);
          partial_lse[pr] = row_lse;
          ++ex.partial_writes[pr];
        }
      }
    }
  }

  for (int32_t gi = 0; gi < plan.num_merge_groups; ++gi) {
    const MsaMergeGroup& g = groups[gi];
    for (int32_t r = 0; r < g.num_rows; ++r) {
      const int64_t token = g.q_token_begin + r / group;
      const int64_t head = int64_t{g.kv_head} * group + r % group;
      double m = kNegInf;
      for (int32_t c = 0; c < g.num_chunks; ++c) {
        m = std::max(m, partial_lse[int64_t{g.partial_row} + int64_t{c} * g.num_rows + r]);
      }
      std::fill(row_out.begin(), row_out.end(), 0.0);
      double row_lse = kNegInf;
      if (m != kNegInf) {
        double wsum = 0.0;
        for (int32_t c = 0; c < g.num_chunks; ++c) {
          const int64_t pr = int64_t{g.partial_row} + int64_t{c} * g.num_rows + r;
          const double w = std::exp2(partial_lse[pr] - m);
          wsum += w;
          for (int64_t d = 0; d < dim; ++d) row_out[d] += w * partial_out[pr * dim + d];
        }
        for (double& v : row_out) v /= wsum;
        row_lse = m + std::log2(wsum);
      }
      const int64_t q_offset = (token * hq + head) * dim;
      std::copy(row_out.begin(), row_out.end(), ex.out.begin() + q_offset);
      ex.lse[token * hq + head] = row_lse;
      ++ex.writes[token * hq + head];
    }
  }
  return ex;
}

}  // namespace asymcache::msa::testing

#endif  // ASYMCACHE_TESTS_KERNELS_MSA_PLAN_EXECUTOR_H_

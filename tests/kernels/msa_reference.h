// Naive dense reference for MSA, in double, for the CPU and GPU kernel tests.
//
// What: for every sequence, gathers the sequence's KV tokens by absolute
// position into one dense list (sorted by position, independent of the page
// order of the tables), then for every query token and query head computes a
// full (not online) softmax over the keys with kv_pos <= q_pos, in double.
// Deliberately a different algorithm from the backends: no tiles, no blocks, no
// causal skip, no online rescaling.
//
// Output: out [total_q][Hq][D] and lse [total_q][Hq] (base 2 of the scaled
// scores), both double. A query with no visible key gets 0 / -inf.
//
// Preconditions: the batch passes ValidateBatch(shape, batch, num_pages); q and
// kv_pool hold shape.dtype elements in the layouts of kernels/msa.h.
// Header-only (the GPU tests include it too); pure; thread-safe.
#ifndef ASYMCACHE_TESTS_KERNELS_MSA_REFERENCE_H_
#define ASYMCACHE_TESTS_KERNELS_MSA_REFERENCE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/msa.h"
#include "tests/kernels/msa_test_util.h"

namespace asymcache::msa::testing {

inline void ReferenceAttention(const AttentionShape& shape, const BatchTables& batch,
                               const void* q, const void* kv_pool, int64_t num_pages,
                               std::vector<double>* out, std::vector<double>* lse) {
  (void)num_pages;  // the precondition (validated batch) keeps every page id in range
  const int64_t hq = shape.num_q_heads;
  const int64_t hkv = shape.num_kv_heads;
  const int64_t dim = shape.head_dim;
  const int64_t group = hq / hkv;
  const int64_t page_size = shape.page_size;
  const double scale = shape.EffectiveScale();
  const double kLn2 = std::log(2.0);
  out->assign(static_cast<size_t>(batch.total_q() * hq * dim), 0.0);
  lse->assign(static_cast<size_t>(batch.total_q() * hq), -std::numeric_limits<double>::infinity());

  struct KeyToken {
    int64_t pos;
    int64_t k_offset;  // element offset of the token's kv head 0 K row
  };
  std::vector<KeyToken> keys;
  std::vector<double> k_dense;  // [keys][D] for one kv head
  std::vector<double> v_dense;
  std::vector<double> scores;
  std::vector<double> q_row(static_cast<size_t>(dim));
  for (int32_t seq = 0; seq < batch.batch_size(); ++seq) {
    // Gather every KV token of the sequence, then order by position.
    keys.clear();
    for (int32_t p = batch.kv_indptr[seq]; p < batch.kv_indptr[seq + 1]; ++p) {
      for (int32_t i = 0; i < batch.kv_page_len[p]; ++i) {
        const int64_t k_offset = ((int64_t{batch.kv_page_ids[p]} * 2) * page_size + i) * hkv * dim;
        keys.push_back(KeyToken{int64_t{batch.kv_page_pos[p]} + i, k_offset});
      }
    }
    std::sort(keys.begin(), keys.end(),
              [](const KeyToken& a, const KeyToken& b) { return a.pos < b.pos; });
    const int64_t v_shift = page_size * hkv * dim;  // V block follows the page's K block

    for (int64_t kvh = 0; kvh < hkv; ++kvh) {
      k_dense.resize(keys.size() * dim);
      v_dense.resize(keys.size() * dim);
      for (size_t j = 0; j < keys.size(); ++j) {
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t offset = keys[j].k_offset + kvh * dim + d;
          k_dense[j * dim + d] = LoadElement(shape.dtype, kv_pool, offset);
          v_dense[j * dim + d] = LoadElement(shape.dtype, kv_pool, offset + v_shift);
        }
      }
      for (int32_t t = batch.q_indptr[seq]; t < batch.q_indptr[seq + 1]; ++t) {
        const int64_t query_pos = batch.q_pos[t];
        for (int64_t g = 0; g < group; ++g) {
          const int64_t head = kvh * group + g;
          const int64_t q_offset = (int64_t{t} * hq + head) * dim;
          for (int64_t d = 0; d < dim; ++d) {
            q_row[d] = LoadElement(shape.dtype, q, q_offset + d);
          }
          scores.clear();
          double max_score = -std::numeric_limits<double>::infinity();
          for (size_t j = 0; j < keys.size(); ++j) {
            if (keys[j].pos > query_pos) {
              scores.push_back(-std::numeric_limits<double>::infinity());  // masked
              continue;
            }
            double dot = 0.0;
            for (int64_t d = 0; d < dim; ++d) {
              dot += q_row[d] * k_dense[j * dim + d];
            }
            scores.push_back(dot * scale);
            max_score = std::max(max_score, dot * scale);
          }
          if (max_score == -std::numeric_limits<double>::infinity()) continue;  // 0 / -inf
          double denominator = 0.0;
          double* out_row = out->data() + q_offset;
          for (size_t j = 0; j < keys.size(); ++j) {
            if (scores[j] == -std::numeric_limits<double>::infinity()) continue;
            const double weight = std::exp(scores[j] - max_score);
            denominator += weight;
            for (int64_t d = 0; d < dim; ++d) out_row[d] += weight * v_dense[j * dim + d];
          }
          for (int64_t d = 0; d < dim; ++d) out_row[d] /= denominator;
          (*lse)[t * hq + head] = (max_score + std::log(denominator)) / kLn2;
        }
      }
    }
  }
}

}  // namespace asymcache::msa::testing

#endif  // ASYMCACHE_TESTS_KERNELS_MSA_REFERENCE_H_

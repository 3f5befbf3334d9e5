// MSA CPU backend (kernels/msa_cpu.h): planner of work items, the per-item
// online-softmax loop, the thread fan-out, KV append and state merge.
#include "kernels/msa_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/dtype.h"
#include "kernels/msa.h"

namespace asymcache::msa {
namespace {

// Keys gathered (across page boundaries) and processed per online-softmax step.
// Partial sums are taken per block and then folded into the running state,
// which keeps fp32 accumulation error low on long contexts.
constexpr int32_t kKeysPerBlock = 64;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// dst[i] = src[i] * scale for n elements starting at element `offset` of `base`.
template <typename T>
void LoadRowScaledT(const void* base, int64_t offset, int32_t n, float scale, float* dst) {
  const T* src = static_cast<const T*>(base) + offset;
  for (int32_t i = 0; i < n; ++i) dst[i] = ToFloat(src[i]) * scale;
}

template <typename T>
void LoadRowT(const void* base, int64_t offset, int32_t n, float* dst) {
  const T* src = static_cast<const T*>(base) + offset;
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, sizeof(float) * n);
  } else {
    for (int32_t i = 0; i < n; ++i) dst[i] = ToFloat(src[i]);
  }
}

template <typename T>
void StoreRowT(const float* src, int32_t n, void* base, int64_t offset) {
  T* dst = static_cast<T*>(base) + offset;
  for (int32_t i = 0; i < n; ++i) dst[i] = FromFloat<T>(src[i]);
}

void LoadRowScaled(DType dtype, const void* base, int64_t offset, int32_t n, float scale,
                   float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      return LoadRowScaledT<float>(base, offset, n, scale, dst);
    case DType::kBFloat16:
      return LoadRowScaledT<bf16_t>(base, offset, n, scale, dst);
    case DType::kFloat16:
      return LoadRowScaledT<fp16_t>(base, offset, n, scale, dst);
  }
}

void LoadRow(DType dtype, const void* base, int64_t offset, int32_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      return LoadRowT<float>(base, offset, n, dst);
    case DType::kBFloat16:
      return LoadRowT<bf16_t>(base, offset, n, dst);
    case DType::kFloat16:
      return LoadRowT<fp16_t>(base, offset, n, dst);
  }
}

void StoreRow(DType dtype, const float* src, int32_t n, void* base, int64_t offset) {
  switch (dtype) {
    case DType::kFloat32:
      return StoreRowT<float>(src, n, base, offset);
    case DType::kBFloat16:
      return StoreRowT<bf16_t>(src, n, base, offset);
    case DType::kFloat16:
      return StoreRowT<fp16_t>(src, n, base, offset);
  }
}

// ---- the attention loop ---------------------------------------------------------

// Fixed-order dot product: 8 independent partial sums (vectorisable without
// reassociation), combined in a fixed tree.
template <int kHeadDim>
inline float Dot(const float* a, const float* b) {
  static_assert(kHeadDim % 8 == 0);
  float partial[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int d = 0; d < kHeadDim; d += 8) {
    for (int i = 0; i < 8; ++i) partial[i] += a[d + i] * b[d + i];
  }
  return ((partial[0] + partial[4]) + (partial[1] + partial[5])) +
         ((partial[2] + partial[6]) + (partial[3] + partial[7]));
}

struct WorkItem {
  int32_t sequence = 0;
  int32_t kv_head = 0;
  int32_t q_begin = 0;  // global query token index (into q_pos / q rows)
  int32_t q_end = 0;
  int64_t cost = 0;  // rows * visible-key bound, for ordering only
};

// Per-call constants shared (read-only) by every worker.
struct RunContext {
  const AttentionShape* shape = nullptr;
  const BatchTables* batch = nullptr;
  const void* q = nullptr;
  const void* kv_pool = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  float q_scale_log2 = 0.0f;  // sm_scale * log2(e)
};

// Per-thread buffers, sized for the largest item.
struct Scratch {
  explicit Scratch(int32_t head_dim)
      : q(static_cast<size_t>(kQueryRowsPerTile) * head_dim),
        acc(static_cast<size_t>(kQueryRowsPerTile) * head_dim),
        row_max(kQueryRowsPerTile),
        row_sum(kQueryRowsPerTile),
        k(static_cast<size_t>(kKeysPerBlock) * head_dim),
        v(static_cast<size_t>(kKeysPerBlock) * head_dim),
        key_pos(kKeysPerBlock),
        scores(kKeysPerBlock),
        block_acc(head_dim),
        out_row(head_dim) {}
  std::vector<float> q;        // [rows][D], pre-scaled by sm_scale * log2(e)
  std::vector<float> acc;      // [rows][D] un-normalised output
  std::vector<float> row_max;  // [rows] running max (base-2 scaled scores)
  std::vector<float> row_sum;  // [rows] running sum of 2^(s - max)
  std::vector<float> k;        // [block][D]
  std::vector<float> v;        // [block][D]
  std::vector<int32_t> key_pos;
  std::vector<float> scores;
  std::vector<float> block_acc;
  std::vector<float> out_row;
};

template <int kHeadDim>
void RunItem(const RunContext& ctx, const WorkItem& item, Scratch& scratch) {
  const AttentionShape& shape = *ctx.shape;
  const BatchTables& batch = *ctx.batch;
  const DType dtype = shape.dtype;
  const int32_t group = shape.group_size();
  const int32_t num_q_heads = shape.num_q_heads;
  const int64_t kv_row_stride = int64_t{shape.num_kv_heads} * kHeadDim;  // one token of one page
  const int64_t page_block_elems = int64_t{shape.page_size} * kv_row_stride;  // K or V of a page
  const int32_t num_tokens = item.q_end - item.q_begin;
  const int32_t num_rows = num_tokens * group;

  float* q_rows = scratch.q.data();
  float* acc = scratch.acc.data();
  float* row_max = scratch.row_max.data();
  float* row_sum = scratch.row_sum.data();
  for (int32_t t = 0; t < num_tokens; ++t) {
    for (int32_t g = 0; g < group; ++g) {
      const int32_t row = t * group + g;
      const int64_t offset =
          (int64_t{item.q_begin + t} * num_q_heads + int64_t{item.kv_head} * group + g) * kHeadDim;
      LoadRowScaled(dtype, ctx.q, offset, kHeadDim, ctx.q_scale_log2, q_rows + row * kHeadDim);
    }
  }
  std::fill(acc, acc + int64_t{num_rows} * kHeadDim, 0.0f);
  std::fill(row_max, row_max + num_rows, kNegInf);
  std::fill(row_sum, row_sum + num_rows, 0.0f);

  const int32_t max_q_pos = batch.q_pos[item.q_end - 1];
  const int32_t page_end = batch.kv_indptr[item.sequence + 1];
  int32_t page = batch.kv_indptr[item.sequence];
  int32_t offset_in_page = 0;
  float* keys = scratch.k.data();
  float* values = scratch.v.data();
  int32_t* key_pos = scratch.key_pos.data();
  float* scores = scratch.scores.data();
  float* block_acc = scratch.block_acc.data();

  while (page < page_end) {
    // Gather up to kKeysPerBlock keys in position order, crossing pages and
    // stopping at the first key no query of the tile can see.
    int32_t num_keys = 0;
    while (num_keys < kKeysPerBlock && page < page_end) {
      const int32_t first_pos = batch.kv_page_pos[page] + offset_in_page;
      if (first_pos > max_q_pos) {
        page = page_end;  // causal skip: this and every later key is invisible
        break;
      }
      const int32_t page_len = batch.kv_page_len[page];
      const int32_t take = std::min({page_len - offset_in_page, kKeysPerBlock - num_keys,
                                     max_q_pos - first_pos + 1});
      const int64_t page_base = int64_t{batch.kv_page_ids[page]} * 2 * page_block_elems +
                                int64_t{item.kv_head} * kHeadDim;
      for (int32_t i = 0; i < take; ++i) {
        const int64_t row_offset = page_base + int64_t{offset_in_page + i} * kv_row_stride;
        LoadRow(dtype, ctx.kv_pool, row_offset, kHeadDim, keys + (num_keys + i) * kHeadDim);
        LoadRow(dtype, ctx.kv_pool, row_offset + page_block_elems, kHeadDim,
                values + (num_keys + i) * kHeadDim);
        key_pos[num_keys + i] = first_pos + i;
      }
      num_keys += take;
      offset_in_page += take;
      if (offset_in_page == page_len) {
        ++page;
        offset_in_page = 0;
      } else if (first_pos + take - 1 == max_q_pos) {
        page = page_end;  // the rest of this page lies past every query
        break;
      }
    }
    if (num_keys == 0) break;

    for (int32_t t = 0; t < num_tokens; ++t) {
      const int32_t query_pos = batch.q_pos[item.q_begin + t];
      // Keys are sorted by position, so the visible ones are a prefix.
      const int32_t visible =
          static_cast<int32_t>(std::upper_bound(key_pos, key_pos + num_keys, query_pos) - key_pos);
      if (visible == 0) continue;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t row = t * group + g;
        const float* q_row = q_rows + row * kHeadDim;
        float block_max = kNegInf;
        for (int32_t j = 0; j < visible; ++j) {
          scores[j] = Dot<kHeadDim>(q_row, keys + j * kHeadDim);
          block_max = std::max(block_max, scores[j]);
        }
        const float new_max = std::max(row_max[row], block_max);
        const float rescale = std::exp2(row_max[row] - new_max);  // 0 when row_max was -inf
        std::fill(block_acc, block_acc + kHeadDim, 0.0f);
        float block_sum = 0.0f;
        for (int32_t j = 0; j < visible; ++j) {
          const float weight = std::exp2(scores[j] - new_max);
          block_sum += weight;
          const float* v_row = values + j * kHeadDim;
          for (int d = 0; d < kHeadDim; ++d) block_acc[d] += weight * v_row[d];
        }
        float* acc_row = acc + row * kHeadDim;
        for (int d = 0; d < kHeadDim; ++d) acc_row[d] = acc_row[d] * rescale + block_acc[d];
        row_sum[row] = row_sum[row] * rescale + block_sum;
        row_max[row] = new_max;
      }
    }
  }

  float* out_row = scratch.out_row.data();
  for (int32_t t = 0; t < num_tokens; ++t) {
    for (int32_t g = 0; g < group; ++g) {
      const int32_t row = t * group + g;
      const int64_t head_row = int64_t{item.q_begin + t} * num_q_heads +
                               int64_t{item.kv_head} * group + g;
      const float sum = row_sum[row];
      if (sum > 0.0f) {
        const float inverse = 1.0f / sum;
        for (int d = 0; d < kHeadDim; ++d) out_row[d] = acc[row * kHeadDim + d] * inverse;
      } else {
        std::fill(out_row, out_row + kHeadDim, 0.0f);  // no visible key
      }
      StoreRow(dtype, out_row, kHeadDim, ctx.out, head_row * kHeadDim);
      if (ctx.lse != nullptr) {
        ctx.lse[head_row] = sum > 0.0f ? row_max[row] + std::log2(sum) : kNegInf;
      }
    }
  }
}

void RunItemDispatch(const RunContext& ctx, const WorkItem& item, Scratch& scratch) {
  switch (ctx.shape->head_dim) {
    case 64:
      return RunItem<64>(ctx, item, scratch);
    case 128:
      return RunItem<128>(ctx, item, scratch);
    case 256:
      return RunItem<256>(ctx, item, scratch);
    default:
      return;  // unreachable: AttentionShape::Validate admits only these
  }
}

// Splits the batch into work items, most expensive first (ordering affects
// load balance only, never results).
std::vector<WorkItem> PlanWorkItems(const AttentionShape& shape, const BatchTables& batch) {
  const int32_t group = shape.group_size();
  const int32_t tokens_per_tile = std::max<int32_t>(1, kQueryRowsPerTile / group);
  std::vector<WorkItem> items;
  for (int32_t seq = 0; seq < batch.batch_size(); ++seq) {
    const int32_t page_begin = batch.kv_indptr[seq];
    const int32_t page_end = batch.kv_indptr[seq + 1];
    const int32_t* pos_begin = batch.kv_page_pos.data() + page_begin;
    const int32_t* pos_end = batch.kv_page_pos.data() + page_end;
    for (int32_t q_begin = batch.q_indptr[seq]; q_begin < batch.q_indptr[seq + 1];
         q_begin += tokens_per_tile) {
      const int32_t q_end = std::min(q_begin + tokens_per_tile, batch.q_indptr[seq + 1]);
      // Pages that start at or before the tile's last query bound its keys.
      const int64_t visible_pages = std::upper_bound(pos_begin, pos_end, batch.q_pos[q_end - 1]) -
                                    pos_begin;
      const int64_t cost = int64_t{q_end - q_begin} * group * (visible_pages * shape.page_size + 1);
      for (int32_t kv_head = 0; kv_head < shape.num_kv_heads; ++kv_head) {
        items.push_back(WorkItem{seq, kv_head, q_begin, q_end, cost});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });
  return items;
}

}  // namespace

absl::Status CpuRunOptions::Validate() const {
  if (num_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_threads must be >= 0 (0 = hardware concurrency), got ", num_threads));
  }
  return absl::OkStatus();
}

absl::Status RunMsaCpu(const AttentionShape& shape, const BatchTables& batch, const void* q,
                       const void* kv_pool, int64_t num_pages, void* out, float* lse,
                       const CpuRunOptions& options) {
  if (absl::Status status = options.Validate(); !status.ok()) return status;
  if (absl::Status status = ValidateBatch(shape, batch, num_pages); !status.ok()) return status;
  if (batch.total_q() == 0) return absl::OkStatus();
  if (q == nullptr) return absl::InvalidArgumentError("q is null but the batch has queries");
  if (out == nullptr) return absl::InvalidArgumentError("out is null but the batch has queries");
  if (kv_pool == nullptr && batch.total_pages() > 0) {
    return absl::InvalidArgumentError("kv_pool is null but the batch has pages");
  }

  const std::vector<WorkItem> items = PlanWorkItems(shape, batch);
  RunContext ctx;
  ctx.shape = &shape;
  ctx.batch = &batch;
  ctx.q = q;
  ctx.kv_pool = kv_pool;
  ctx.out = out;
  ctx.lse = lse;
  ctx.q_scale_log2 = shape.EffectiveScale() * kLog2e;

  std::atomic<size_t> next_item{0};
  auto worker = [&]() {
    Scratch scratch(shape.head_dim);
    for (size_t i = next_item.fetch_add(1, std::memory_order_relaxed); i < items.size();
         i = next_item.fetch_add(1, std::memory_order_relaxed)) {
      RunItemDispatch(ctx, items[i], scratch);
    }
  };

  size_t num_threads = options.num_threads > 0
                           ? static_cast<size_t>(options.num_threads)
                           : std::max<size_t>(1, std::thread::hardware_concurrency());
  num_threads = std::min(num_threads, items.size());
  std::vector<std::thread> helpers;
  helpers.reserve(num_threads > 0 ? num_threads - 1 : 0);
  for (size_t i = 1; i < num_threads; ++i) {
    try {
      helpers.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // fewer threads: the shared counter still hands out every item
    }
  }
  worker();
  for (std::thread& helper : helpers) helper.join();
  return absl::OkStatus();
}

absl::Status AppendKvCpu(const AttentionShape& shape, absl::Span<const int32_t> slot_page_ids,
                         absl::Span<const int32_t> slot_offsets, const void* k, const void* v,
                         void* kv_pool, int64_t num_pages) {
  if (absl::Status status = shape.Validate(); !status.ok()) return status;
  if (slot_page_ids.size() != slot_offsets.size()) {
    return absl::InvalidArgumentError(absl::StrCat("slot_page_ids has ", slot_page_ids.size(),
                                                   " entries but slot_offsets has ",
                                                   slot_offsets.size()));
  }
  if (num_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_pages must be >= 0, got ", num_pages));
  }
  for (size_t t = 0; t < slot_page_ids.size(); ++t) {
    if (slot_page_ids[t] < 0 || slot_page_ids[t] >= num_pages) {
      return absl::InvalidArgumentError(absl::StrCat("token ", t, ": slot_page_ids[", t, "]=",
                                                     slot_page_ids[t], " is outside [0, ",
                                                     num_pages, ")"));
    }
    if (slot_offsets[t] < 0 || slot_offsets[t] >= shape.page_size) {
      return absl::InvalidArgumentError(absl::StrCat("token ", t, ": slot_offsets[", t, "]=",
                                                     slot_offsets[t], " is outside [0, page_size=",
                                                     shape.page_size, ")"));
    }
  }
  if (slot_page_ids.empty()) return absl::OkStatus();
  if (k == nullptr || v == nullptr || kv_pool == nullptr) {
    return absl::InvalidArgumentError("k, v and kv_pool must be non-null when tokens are given");
  }

  const int64_t element_bytes = DTypeBytes(shape.dtype);
  const int64_t row_elems = int64_t{shape.num_kv_heads} * shape.head_dim;
  const int64_t row_bytes = row_elems * element_bytes;
  const int64_t page_block_elems = int64_t{shape.page_size} * row_elems;
  auto* pool_bytes = static_cast<unsigned char*>(kv_pool);
  const auto* k_bytes = static_cast<const unsigned char*>(k);
  const auto* v_bytes = static_cast<const unsigned char*>(v);
  for (size_t t = 0; t < slot_page_ids.size(); ++t) {
    const int64_t k_elem = int64_t{slot_page_ids[t]} * 2 * page_block_elems +
                           int64_t{slot_offsets[t]} * row_elems;
    const int64_t v_elem = k_elem + page_block_elems;
    std::memcpy(pool_bytes + k_elem * element_bytes, k_bytes + static_cast<int64_t>(t) * row_bytes,
                row_bytes);
    std::memcpy(pool_bytes + v_elem * element_bytes, v_bytes + static_cast<int64_t>(t) * row_bytes,
                row_bytes);
  }
  return absl::OkStatus();
}

absl::Status MergeStatesCpu(DType dtype, int64_t num_rows, int32_t head_dim,
                            absl::Span<const PartialState> states, void* out_values,
                            float* out_lse) {
  if (DTypeBytes(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype has no known element type: ", static_cast<int32_t>(dtype)));
  }
  if (num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_rows must be >= 0, got ", num_rows));
  }
  if (head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim must be positive, got ", head_dim));
  }
  if (num_rows == 0) return absl::OkStatus();
  if (out_values == nullptr) return absl::InvalidArgumentError("out_values is null");
  for (size_t i = 0; i < states.size(); ++i) {
    if (states[i].values == nullptr || states[i].lse == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("state ", i, " has a null values or lse"));
    }
  }

  std::vector<float> merged(head_dim);
  std::vector<float> state_row(head_dim);
  std::vector<float> weights(states.size());
  for (int64_t row = 0; row < num_rows; ++row) {
    float max_lse = kNegInf;
    for (const PartialState& state : states) max_lse = std::max(max_lse, state.lse[row]);
    std::fill(merged.begin(), merged.end(), 0.0f);
    float merged_lse = kNegInf;
    if (max_lse > kNegInf) {
      float weight_sum = 0.0f;
      for (size_t i = 0; i < states.size(); ++i) {
        weights[i] = std::exp2(states[i].lse[row] - max_lse);  // 0 for an empty state
        weight_sum += weights[i];
      }
      for (size_t i = 0; i < states.size(); ++i) {
        if (weights[i] == 0.0f) continue;  // never read an empty state's values
        LoadRow(dtype, states[i].values, row * head_dim, head_dim, state_row.data());
        const float scale = weights[i] / weight_sum;
        for (int32_t d = 0; d < head_dim; ++d) merged[d] += scale * state_row[d];
      }
      merged_lse = max_lse + std::log2(weight_sum);
    }
    StoreRow(dtype, merged.data(), head_dim, out_values, row * head_dim);
    if (out_lse != nullptr) out_lse[row] = merged_lse;
  }
  return absl::OkStatus();
}

}  // namespace asymcache::msa

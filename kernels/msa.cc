// Shared MSA types: shape validation and the CSR batch validator (kernels/msa.h).
#include "kernels/msa.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace asymcache::msa {

int DTypeBytes(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return 4;
    case DType::kBFloat16:
    case DType::kFloat16:
      return 2;
  }
  return 0;  // not a DType value; AttentionShape::Validate rejects it
}

absl::Status AttentionShape::Validate() const {
  if (num_q_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_q_heads must be positive, got ", num_q_heads));
  }
  if (num_kv_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_kv_heads must be positive, got ", num_kv_heads));
  }
  if (num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_q_heads (", num_q_heads,
                                                   ") must be a multiple of num_kv_heads (",
                                                   num_kv_heads, ")"));
  }
  const int32_t group = num_q_heads / num_kv_heads;
  if (group != 1 && group != 2 && group != 4 && group != 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_q_heads / num_kv_heads must be 1, 2, 4 or 8, got ", group));
  }
  if (head_dim != 64 && head_dim != 128 && head_dim != 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be 64, 128 or 256, got ", head_dim));
  }
  if (page_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be positive, got ", page_size));
  }
  if (DTypeBytes(dtype) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype has no known element type: ", static_cast<int32_t>(dtype)));
  }
  if (!std::isfinite(sm_scale) || sm_scale < 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("sm_scale must be finite and >= 0 (0 = 1/sqrt(head_dim)), got ", sm_scale));
  }
  return absl::OkStatus();
}

float AttentionShape::EffectiveScale() const {
  if (sm_scale != 0.0f) return sm_scale;
  return 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int64_t AttentionShape::PageElements() const {
  return int64_t{2} * page_size * num_kv_heads * head_dim;
}

namespace {

// Checks one indptr array: starts at 0, non-decreasing, ends at `expected_back`.
absl::Status ValidateIndptr(const char* name, absl::Span<const int32_t> indptr,
                            size_t expected_back, const char* array_name) {
  if (indptr.front() != 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, "[0] must be 0, got ", indptr.front()));
  }
  for (size_t i = 1; i < indptr.size(); ++i) {
    if (indptr[i] < indptr[i - 1]) {
      return absl::InvalidArgumentError(absl::StrCat(name, " decreases at sequence ", i - 1, ": ",
                                                     name, "[", i - 1, "]=", indptr[i - 1], " > ",
                                                     name, "[", i, "]=", indptr[i]));
    }
  }
  if (static_cast<size_t>(indptr.back()) != expected_back) {
    return absl::InvalidArgumentError(absl::StrCat(name, "[B]=", indptr.back(), " but ", array_name,
                                                   " has ", expected_back, " entries"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateBatch(const AttentionShape& shape, const BatchTables& batch,
                           int64_t num_pages) {
  if (absl::Status status = shape.Validate(); !status.ok()) return status;
  if (num_pages < 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_pages must be >= 0, got ", num_pages));
  }
  // An empty batch may come as empty indptr arrays or as {0}.
  if (batch.q_indptr.empty() || batch.kv_indptr.empty()) {
    if (batch.q_indptr.size() > 1 || batch.kv_indptr.size() > 1 || !batch.q_pos.empty() ||
        !batch.kv_page_ids.empty() || !batch.kv_page_pos.empty() || !batch.kv_page_len.empty() ||
        (!batch.q_indptr.empty() && batch.q_indptr[0] != 0) ||
        (!batch.kv_indptr.empty() && batch.kv_indptr[0] != 0)) {
      return absl::InvalidArgumentError(
          "empty q_indptr or kv_indptr requires an empty batch (other indptr {} or {0}, no "
          "queries, no pages)");
    }
    return absl::OkStatus();
  }
  if (batch.q_indptr.size() != batch.kv_indptr.size()) {
    return absl::InvalidArgumentError(absl::StrCat("q_indptr has ", batch.q_indptr.size(),
                                                   " entries but kv_indptr has ",
                                                   batch.kv_indptr.size(), "; both must be B+1"));
  }
  if (batch.kv_page_pos.size() != batch.kv_page_ids.size() ||
      batch.kv_page_len.size() != batch.kv_page_ids.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv_page_ids, kv_page_pos and kv_page_len must have equal sizes, got ",
        batch.kv_page_ids.size(), ", ", batch.kv_page_pos.size(), ", ", batch.kv_page_len.size()));
  }
  if (absl::Status status = ValidateIndptr("q_indptr", batch.q_indptr, batch.q_pos.size(), "q_pos");
      !status.ok()) {
    return status;
  }
  if (absl::Status status =
          ValidateIndptr("kv_indptr", batch.kv_indptr, batch.kv_page_ids.size(), "kv_page_ids");
      !status.ok()) {
    return status;
  }

  const int32_t batch_size = batch.batch_size();
  for (int32_t seq = 0; seq < batch_size; ++seq) {
    for (int32_t i = batch.q_indptr[seq]; i < batch.q_indptr[seq + 1]; ++i) {
      if (batch.q_pos[i] < 0) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": q_pos[", i,
                                                       "]=", batch.q_pos[i], " is negative"));
      }
      if (i > batch.q_indptr[seq] && batch.q_pos[i] <= batch.q_pos[i - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sequence ", seq, ": q_pos not strictly increasing at index ", i, " (q_pos[", i - 1,
            "]=", batch.q_pos[i - 1], ", q_pos[", i, "]=", batch.q_pos[i], ")"));
      }
    }
    for (int32_t p = batch.kv_indptr[seq]; p < batch.kv_indptr[seq + 1]; ++p) {
      const int32_t page_id = batch.kv_page_ids[p];
      if (page_id < 0 || page_id >= num_pages) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": kv_page_ids[", p,
                                                       "]=", page_id, " is outside [0, ",
                                                       num_pages, ")"));
      }
      const int32_t length = batch.kv_page_len[p];
      if (length < 1 || length > shape.page_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": kv_page_len[", p, "]=",
                                                       length, " is outside [1, page_size=",
                                                       shape.page_size, "]"));
      }
      const int32_t start = batch.kv_page_pos[p];
      if (start < 0) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": kv_page_pos[", p,
                                                       "]=", start, " is negative"));
      }
      if (start > std::numeric_limits<int32_t>::max() - length) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", seq, ": page ", p,
                                                       " ends past the int32 position range"));
      }
      if (p > batch.kv_indptr[seq]) {
        const int64_t previous_end =
            int64_t{batch.kv_page_pos[p - 1]} + batch.kv_page_len[p - 1];
        if (start < previous_end) {
          return absl::InvalidArgumentError(absl::StrCat(
              "sequence ", seq, ": page ", p, " starts at ", start, " before page ", p - 1,
              " ends at ", previous_end, " (pages must be in position order, non-overlapping)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace asymcache::msa

#include "services/worker/step_trace.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace asymcache::worker {
namespace {

// Lines are written out once this much is buffered (and at Flush).
constexpr size_t kFlushBytes = 64 << 10;

std::string Ms(double seconds) { return absl::StrFormat("%.4f", seconds * 1e3); }

}  // namespace

StepTraceWriter::StepTraceWriter(std::string path, absl::Time origin)
    : path_(std::move(path)), origin_(origin) {}

absl::StatusOr<std::unique_ptr<StepTraceWriter>> StepTraceWriter::Open(const std::string& path,
                                                                       const ModelConfig& model) {
  const absl::Time origin = absl::Now();
  std::unique_ptr<StepTraceWriter> writer(new StepTraceWriter(path, origin));
  absl::MutexLock lock(&writer->mu_);
  writer->file_.open(path, std::ios::out | std::ios::trunc);
  if (!writer->file_) {
    return absl::InvalidArgumentError(
        absl::StrCat("--step-trace: cannot create '", path, "' (", std::strerror(errno), ")"));
  }
  writer->file_ << "{\"schema\": \"" << kStepTraceSchema << "\", \"started\": \""
                << absl::FormatTime(absl::RFC3339_full, origin, absl::UTCTimeZone())
                << "\", \"model\": {\"name\": \"" << absl::CEscape(model.name)
                << "\", \"num_layers\": " << model.num_layers
                << ", \"num_q_heads\": " << model.num_q_heads
                << ", \"num_kv_heads\": " << model.num_kv_heads
                << ", \"head_dim\": " << model.head_dim << ", \"dtype_bytes\": " << model.dtype_bytes
                << ", \"block_tokens\": " << model.block_tokens
                << ", \"hidden_size\": " << model.hidden_size
                << ", \"intermediate_size\": " << model.intermediate_size
                << ", \"vocab_size\": " << model.vocab_size << "}}\n";
  return writer;
}

StepTraceWriter::~StepTraceWriter() { Flush().IgnoreError(); }

std::string StepTraceWriter::Line(const StepRecord& record, absl::Time origin) {
  std::string line = absl::StrCat("{\"t_ms\": ", Ms(absl::ToDoubleSeconds(record.start - origin)),
                                  ", \"decodes\": [");
  for (size_t i = 0; i < record.decodes.size(); ++i) {
    absl::StrAppend(&line, i == 0 ? "" : ",", record.decodes[i].context_tokens);
  }
  absl::StrAppend(&line, "], \"chunks\": [");
  for (size_t i = 0; i < record.chunks.size(); ++i) {
    const Chunk& c = record.chunks[i];
    absl::StrAppend(&line, i == 0 ? "" : ",", "[", c.sequence, ",", c.begin, ",", c.end, "]");
  }
  absl::StrAppend(&line, "], \"predicted_ms\": ", Ms(record.predicted_s),
                  ", \"forward_ms\": ", Ms(record.forward_s), ", \"step_ms\": ", Ms(record.step_s),
                  ", \"waiting\": ", record.waiting, "}");
  return line;
}

void StepTraceWriter::Write(const StepRecord& record) {
  std::string line = Line(record, origin_);
  absl::MutexLock lock(&mu_);
  absl::StrAppend(&buffer_, line, "\n");
  if (buffer_.size() >= kFlushBytes) {
    file_ << buffer_;
    buffer_.clear();
  }
}

absl::Status StepTraceWriter::Flush() {
  absl::MutexLock lock(&mu_);
  file_ << buffer_;
  buffer_.clear();
  file_.flush();
  if (!file_) return absl::InternalError(absl::StrCat("--step-trace: writing '", path_, "' failed"));
  return absl::OkStatus();
}

}  // namespace asymcache::worker

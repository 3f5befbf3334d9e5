#include "services/worker/step_trace.h"

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cachecore/step_trace.h"

namespace asymcache::worker {
namespace {

// Lines are written out once this much is buffered (and at Flush).
constexpr size_t kFlushBytes = 64 << 10;

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
  writer->file_ << StepTraceHeader(model, origin) << "\n";
  return writer;
}

StepTraceWriter::~StepTraceWriter() { Flush().IgnoreError(); }

std::string StepTraceWriter::Line(const StepRecord& record, absl::Time origin) {
  StepTraceEntry entry;
  entry.start_s = absl::ToDoubleSeconds(record.start - origin);
  entry.decodes = record.decodes;
  entry.chunks = record.chunks;
  entry.predicted_s = record.predicted_s;
  entry.forward_s = record.forward_s;
  entry.step_s = record.step_s;
  entry.waiting = record.waiting;
  return StepTraceLine(entry);
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

#include "services/common/metric_families.h"

#include <algorithm>
#include <exception>
#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace asymcache {

const std::vector<double>& OperationLatencyBuckets() {
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1};
  return *kBuckets;
}

const std::vector<double>& RpcLatencyBuckets() {
  static const std::vector<double>* const kBuckets = new std::vector<double>{
      2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1, 1};
  return *kBuckets;
}

double NonNegativeSeconds(absl::Duration d) { return std::max(0.0, absl::ToDoubleSeconds(d)); }

void MetricFamilyRegistrar::RemoveAll() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  undo_.clear();
}

absl::Status RegisterMetricFamilies(
    prometheus::Registry& registry, absl::string_view what,
    const std::function<void(MetricFamilyRegistrar&)>& register_all) {
  MetricFamilyRegistrar families(registry);
  absl::Status error;
  try {
    register_all(families);
    return absl::OkStatus();
  } catch (const std::invalid_argument& e) {  // a name taken with another type or labels
    error = absl::AlreadyExistsError(
        absl::StrCat("cannot register the ", what, " metrics: ", e.what()));
  } catch (const std::exception& e) {
    error = absl::InternalError(absl::StrCat("cannot register the ", what, " metrics: ", e.what()));
  }
  families.RemoveAll();
  return error;
}

prometheus::Histogram& RpcDurationHistograms::Series(absl::string_view method,
                                                     absl::StatusCode code) {
  int index = static_cast<int>(code);
  if (index < 0 || index >= kNumStatusCodes) index = static_cast<int>(absl::StatusCode::kUnknown);
  {
    absl::ReaderMutexLock lock(&mu_);
    auto it = series_.find(method);
    if (it != series_.end() && it->second[index] != nullptr) return *it->second[index];
  }
  absl::MutexLock lock(&mu_);
  ByCode& by_code = series_[method];  // value-initialized: all null
  if (by_code[index] == nullptr) {
    by_code[index] =
        &family_.Add({{"method", std::string(method)},
                      {"code", absl::StatusCodeToString(static_cast<absl::StatusCode>(index))}},
                     RpcLatencyBuckets());
  }
  return *by_code[index];
}

}  // namespace asymcache

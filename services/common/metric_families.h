// The prometheus-cpp plumbing the services' typed metrics classes
// (DaemonMetrics, CoordinatorMetrics) share:
//  - MetricFamilyRegistrar / RegisterMetricFamilies: register a class's
//    families all or nothing. prometheus-cpp throws on a conflicting
//    registration; the families registered before it are removed again, so a
//    failed Create leaves the registry as it was.
//  - RpcDurationHistograms: one histogram series per (method, status code),
//    created on first use.
//  - The latency bucket lists and the duration -> seconds conversion.
//
// Ownership: the registry owns every family; it must outlive the objects here.
// Thread-safety: MetricFamilyRegistrar is used by one thread (a constructor);
// RpcDurationHistograms is thread-safe.
#ifndef ASYMCACHE_SERVICES_COMMON_METRIC_FAMILIES_H_
#define ASYMCACHE_SERVICES_COMMON_METRIC_FAMILIES_H_

#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <array>
#include <functional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace asymcache {

// Histogram bucket upper bounds, in seconds: an in-process operation
// (5e-6 .. 0.1) and an RPC (2e-5 .. 1).
const std::vector<double>& OperationLatencyBuckets();
const std::vector<double>& RpcLatencyBuckets();

// `d` in seconds; negative durations count as 0.
double NonNegativeSeconds(absl::Duration d);

class MetricFamilyRegistrar {
 public:
  explicit MetricFamilyRegistrar(prometheus::Registry& registry) : registry_(registry) {}
  MetricFamilyRegistrar(const MetricFamilyRegistrar&) = delete;
  MetricFamilyRegistrar& operator=(const MetricFamilyRegistrar&) = delete;

  // builder.Name(name).Help(help).Register(registry), remembered for
  // RemoveAll. Throws what prometheus-cpp throws.
  template <typename Builder>
  auto& Add(Builder builder, const std::string& name, const std::string& help) {
    auto& family = builder.Name(name).Help(help).Register(registry_);
    undo_.push_back([r = &registry_, f = &family] { r->Remove(*f); });
    return family;
  }
  // Removes every family Add registered, newest first.
  void RemoveAll();

 private:
  prometheus::Registry& registry_;
  std::vector<std::function<void()>> undo_;
};

// Runs `register_all`, which registers families through the registrar. When
// it throws, removes what it registered and returns ALREADY_EXISTS (a name
// taken with another type or labels) or INTERNAL, "cannot register the WHAT
// metrics: ...".
absl::Status RegisterMetricFamilies(
    prometheus::Registry& registry, absl::string_view what,
    const std::function<void(MetricFamilyRegistrar&)>& register_all);

// Series of an RPC duration family (labels method, code), one per (method,
// absl::StatusCode) created on first use with RpcLatencyBuckets(); a code
// outside 0..16 counts as UNKNOWN. Pass RPC method names only (a bounded
// set), never request data.
class RpcDurationHistograms {
 public:
  explicit RpcDurationHistograms(prometheus::Family<prometheus::Histogram>& family)
      : family_(family) {}

  // The (method, code) series, created if new.
  prometheus::Histogram& Series(absl::string_view method, absl::StatusCode code)
      ABSL_LOCKS_EXCLUDED(mu_);
  void Observe(absl::string_view method, absl::StatusCode code, absl::Duration latency) {
    Series(method, code).Observe(NonNegativeSeconds(latency));
  }

 private:
  static constexpr int kNumStatusCodes = 17;  // absl::StatusCode 0 (OK) .. 16
  using ByCode = std::array<prometheus::Histogram*, kNumStatusCodes>;

  prometheus::Family<prometheus::Histogram>& family_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, ByCode> series_ ABSL_GUARDED_BY(mu_);
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_METRIC_FAMILIES_H_

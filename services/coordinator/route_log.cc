#include "services/coordinator/route_log.h"

#include <utility>

#include "absl/base/internal/raw_logging.h"

namespace asymcache {

RouteLog::RouteLog(int64_t capacity) : capacity_(capacity) {
  ABSL_RAW_CHECK(capacity >= 1, "RouteLog capacity must be >= 1");
}

uint64_t RouteLog::Add(RouteRecord record) {
  absl::MutexLock lock(&mu_);
  uint64_t id = 0;
  do {
    id = absl::Uniform<uint64_t>(random_);
  } while (id == 0 || routes_.contains(id));
  while (static_cast<int64_t>(routes_.size()) >= capacity_ && !order_.empty()) {
    routes_.erase(order_.front());  // a taken id erases nothing
    order_.pop_front();
  }
  // Taken ids linger in order_; trim them so the deque stays bounded too.
  while (static_cast<int64_t>(order_.size()) >= 2 * capacity_ && !order_.empty()) {
    routes_.erase(order_.front());
    order_.pop_front();
  }
  routes_.emplace(id, std::move(record));
  order_.push_back(id);
  return id;
}

std::optional<RouteRecord> RouteLog::Take(uint64_t route_id) {
  absl::MutexLock lock(&mu_);
  auto it = routes_.find(route_id);
  if (it == routes_.end()) return std::nullopt;
  RouteRecord record = std::move(it->second);
  routes_.erase(it);
  return record;
}

int64_t RouteLog::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(routes_.size());
}

}  // namespace asymcache

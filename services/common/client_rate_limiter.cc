#include "services/common/client_rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "grpcpp/server_context.h"
#include "services/common/transport_security.h"

namespace asymcache {

absl::Status ClientRateLimitOptions::Validate() const {
  if (!(requests_per_second >= 0) || !std::isfinite(requests_per_second)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--client-rate-limit: must be >= 0 requests/s (0 = off), got ",
                     requests_per_second));
  }
  if (burst < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--client-rate-burst: must be >= 0 (0 = two seconds' worth), got ", burst));
  }
  if (max_clients < 1) {
    return absl::InvalidArgumentError("ClientRateLimitOptions.max_clients: must be >= 1");
  }
  return absl::OkStatus();
}

int64_t ClientRateLimitOptions::effective_burst() const {
  if (burst > 0) return burst;
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(2 * requests_per_second)));
}

ClientRateLimiter::ClientRateLimiter(ClientRateLimitOptions options,
                                     std::vector<std::string> exempt,
                                     std::function<absl::Time()> now)
    : options_(options),
      exempt_(std::make_move_iterator(exempt.begin()), std::make_move_iterator(exempt.end())),
      now_(std::move(now)) {}

absl::Status ClientRateLimiter::Admit(absl::string_view client, absl::string_view what) {
  if (!options_.enabled()) return absl::OkStatus();
  const absl::Time now = now_();
  const double burst = static_cast<double>(options_.effective_burst());
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(client);
  if (it == buckets_.end()) {
    if (static_cast<int64_t>(buckets_.size()) >= options_.max_clients) {
      auto oldest = std::min_element(buckets_.begin(), buckets_.end(),
                                     [](const auto& a, const auto& b) {
                                       return a.second.refilled < b.second.refilled;
                                     });
      buckets_.erase(oldest);
    }
    it = buckets_.emplace(std::string(client), Bucket{burst, now}).first;
  }
  Bucket& bucket = it->second;
  const double elapsed = std::max(0.0, absl::ToDoubleSeconds(now - bucket.refilled));
  bucket.tokens = std::min(burst, bucket.tokens + elapsed * options_.requests_per_second);
  bucket.refilled = now;
  if (bucket.tokens < 1.0) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "%s: client '%s' is over its limit of %g requests/s (burst %d); retry later", what,
        client, options_.requests_per_second, options_.effective_burst()));
  }
  bucket.tokens -= 1.0;
  return absl::OkStatus();
}

std::string ClientRateLimiter::ClientKey(const grpc::ServerContextBase& context) {
  const std::string identity = PeerIdentity(context);
  if (!identity.empty()) return absl::StrCat("id:", identity);
  const std::string peer_text = context.peer();  // returned by value
  absl::string_view peer = peer_text;
  if (!absl::ConsumePrefix(&peer, "ipv4:")) absl::ConsumePrefix(&peer, "ipv6:");
  // Drop the port: everything after the last ':' (an IPv6 address is bracketed).
  const size_t colon = peer.rfind(':');
  if (colon != absl::string_view::npos && peer.find(']', colon) == absl::string_view::npos) {
    peer = peer.substr(0, colon);
  }
  return absl::StrCat("ip:", peer);
}

absl::Status ClientRateLimiter::Admit(const grpc::ServerContextBase& context,
                                      absl::string_view what) {
  if (!options_.enabled()) return absl::OkStatus();
  const std::string identity = PeerIdentity(context);
  if (!identity.empty() && exempt(identity)) return absl::OkStatus();
  return Admit(ClientKey(context), what);
}

}  // namespace asymcache

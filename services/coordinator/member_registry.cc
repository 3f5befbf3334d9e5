#include "services/coordinator/member_registry.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace asymcache {

namespace {

constexpr size_t kMaxIdLength = 128;
constexpr size_t kMaxAddressLength = 256;
constexpr size_t kMaxInstanceLength = 128;
constexpr size_t kMaxCalibrationSourceLength = 1024;
constexpr size_t kMaxCalibrationPoints = 1024;

// [A-Za-z0-9._:-]{1,128}
absl::Status CheckId(absl::string_view field, absl::string_view id) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  if (id.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, " has ", id.size(), " characters, more than ", kMaxIdLength));
  }
  for (size_t i = 0; i < id.size(); ++i) {
    const char c = id[i];
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != ':' &&
        c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " '", id, "' has the character '", absl::string_view(&id[i], 1), "' at ", i,
          "; allowed are letters, digits and . _ : -"));
    }
  }
  return absl::OkStatus();
}

// host:port with a numeric port in [1, 65535] and no whitespace.
absl::Status CheckAddress(absl::string_view address) {
  if (address.empty()) return absl::InvalidArgumentError("address is empty");
  if (address.size() > kMaxAddressLength) {
    return absl::InvalidArgumentError(absl::StrCat("address has ", address.size(),
                                                   " characters, more than ", kMaxAddressLength));
  }
  for (char c : address) {
    if (absl::ascii_isspace(static_cast<unsigned char>(c)) || absl::ascii_iscntrl(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(
          absl::StrCat("address '", absl::CHexEscape(address), "' contains whitespace"));
    }
  }
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || colon == 0 ||
      !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 1 || port > 65535 ||
      !absl::ascii_isdigit(static_cast<unsigned char>(address[colon + 1]))) {
    return absl::InvalidArgumentError(
        absl::StrCat("address '", address, "' is not HOST:PORT with a port in [1, 65535]"));
  }
  return absl::OkStatus();
}

// FAILED_PRECONDITION naming the first field (of those that fix a block) in
// which `got` differs from the cluster's shape.
absl::Status CheckClusterShape(const ModelConfig& got, const ModelConfig& cluster,
                               absl::string_view origin) {
  auto differs = [&](absl::string_view field, int64_t g, int64_t want) {
    return absl::FailedPreconditionError(
        absl::StrCat("model.", field, " is ", g, " but the cluster's model shape ('",
                     cluster.name, "', ", origin, ") has ", want));
  };
  if (got.num_layers != cluster.num_layers) {
    return differs("num_layers", got.num_layers, cluster.num_layers);
  }
  if (got.num_q_heads != cluster.num_q_heads) {
    return differs("num_q_heads", got.num_q_heads, cluster.num_q_heads);
  }
  if (got.num_kv_heads != cluster.num_kv_heads) {
    return differs("num_kv_heads", got.num_kv_heads, cluster.num_kv_heads);
  }
  if (got.head_dim != cluster.head_dim) return differs("head_dim", got.head_dim, cluster.head_dim);
  if (got.dtype_bytes != cluster.dtype_bytes) {
    return differs("dtype_bytes", got.dtype_bytes, cluster.dtype_bytes);
  }
  if (got.block_tokens != cluster.block_tokens) {
    return differs("block_tokens", got.block_tokens, cluster.block_tokens);
  }
  return absl::OkStatus();
}

bool CanPrefill(MemberRole role) { return role != MemberRole::kDecode; }
bool CanDecode(MemberRole role) { return role != MemberRole::kPrefill; }

}  // namespace

absl::string_view MemberKindName(MemberKind kind) {
  switch (kind) {
    case MemberKind::kDaemon: return "daemon";
    case MemberKind::kWorker: return "worker";
  }
  return "unknown";
}

absl::string_view MemberRoleName(MemberRole role) {
  switch (role) {
    case MemberRole::kBoth: return "both";
    case MemberRole::kPrefill: return "prefill";
    case MemberRole::kDecode: return "decode";
  }
  return "unknown";
}

absl::Status MemberRegistryOptions::Validate() const {
  if (member_timeout <= absl::ZeroDuration() || member_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "member_timeout must be positive and finite, got ", absl::FormatDuration(member_timeout)));
  }
  if (max_members < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_members must be >= 1, got ", max_members));
  }
  if (slots < max_members) {
    return absl::InvalidArgumentError(
        absl::StrCat("slots (", slots, ") must be >= max_members (", max_members, ")"));
  }
  if (expected_model.has_value()) {
    if (absl::Status s = expected_model->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("expected_model: ", s.message()));
    }
  }
  if (agent_affinity_ttl <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("agent_affinity_ttl must be positive, got ",
                                                   absl::FormatDuration(agent_affinity_ttl)));
  }
  if (max_agent_jobs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_agent_jobs must be >= 1, got ", max_agent_jobs));
  }
  if (rejoin_ramp < absl::ZeroDuration() || rejoin_ramp == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("rejoin_ramp must be finite and >= 0, got ",
                                                   absl::FormatDuration(rejoin_ramp)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MemberRegistry>> MemberRegistry::Create(
    MemberRegistryOptions options, Clock* clock) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (clock == nullptr) return absl::InvalidArgumentError("MemberRegistry: clock is null");
  return std::unique_ptr<MemberRegistry>(new MemberRegistry(std::move(options), clock));
}

MemberRegistry::MemberRegistry(MemberRegistryOptions options, Clock* clock)
    : options_(std::move(options)), clock_(clock) {
  absl::MutexLock lock(&mu_);
  cluster_model_ = options_.expected_model;
  free_slots_.reserve(options_.slots);
  for (int s = options_.slots - 1; s >= 0; --s) free_slots_.push_back(static_cast<MemberSlot>(s));
}

absl::Status MemberRegistry::ValidateRegistration(const MemberRegistration& r) const {
  if (absl::Status s = CheckId("member_id", r.member_id); !s.ok()) return s;
  if (r.kind != MemberKind::kDaemon && r.kind != MemberKind::kWorker) {
    return absl::InvalidArgumentError("kind must be daemon or worker");
  }
  if (absl::Status s = CheckAddress(r.address); !s.ok()) return s;
  if (r.gpu < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("gpu must be a GPU index or -1 (CPU backend), got ", r.gpu));
  }
  if (r.role != MemberRole::kBoth && r.role != MemberRole::kPrefill &&
      r.role != MemberRole::kDecode) {
    return absl::InvalidArgumentError("role must be both, prefill or decode");
  }
  if (r.instance.size() > kMaxInstanceLength) {
    return absl::InvalidArgumentError(absl::StrCat("instance has ", r.instance.size(),
                                                   " characters, more than ", kMaxInstanceLength));
  }
  // Strings a member sends are stored for its lifetime: bounded.
  if (r.model.has_value() && r.model->name.size() > kMaxIdLength) {
    return absl::InvalidArgumentError(absl::StrCat("model.name has ", r.model->name.size(),
                                                   " characters, more than ", kMaxIdLength));
  }
  if (r.calibration.has_value()) {
    if (r.calibration->device.size() > kMaxAddressLength ||
        r.calibration->source.size() > kMaxCalibrationSourceLength) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration.device/source have ", r.calibration->device.size(), "/",
          r.calibration->source.size(), " characters, more than ", kMaxAddressLength, "/",
          kMaxCalibrationSourceLength));
    }
    if (r.calibration->linear_step_s.size() > kMaxCalibrationPoints) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration.linear_step has ", r.calibration->linear_step_s.size(),
                       " points, more than ", kMaxCalibrationPoints));
    }
  }
  if (r.model.has_value()) {
    if (absl::Status s = r.model->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model: ", s.message()));
    }
  }
  if (r.kind == MemberKind::kDaemon) {
    if (!r.daemon_id.empty()) {
      return absl::InvalidArgumentError(
          "daemon_id is for workers (the daemon they run against); a daemon must leave it empty");
    }
    if (!r.model.has_value()) {
      return absl::InvalidArgumentError("model is required for daemons (it fixes the block size)");
    }
    if (!r.calibration.has_value()) {
      return absl::InvalidArgumentError(
          "calibration is required for daemons (it is the daemon's cost model)");
    }
    if (absl::Status s = r.calibration->Validate(); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("calibration: ", s.message()));
    }
  } else {
    if (absl::Status s = CheckId("daemon_id", r.daemon_id); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(s.message(), " (a worker names the daemon it runs against)"));
    }
    if (r.daemon_id == r.member_id) {
      return absl::InvalidArgumentError(
          absl::StrCat("daemon_id '", r.daemon_id, "' is the worker's own member_id"));
    }
  }
  if (r.model.has_value() && cluster_model_.has_value()) {
    // A daemon replacing the only daemon may change the shape: it is the
    // cluster's first daemon again.
    const auto it = members_.find(r.member_id);
    const bool only_daemon = r.kind == MemberKind::kDaemon && !options_.expected_model &&
                             daemons_ == 1 && it != members_.end() &&
                             it->second.kind == MemberKind::kDaemon;
    if (!only_daemon) {
      if (absl::Status s = CheckClusterShape(
              *r.model, *cluster_model_,
              options_.expected_model ? "configured" : "fixed by the first daemon that registered");
          !s.ok()) {
        return s;
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<RegisterResult> MemberRegistry::Register(const MemberRegistration& r) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = ValidateRegistration(r); !s.ok()) return s;
  auto it = members_.find(r.member_id);
  const bool exists = it != members_.end();
  if (!exists && static_cast<int>(members_.size()) >= options_.max_members) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the member table is full (", options_.max_members, " members); cannot register '",
        r.member_id, "'"));
  }
  const bool was_daemon = exists && it->second.kind == MemberKind::kDaemon;
  if (r.kind == MemberKind::kDaemon && !was_daemon && free_slots_.empty()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no free daemon slot (", options_.slots, " slots, some still draining); cannot register '",
        r.member_id, "'"));
  }

  RegisterResult result;
  result.replaced = exists;
  auto identity = std::make_shared<const MemberIdentity>(MemberIdentity{r.member_id, r.address});

  if (r.kind == MemberKind::kDaemon) {
    auto cost = std::make_shared<const CostModel>(*r.model, *r.calibration);
    if (was_daemon) {
      Member& m = it->second;
      const bool same_run = m.identity->address == r.address && m.instance == r.instance;
      if (!same_run) {
        // The daemon restarted (or moved): its blocks and its jobs' pins are
        // gone; it is ramped in again.
        StartRamp(m, now);
        result.reset_slot = m.slot;
        result.watch = WatchTarget{m.slot, r.member_id, r.address};
        m.identity = identity;
        m.load = MemberLoad{};
        m.pending_prefill_tokens = 0;
        m.pending_decode = 0;
        DropAffinitiesOf(r.member_id);
      }
      m.gpu = r.gpu;
      m.role = r.role;
      m.instance = r.instance;
      m.model = r.model;
      m.cost = std::move(cost);
      m.last_heartbeat = now;
      if (daemons_ == 1 && !options_.expected_model) cluster_model_ = *r.model;
      return result;
    }
    if (exists) RemoveLocked(r.member_id);  // a worker id becomes a daemon
    Member m;
    m.identity = identity;
    m.kind = MemberKind::kDaemon;
    m.gpu = r.gpu;
    m.role = r.role;
    m.instance = r.instance;
    m.model = r.model;
    m.cost = std::move(cost);
    m.slot = free_slots_.back();
    free_slots_.pop_back();
    m.last_heartbeat = now;
    // It left and is back as another run: an empty pool.
    if (auto gone = departed_daemons_.find(r.member_id); gone != departed_daemons_.end()) {
      if (gone->second != r.instance) StartRamp(m, now);
      departed_daemons_.erase(gone);
    }
    result.watch = WatchTarget{m.slot, r.member_id, r.address};
    members_.emplace(r.member_id, std::move(m));
    ++daemons_;
    if (!cluster_model_.has_value()) cluster_model_ = *r.model;
    return result;
  }

  // A worker.
  if (was_daemon) {
    const RemovedMember removed = RemoveLocked(r.member_id);
    result.reset_slot = removed.slot;
    result.release_reset_slot = true;
    it = members_.end();
  } else if (exists) {
    // Detach from the daemon it named before.
    auto w = workers_of_.find(it->second.daemon_id);
    if (w != workers_of_.end()) {
      w->second.erase(r.member_id);
      if (w->second.empty()) workers_of_.erase(w);
    }
  }
  Member m;
  if (it != members_.end()) m = std::move(it->second);
  m.identity = identity;
  m.kind = MemberKind::kWorker;
  m.gpu = r.gpu;
  m.role = r.role;
  m.daemon_id = r.daemon_id;
  m.instance = r.instance;
  m.model = r.model;
  m.cost.reset();
  m.last_heartbeat = now;
  members_[r.member_id] = std::move(m);
  workers_of_[r.daemon_id].insert(r.member_id);
  return result;
}

absl::Status MemberRegistry::Heartbeat(absl::string_view member_id, const MemberLoad& load) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  auto it = members_.find(member_id);
  if (it == members_.end()) {
    return absl::NotFoundError(absl::StrCat("member '", member_id,
                                            "' is not registered (expired or unknown to this "
                                            "coordinator); register again"));
  }
  Member& m = it->second;
  if (now - m.last_heartbeat > options_.member_timeout) {
    return absl::NotFoundError(absl::StrCat(
        "member '", member_id, "' expired (no heartbeat for ",
        absl::FormatDuration(now - m.last_heartbeat), ", timeout ",
        absl::FormatDuration(options_.member_timeout), "); register again"));
  }
  m.load = load;
  m.pending_prefill_tokens = 0;
  m.pending_decode = 0;
  m.last_heartbeat = now;
  return absl::OkStatus();
}

absl::StatusOr<RemovedMember> MemberRegistry::Deregister(absl::string_view member_id) {
  absl::MutexLock lock(&mu_);
  if (!members_.contains(member_id)) {
    return absl::NotFoundError(absl::StrCat("member '", member_id, "' is not registered"));
  }
  return RemoveLocked(member_id);
}

std::vector<RemovedMember> MemberRegistry::ExpireMembers() {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  std::vector<std::string> expired;
  for (const auto& [id, m] : members_) {
    if (now - m.last_heartbeat > options_.member_timeout) expired.push_back(id);
  }
  std::sort(expired.begin(), expired.end());
  std::vector<RemovedMember> removed;
  removed.reserve(expired.size());
  for (const std::string& id : expired) removed.push_back(RemoveLocked(id));
  return removed;
}

void MemberRegistry::ReleaseSlot(MemberSlot slot) {
  absl::MutexLock lock(&mu_);
  free_slots_.push_back(slot);
  // Keep the lowest slot on top (slots stay dense, the index's per-slot
  // arrays stay small in practice).
  std::sort(free_slots_.begin(), free_slots_.end(), std::greater<MemberSlot>());
}

RemovedMember MemberRegistry::RemoveLocked(absl::string_view member_id) {
  auto it = members_.find(member_id);
  RemovedMember removed;
  removed.member_id = std::string(member_id);
  removed.kind = it->second.kind;
  if (it->second.kind == MemberKind::kDaemon) {
    removed.slot = it->second.slot;
    --daemons_;
    DropAffinitiesOf(member_id);
    if (departed_daemons_.insert_or_assign(std::string(member_id), it->second.instance).second) {
      departed_order_.push_back(std::string(member_id));
      // Bounded: the oldest departures are forgotten (ids that came back
      // are skipped lazily).
      while (static_cast<int>(departed_order_.size()) > options_.max_members) {
        departed_daemons_.erase(departed_order_.front());
        departed_order_.erase(departed_order_.begin());
      }
    }
  } else {
    auto w = workers_of_.find(it->second.daemon_id);
    if (w != workers_of_.end()) {
      w->second.erase(member_id);
      if (w->second.empty()) workers_of_.erase(w);
    }
  }
  members_.erase(it);
  if (daemons_ == 0 && !options_.expected_model) cluster_model_.reset();
  return removed;
}

void MemberRegistry::StartRamp(Member& m, absl::Time now) const {
  if (options_.rejoin_ramp <= absl::ZeroDuration()) return;
  m.ramp_start = now;
  m.ramp_offered = 0;
  m.ramp_taken = 0;
}

double MemberRegistry::RampWeight(const Member& m, absl::Time now) const {
  if (m.ramp_start == absl::InfinitePast() || options_.rejoin_ramp <= absl::ZeroDuration()) {
    return 1;
  }
  const double f = absl::FDivDuration(now - m.ramp_start, options_.rejoin_ramp);
  return std::clamp(f, 0.0, 1.0);
}

void MemberRegistry::CountRampRoute(absl::Span<const std::string> candidates,
                                    absl::string_view chosen) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  for (const std::string& id : candidates) {
    auto it = members_.find(id);
    if (it == members_.end() || RampWeight(it->second, now) >= 1) continue;
    ++it->second.ramp_offered;
    if (id == chosen) ++it->second.ramp_taken;
  }
}

bool MemberRegistry::IsLiveDaemonLocked(absl::string_view id) const {
  auto it = members_.find(id);
  return it != members_.end() && it->second.kind == MemberKind::kDaemon &&
         clock_->Now() - it->second.last_heartbeat <= options_.member_timeout;
}

MemberRole MemberRegistry::EffectiveRoleLocked(const Member& daemon) const {
  auto w = workers_of_.find(daemon.identity->member_id);
  if (w == workers_of_.end()) return daemon.role;
  const absl::Time now = clock_->Now();
  bool prefill = false;
  bool decode = false;
  bool any = false;
  for (const std::string& id : w->second) {
    auto it = members_.find(id);
    if (it == members_.end() || now - it->second.last_heartbeat > options_.member_timeout) continue;
    any = true;
    prefill |= CanPrefill(it->second.role);
    decode |= CanDecode(it->second.role);
  }
  if (!any) return daemon.role;
  if (prefill && decode) return MemberRole::kBoth;
  return prefill ? MemberRole::kPrefill : MemberRole::kDecode;
}

RoutingView MemberRegistry::View() const {
  const absl::Time now = clock_->Now();
  RoutingView view;
  absl::ReaderMutexLock lock(&mu_);
  view.model = cluster_model_;
  for (const auto& [id, m] : members_) {
    if (m.kind != MemberKind::kDaemon || now - m.last_heartbeat > options_.member_timeout) continue;
    RoutingMember r;
    r.slot = m.slot;
    r.daemon = m.identity;
    r.cost = m.cost;
    r.free_blocks = m.load.free_blocks;
    r.capacity_blocks = m.load.capacity_blocks;
    r.busy_blocks = m.load.busy_blocks;
    if (auto c = committed_blocks_.find(id); c != committed_blocks_.end()) {
      r.committed_blocks = c->second;
    }
    r.ramp_weight = RampWeight(m, now);
    // Open while taking this route keeps its share of the routes it was
    // offered within the weight.
    r.ramp_open = r.ramp_weight >= 1 ||
                  static_cast<double>(m.ramp_taken + 1) <=
                      r.ramp_weight * static_cast<double>(m.ramp_offered + 1);
    r.queued_prefill_tokens = m.load.queued_prefill_tokens + m.pending_prefill_tokens;
    int64_t worker_decode = 0;
    bool any_worker = false;
    bool prefill = false;
    bool decode = false;
    int64_t best_prefill_load = 0;
    int64_t best_decode_load = 0;
    if (auto w = workers_of_.find(id); w != workers_of_.end()) {
      for (const std::string& worker_id : w->second) {  // id order: ties go to the first
        auto wi = members_.find(worker_id);
        if (wi == members_.end()) continue;
        const Member& worker = wi->second;
        if (now - worker.last_heartbeat > options_.member_timeout) continue;
        any_worker = true;
        const int64_t queued = worker.load.queued_prefill_tokens + worker.pending_prefill_tokens;
        const int64_t decoding = worker.load.decode_batch + worker.pending_decode;
        worker_decode += decoding;
        if (CanPrefill(worker.role)) {
          prefill = true;
          r.queued_prefill_tokens += queued;
          if (r.prefill_worker == nullptr || queued < best_prefill_load) {
            r.prefill_worker = worker.identity;
            best_prefill_load = queued;
          }
        }
        if (CanDecode(worker.role)) {
          decode = true;
          if (r.decode_worker == nullptr || decoding < best_decode_load) {
            r.decode_worker = worker.identity;
            best_decode_load = decoding;
          }
        }
      }
    }
    if (any_worker) {
      r.decode_batch = worker_decode + m.pending_decode;
      r.effective_role = prefill && decode ? MemberRole::kBoth
                         : prefill         ? MemberRole::kPrefill
                                           : MemberRole::kDecode;
    } else {
      r.decode_batch = m.load.decode_batch + m.pending_decode;
      r.effective_role = m.role;
    }
    if (CanPrefill(r.effective_role)) {
      view.prefill.push_back(r);
    }
    if (r.effective_role == MemberRole::kDecode) view.decode.push_back(std::move(r));
  }
  auto by_slot = [](const RoutingMember& a, const RoutingMember& b) { return a.slot < b.slot; };
  std::sort(view.prefill.begin(), view.prefill.end(), by_slot);
  std::sort(view.decode.begin(), view.decode.end(), by_slot);
  return view;
}

void MemberRegistry::AddPending(absl::string_view member_id, int64_t prefill_tokens,
                                int64_t decode_sequences) {
  absl::MutexLock lock(&mu_);
  auto it = members_.find(member_id);
  if (it == members_.end()) return;
  it->second.pending_prefill_tokens += std::max<int64_t>(0, prefill_tokens);
  it->second.pending_decode += std::max<int64_t>(0, decode_sequences);
}

std::optional<MemberSlot> MemberRegistry::AgentAffinity(absl::string_view job_id) const {
  const absl::Time now = clock_->Now();
  absl::ReaderMutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.expires <= now) return std::nullopt;
  if (!IsLiveDaemonLocked(it->second.daemon_id)) return std::nullopt;
  return members_.find(it->second.daemon_id)->second.slot;
}

void MemberRegistry::EraseAgentJob(absl::string_view job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  job_expiry_.erase({it->second.expires, it->first});
  auto of = jobs_of_.find(it->second.daemon_id);
  if (of != jobs_of_.end()) {
    of->second.erase(it->first);
    if (of->second.empty()) jobs_of_.erase(of);
  }
  auto committed = committed_blocks_.find(it->second.daemon_id);
  if (committed != committed_blocks_.end()) {
    committed->second -= it->second.blocks;
    if (committed->second <= 0) committed_blocks_.erase(committed);
  }
  jobs_.erase(it);
}

void MemberRegistry::RecordAgentRoute(absl::string_view job_id, absl::string_view daemon_id,
                                      bool last_step, int64_t context_blocks) {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  EraseAgentJob(job_id);
  if (last_step) return;
  while (static_cast<int64_t>(jobs_.size()) >= options_.max_agent_jobs && !job_expiry_.empty()) {
    EraseAgentJob(std::string(job_expiry_.begin()->second));
  }
  const absl::Time expires = now + options_.agent_affinity_ttl;
  std::string job(job_id);
  const int64_t blocks = std::max<int64_t>(0, context_blocks);
  jobs_.emplace(job, AgentJob{std::string(daemon_id), expires, blocks});
  job_expiry_.insert({expires, job});
  jobs_of_[daemon_id].insert(std::move(job));
  if (blocks > 0) committed_blocks_[daemon_id] += blocks;
}

void MemberRegistry::DropAffinitiesOf(absl::string_view daemon_id) {
  auto of = jobs_of_.find(daemon_id);
  if (of == jobs_of_.end()) return;
  const absl::flat_hash_set<std::string> jobs = std::move(of->second);
  jobs_of_.erase(of);
  committed_blocks_.erase(daemon_id);
  for (const std::string& job : jobs) {
    auto it = jobs_.find(job);
    if (it == jobs_.end()) continue;
    job_expiry_.erase({it->second.expires, it->first});
    jobs_.erase(it);
  }
}

int64_t MemberRegistry::ExpireAgentJobs() {
  const absl::Time now = clock_->Now();
  absl::MutexLock lock(&mu_);
  int64_t expired = 0;
  while (!job_expiry_.empty() && job_expiry_.begin()->first <= now) {
    EraseAgentJob(std::string(job_expiry_.begin()->second));
    ++expired;
  }
  return expired;
}

int64_t MemberRegistry::agent_jobs() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int64_t>(jobs_.size());
}

std::vector<MemberSnapshot> MemberRegistry::List() const {
  const absl::Time now = clock_->Now();
  std::vector<MemberSnapshot> out;
  absl::ReaderMutexLock lock(&mu_);
  out.reserve(members_.size());
  for (const auto& [id, m] : members_) {
    MemberSnapshot s;
    s.member_id = id;
    s.kind = m.kind;
    s.address = m.identity->address;
    s.gpu = m.gpu;
    s.role = m.role;
    s.effective_role = m.kind == MemberKind::kDaemon ? EffectiveRoleLocked(m) : m.role;
    s.daemon_id = m.daemon_id;
    s.instance = m.instance;
    s.load = m.load;
    s.pending_prefill_tokens = m.pending_prefill_tokens;
    s.since_heartbeat = now - m.last_heartbeat;
    if (m.kind == MemberKind::kDaemon) s.slot = m.slot;
    s.ramp_weight = RampWeight(m, now);
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(),
            [](const MemberSnapshot& a, const MemberSnapshot& b) { return a.member_id < b.member_id; });
  return out;
}

std::optional<ModelConfig> MemberRegistry::cluster_model() const {
  absl::ReaderMutexLock lock(&mu_);
  return cluster_model_;
}

int MemberRegistry::members() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<int>(members_.size());
}

}  // namespace asymcache

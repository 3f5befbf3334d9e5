#include "cachecore/agent_pins.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace asymcache {
namespace {

bool FinitePositive(absl::Duration d) {
  return d > absl::ZeroDuration() && d != absl::InfiniteDuration();
}

absl::Status Invalid(absl::string_view field, absl::string_view rule, absl::string_view got) {
  return absl::InvalidArgumentError(
      absl::StrCat("AgentPinOptions.", field, " must be ", rule, ", got ", got));
}

}  // namespace

absl::string_view PinOutcomeName(PinOutcome outcome) {
  switch (outcome) {
    case PinOutcome::kPinned: return "pinned";
    case PinOutcome::kLastStep: return "last_step";
    case PinOutcome::kNoBlocks: return "no_blocks";
    case PinOutcome::kWaitTooLong: return "wait_too_long";
    case PinOutcome::kNotWorthIt: return "not_worth_it";
    case PinOutcome::kCapacityCap: return "capacity_cap";
  }
  return "unknown";
}

absl::Status AgentPinOptions::Validate() const {
  if (!(max_pinned_fraction >= 0.0 && max_pinned_fraction <= 1.0)) {
    return Invalid("max_pinned_fraction", "in [0, 1]", absl::StrCat(max_pinned_fraction));
  }
  if (!FinitePositive(max_ttl)) {
    return Invalid("max_ttl", "positive and finite", absl::FormatDuration(max_ttl));
  }
  if (!FinitePositive(default_ttl) || default_ttl > max_ttl) {
    return Invalid("default_ttl", "positive and <= max_ttl", absl::FormatDuration(default_ttl));
  }
  if (!(ttl_quantile > 0.0 && ttl_quantile <= 1.0)) {
    return Invalid("ttl_quantile", "in (0, 1]", absl::StrCat(ttl_quantile));
  }
  if (!(ttl_margin >= 1.0 && std::isfinite(ttl_margin))) {
    return Invalid("ttl_margin", "finite and >= 1", absl::StrCat(ttl_margin));
  }
  if (min_samples < 1) {
    return Invalid("min_samples", ">= 1", absl::StrCat(min_samples));
  }
  if (max_samples_per_tool < min_samples) {
    return Invalid("max_samples_per_tool", ">= min_samples", absl::StrCat(max_samples_per_tool));
  }
  if (max_tools < 1) {
    return Invalid("max_tools", ">= 1", absl::StrCat(max_tools));
  }
  if (!(hold_cost_s_per_block_s >= 0.0 && std::isfinite(hold_cost_s_per_block_s))) {
    return Invalid("hold_cost_s_per_block_s", "finite and >= 0",
                   absl::StrCat(hold_cost_s_per_block_s));
  }
  if (max_tool_wait_tracked == absl::InfiniteDuration() || max_tool_wait_tracked < max_ttl) {
    return Invalid("max_tool_wait_tracked", "finite and >= max_ttl",
                   absl::FormatDuration(max_tool_wait_tracked));
  }
  return absl::OkStatus();
}

AgentPinTable::AgentPinTable(int64_t pool_capacity_blocks, AgentPinOptions options, Clock* clock)
    : options_(std::move(options)),
      cap_blocks_(static_cast<int64_t>(
          std::floor(options_.max_pinned_fraction * static_cast<double>(pool_capacity_blocks)))),
      clock_(clock),
      stats_(std::max(options_.max_samples_per_tool, 1), std::max(options_.max_tools, 1)) {
  const absl::Status valid = options_.Validate();
  if (pool_capacity_blocks < 1 || clock_ == nullptr || !valid.ok()) {
    std::fprintf(stderr, "AgentPinTable: pool_capacity_blocks=%lld clock=%s options: %s\n",
                 static_cast<long long>(pool_capacity_blocks), clock_ ? "set" : "null",
                 valid.ToString().c_str());
    std::abort();
  }
}

AgentPinTable::~AgentPinTable() {
  // Release the pins before the members go, in one place, so the pool sees
  // every unpin even if member order changes.
  std::vector<Pins> released;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, job] : jobs_) DropPinsLocked(job, &released);
    jobs_.clear();
  }
}

absl::Duration AgentPinTable::TtlForLocked(absl::string_view tool) const {
  if (stats_.count(tool) < options_.min_samples) return options_.default_ttl;
  const std::optional<absl::Duration> quantile = stats_.Quantile(tool, options_.ttl_quantile);
  if (!quantile.has_value()) return options_.default_ttl;
  return *quantile * options_.ttl_margin;
}

absl::Duration AgentPinTable::TtlFor(absl::string_view tool) const {
  absl::MutexLock lock(&mu_);
  return TtlForLocked(tool);
}

int AgentPinTable::ToolSamples(absl::string_view tool) const {
  absl::MutexLock lock(&mu_);
  return stats_.count(tool);
}

void AgentPinTable::DropPinsLocked(Job& job, std::vector<Pins>* released) {
  const int64_t blocks = job.pins.size();
  if (blocks == 0) return;
  pinned_blocks_ -= blocks;
  --pinned_jobs_;
  released->push_back(std::move(job.pins));
  job.pins = Pins{};
}

PinDecision AgentPinTable::PinJob(absl::string_view job_id, absl::string_view tool,
                                  bool last_step, std::vector<BlockPool::PinHandle> pins,
                                  double expected_rebuild_cost_s) {
  Pins bundle;
  bundle.handles = std::move(pins);
  std::vector<Pins> released;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  return PinJobLocked(job_id, tool, last_step, std::move(bundle), expected_rebuild_cost_s,
                      &released);
}

PinDecision AgentPinTable::PinJob(absl::string_view job_id, absl::string_view tool,
                                  bool last_step, BlockPool::PinSet pins,
                                  double expected_rebuild_cost_s) {
  Pins bundle;
  bundle.set = std::move(pins);
  std::vector<Pins> released;  // destroyed after the lock is released
  absl::MutexLock lock(&mu_);
  return PinJobLocked(job_id, tool, last_step, std::move(bundle), expected_rebuild_cost_s,
                      &released);
}

PinDecision AgentPinTable::PinJobLocked(absl::string_view job_id, absl::string_view tool,
                                        bool last_step, Pins pins, double expected_rebuild_cost_s,
                                        std::vector<Pins>* released) {
  const absl::Time now = clock_->Now();
  // Whatever the job held before is released: the new decision replaces it.
  auto it = jobs_.find(job_id);
  if (it != jobs_.end()) DropPinsLocked(it->second, released);

  PinDecision decision;
  if (last_step) {
    if (it != jobs_.end()) jobs_.erase(it);
    released->push_back(std::move(pins));
    decision.outcome = PinOutcome::kLastStep;
    decision.reason = "last step of the job: nothing to keep";
    return decision;
  }

  // The job now waits on `tool`; time it whether or not it is pinned.
  if (it == jobs_.end()) it = jobs_.emplace(std::string(job_id), Job{}).first;
  Job& job = it->second;
  job.tool = std::string(tool);
  job.tool_started = now;

  const int64_t blocks = pins.size();
  decision.ttl = TtlForLocked(tool);
  const double ttl_s = absl::ToDoubleSeconds(decision.ttl);
  const double saving_s = options_.ttl_quantile * expected_rebuild_cost_s;
  const double hold_cost_s =
      options_.hold_cost_s_per_block_s * static_cast<double>(blocks) * ttl_s;

  if (blocks == 0) {
    decision.outcome = PinOutcome::kNoBlocks;
    decision.reason = "no blocks handed over";
  } else if (decision.ttl > options_.max_ttl) {
    decision.outcome = PinOutcome::kWaitTooLong;
    decision.reason = absl::StrFormat("tool '%s' TTL %s exceeds max_ttl %s", std::string(tool),
                                      absl::FormatDuration(decision.ttl),
                                      absl::FormatDuration(options_.max_ttl));
  } else if (!(saving_s > hold_cost_s)) {
    decision.outcome = PinOutcome::kNotWorthIt;
    decision.reason = absl::StrFormat(
        "expected saving %.6fs (%.2f x rebuild %.6fs) <= holding cost %.6fs (%d blocks for %s)",
        saving_s, options_.ttl_quantile, expected_rebuild_cost_s, hold_cost_s, blocks,
        absl::FormatDuration(decision.ttl));
  } else if (pinned_blocks_ + blocks > cap_blocks_) {
    decision.outcome = PinOutcome::kCapacityCap;
    decision.reason = absl::StrFormat(
        "pinning %d blocks would exceed the cap: %d pinned + %d > %d (%.2f of the pool)", blocks,
        pinned_blocks_, blocks, cap_blocks_, options_.max_pinned_fraction);
  } else {
    decision.pinned = true;
    decision.outcome = PinOutcome::kPinned;
    decision.reason = absl::StrFormat("pinned %d blocks for %s (tool '%s', %d samples)", blocks,
                                      absl::FormatDuration(decision.ttl), std::string(tool),
                                      stats_.count(tool));
    job.pins = std::move(pins);
    job.pinned_at = now;
    job.expires_at = now + decision.ttl;
    job.expected_benefit_s = expected_rebuild_cost_s;
    job.pin_order = next_pin_order_++;
    pinned_blocks_ += blocks;
    ++pinned_jobs_;
    return decision;
  }
  released->push_back(std::move(pins));
  return decision;
}

bool AgentPinTable::OnJobResumed(absl::string_view job_id) {
  std::vector<Pins> released;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return false;
  Job& job = it->second;
  stats_.Record(job.tool, clock_->Now() - job.tool_started);
  DropPinsLocked(job, &released);
  jobs_.erase(it);
  return true;
}

bool AgentPinTable::Unpin(absl::string_view job_id) {
  std::vector<Pins> released;
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.pins.size() == 0) return false;
  DropPinsLocked(it->second, &released);
  return true;
}

absl::Status AgentPinTable::Refresh(absl::string_view job_id, absl::Duration ttl) {
  if (ttl <= absl::ZeroDuration() || ttl > options_.max_ttl) {
    return absl::InvalidArgumentError(absl::StrCat("Refresh: ttl must be in (0, ",
                                                   absl::FormatDuration(options_.max_ttl),
                                                   "], got ", absl::FormatDuration(ttl)));
  }
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.pins.size() == 0) {
    return absl::NotFoundError(absl::StrCat("Refresh: job '", job_id, "' holds no pins"));
  }
  it->second.expires_at = clock_->Now() + ttl;
  return absl::OkStatus();
}

int64_t AgentPinTable::ExpirePins() {
  std::vector<Pins> released;
  absl::MutexLock lock(&mu_);
  const absl::Time now = clock_->Now();
  int64_t expired = 0;
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    Job& job = it->second;
    if (job.pins.size() > 0 && job.expires_at <= now) {
      DropPinsLocked(job, &released);
      ++expired;
    }
    if (now - job.tool_started >= options_.max_tool_wait_tracked) {
      // Abandoned or very slow: remember that the tool took at least this long.
      stats_.Record(job.tool, options_.max_tool_wait_tracked);
      DropPinsLocked(job, &released);
      jobs_.erase(it++);
    } else {
      ++it;
    }
  }
  return expired;
}

int64_t AgentPinTable::ReleaseUnderPressure(int64_t blocks_needed, absl::Duration longest_wait) {
  std::vector<Pins> released;
  absl::MutexLock lock(&mu_);
  if (blocks_needed <= 0) return 0;
  const double waited_s = absl::ToDoubleSeconds(longest_wait);
  // Candidates: pins whose benefit is already exceeded by the wait they cause.
  std::vector<std::pair<std::tuple<absl::Time, uint64_t>, Job*>> candidates;
  for (auto& [id, job] : jobs_) {
    if (job.pins.size() > 0 && job.expected_benefit_s < waited_s) {
      candidates.push_back({{job.pinned_at, job.pin_order}, &job});
    }
  }
  std::sort(candidates.begin(), candidates.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  int64_t freed = 0;
  for (auto& [order, job] : candidates) {
    if (freed >= blocks_needed) break;
    freed += job->pins.size();
    DropPinsLocked(*job, &released);
  }
  return freed;
}

int64_t AgentPinTable::pinned_blocks() const {
  absl::MutexLock lock(&mu_);
  return pinned_blocks_;
}

size_t AgentPinTable::pinned_jobs() const {
  absl::MutexLock lock(&mu_);
  return pinned_jobs_;
}

size_t AgentPinTable::waiting_jobs() const {
  absl::MutexLock lock(&mu_);
  return jobs_.size();
}

std::vector<JobPinInfo> AgentPinTable::List() const {
  std::vector<std::pair<uint64_t, JobPinInfo>> ordered;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, job] : jobs_) {
      if (job.pins.size() == 0) continue;
      ordered.push_back({job.pin_order, JobPinInfo{id, job.tool, job.pins.size(), job.pinned_at,
                                                   job.expires_at, job.expected_benefit_s}});
    }
  }
  std::sort(ordered.begin(), ordered.end(), [](const auto& a, const auto& b) {
    return std::tie(a.second.pinned_at, a.first) < std::tie(b.second.pinned_at, b.first);
  });
  std::vector<JobPinInfo> out;
  out.reserve(ordered.size());
  for (auto& [order, info] : ordered) out.push_back(std::move(info));
  return out;
}

}  // namespace asymcache

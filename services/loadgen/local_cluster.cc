#include "services/loadgen/local_cluster.h"

#include <unistd.h>

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "cachecore/chunk_scheduler.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace asymcache::loadgen {
namespace {

// Where the build tree puts each binary, relative to the build root.
std::string BuildTreeDir(const std::string& binary) {
  if (binary == "asymcache-daemon") return "services/daemon";
  if (binary == "asymcache-worker") return "services/worker";
  if (binary == "asymcache-coordinator") return "services/coordinator";
  return "";
}

std::string SelfDir() {
  std::error_code error;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string(".") : self.parent_path().string();
}

}  // namespace

absl::StatusOr<std::string> FindServiceBinary(const std::string& bin_dir,
                                              const std::string& binary) {
  std::vector<std::filesystem::path> candidates;
  if (!bin_dir.empty()) {
    candidates.push_back(std::filesystem::path(bin_dir) / binary);
  } else {
    const std::filesystem::path self = SelfDir();
    candidates.push_back(self / binary);
    // Build tree: <root>/services/loadgen/asymcache-bench.
    const std::filesystem::path root = self.parent_path().parent_path();
    candidates.push_back(root / BuildTreeDir(binary) / binary);
  }
  std::vector<std::string> tried;
  for (const std::filesystem::path& path : candidates) {
    if (access(path.c_str(), X_OK) == 0) return path.string();
    tried.push_back(path.string());
  }
  return absl::NotFoundError(
      absl::StrCat(binary, " not found (looked at ", absl::StrJoin(tried, ", "), ")"));
}

absl::Status LocalClusterOptions::Validate() const {
  if (log_dir.empty()) return absl::InvalidArgumentError("log_dir: required");
  if (daemons < 1 || daemons > 64) return absl::InvalidArgumentError("daemons: must be in [1, 64]");
  if (split_roles && !coordinator) {
    return absl::InvalidArgumentError("split_roles: needs a coordinator (coordinator = true)");
  }
  if (split_roles && daemons < 2) {
    return absl::InvalidArgumentError("split_roles: needs daemons >= 2 (a prefill and a decode)");
  }
  if (backend != "host" && backend != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("backend: must be host or cuda, got '", backend, "'"));
  }
  if (chunking != "adaptive" && chunking != "fixed") {
    return absl::InvalidArgumentError(
        absl::StrCat("chunking: must be adaptive or fixed, got '", chunking, "'"));
  }
  if (absl::StatusOr<ChunkSchedulerOptions::PrefillOrder> order = ParsePrefillOrder(prefill_order);
      !order.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("prefill_order: ", order.status().message()));
  }
  if (fixed_budget_tokens < 16 || fixed_budget_tokens % 16 != 0) {
    return absl::InvalidArgumentError("fixed_budget_tokens: must be a positive multiple of 16");
  }
  if (overload_budget_tokens < 0 || overload_budget_tokens % 16 != 0) {
    return absl::InvalidArgumentError(
        "overload_budget_tokens: must be 0 (off) or a positive multiple of 16");
  }
  if (tpot_target <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("tpot_target: must be > 0");
  }
  if (absl::StatusOr<ChunkSchedulerOptions::TpotSlo> slo = ParseTpotSlo(tpot_slo); !slo.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tpot_slo: ", slo.status().message()));
  }
  if (gpus.empty()) return absl::InvalidArgumentError("gpus: at least one GPU index");
  for (int gpu : gpus) {
    if (gpu < 0) return absl::InvalidArgumentError("gpus: indices must be >= 0");
  }
  if (ready_timeout <= absl::ZeroDuration() || stop_grace <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ready_timeout, stop_grace: must be > 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<LocalCluster>> LocalCluster::Start(
    const LocalClusterOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::unique_ptr<LocalCluster> cluster(new LocalCluster(options));
  if (absl::Status s = cluster->StartAll(); !s.ok()) {
    (void)cluster->Stop();
    return s;
  }
  return cluster;
}

LocalCluster::~LocalCluster() { (void)Stop(); }

absl::StatusOr<std::unique_ptr<ServiceProcess>> LocalCluster::StartChild(
    const std::string& name, const std::string& binary, std::vector<std::string> flags) {
  absl::StatusOr<std::string> path = FindServiceBinary(options_.bin_dir, binary);
  if (!path.ok()) return path.status();
  ServiceProcessOptions child;
  child.name = name;
  child.binary = *path;
  child.flags = std::move(flags);
  child.flags.push_back("--plaintext");  // 127.0.0.1 only (see the header)
  child.stderr_path = absl::StrCat(options_.log_dir, "/", name, ".log");
  child.ready_timeout = options_.ready_timeout;
  return ServiceProcess::Start(child);
}

absl::Status LocalCluster::StartAll() {
  std::error_code error;
  std::filesystem::create_directories(options_.log_dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("log_dir: cannot create ", options_.log_dir, ": ", error.message()));
  }
  std::string coordinators;
  if (options_.coordinator) {
    absl::StatusOr<std::unique_ptr<ServiceProcess>> c = StartChild(
        "coordinator", "asymcache-coordinator",
        {"--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0",
         absl::StrCat("--model=", options_.model), "--shutdown-grace=2s"});
    if (!c.ok()) return c.status();
    coordinator_ = std::move(*c);
    coordinators = coordinator_->address();
  }
  for (int i = 0; i < options_.daemons; ++i) {
    const int gpu = options_.gpus[static_cast<size_t>(i) % options_.gpus.size()];
    const std::string id = absl::StrCat("daemon-", i);
    std::string role = "both";
    if (options_.split_roles && i < 2) role = i == 0 ? "prefill" : "decode";
    std::vector<std::string> flags = {
        "--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0",
        absl::StrCat("--model=", options_.model), absl::StrCat("--backend=", options_.backend),
        absl::StrCat("--pool-bytes=", options_.pool_bytes),
        absl::StrCat("--policy=", options_.policy), absl::StrCat("--member-id=", id),
        absl::StrCat("--role=", role), "--shutdown-grace=2s"};
    if (options_.backend == "cuda") flags.push_back(absl::StrCat("--cuda-device=", gpu));
    if (!options_.calibration.empty()) {
      flags.push_back(absl::StrCat("--calibration=", options_.calibration));
    }
    if (!coordinators.empty()) flags.push_back(absl::StrCat("--coordinators=", coordinators));
    flags.insert(flags.end(), options_.daemon_flags.begin(), options_.daemon_flags.end());
    absl::StatusOr<std::unique_ptr<ServiceProcess>> daemon =
        StartChild(id, "asymcache-daemon", std::move(flags));
    if (!daemon.ok()) return daemon.status();
    daemons_.push_back(std::move(*daemon));

    std::vector<std::string> worker_flags = {
        "--listen=127.0.0.1:0", "--metrics-host=127.0.0.1", "--metrics-port=0",
        absl::StrCat("--daemon=", daemons_.back()->address()),
        absl::StrCat("--model=", options_.model),
        absl::StrCat("--backend=", options_.backend == "cuda" ? "cuda" : "cpu"),
        absl::StrCat("--gpu=", gpu), absl::StrCat("--seed=", options_.seed),
        absl::StrCat("--cpu-threads=", options_.cpu_threads), absl::StrCat("--role=", role),
        absl::StrCat("--chunking=", options_.chunking),
        absl::StrCat("--fixed-budget-tokens=", options_.fixed_budget_tokens),
        absl::StrCat("--prefill-order=", options_.prefill_order),
        absl::StrCat("--tpot-target=", absl::FormatDuration(options_.tpot_target)),
        absl::StrCat("--tpot-slo=", options_.tpot_slo),
        absl::StrCat("--overload-budget-tokens=", options_.overload_budget_tokens),
        absl::StrCat("--member-id=worker-", i), "--shutdown-grace=2s"};
    if (!coordinators.empty()) {
      worker_flags.push_back(absl::StrCat("--coordinators=", coordinators));
      worker_flags.push_back(absl::StrCat("--daemon-member-id=", id));
    }
    if (options_.step_traces) {
      worker_flags.push_back(
          absl::StrCat("--step-trace=", options_.log_dir, "/worker-", i, ".steps.jsonl"));
    }
    worker_flags.insert(worker_flags.end(), options_.worker_flags.begin(),
                        options_.worker_flags.end());
    absl::StatusOr<std::unique_ptr<ServiceProcess>> worker =
        StartChild(absl::StrCat("worker-", i), "asymcache-worker", std::move(worker_flags));
    if (!worker.ok()) return worker.status();
    workers_.push_back(std::move(*worker));
  }
  if (coordinator_ != nullptr) return WaitForWorkersRegistered();
  return absl::OkStatus();
}

absl::Status LocalCluster::WaitForWorkersRegistered() {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::Coordinator::Stub> stub = v1::Coordinator::NewStub(channel);
  // Workers register once serving and heartbeat every second: 30 s is many
  // heartbeats past a healthy registration.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  int workers_seen = 0;
  while (absl::Now() < deadline) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    v1::ListMembersResponse response;
    if (stub->ListMembers(&context, v1::ListMembersRequest(), &response).ok()) {
      workers_seen = 0;
      for (const v1::MemberInfo& member : response.members()) {
        if (member.kind() == v1::MEMBER_KIND_WORKER) ++workers_seen;
      }
      if (workers_seen == static_cast<int>(workers_.size())) return absl::OkStatus();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "the coordinator lists ", workers_seen, " of ", workers_.size(),
      " workers 30 s after they started (logs in ", options_.log_dir, ")"));
}

std::string LocalCluster::target() const {
  return coordinator_ != nullptr ? coordinator_->address() : workers_.front()->address();
}

std::vector<std::string> LocalCluster::Endpoints() const {
  std::vector<std::string> lines;
  auto add = [&](const ServiceProcess& p) {
    lines.push_back(absl::StrCat(p.name(), "  grpc=", p.address(), "  metrics=http://127.0.0.1:",
                                 p.metrics_port(), "/metrics"));
  };
  if (coordinator_ != nullptr) add(*coordinator_);
  for (size_t i = 0; i < daemons_.size(); ++i) {
    add(*daemons_[i]);
    if (i < workers_.size()) add(*workers_[i]);
  }
  return lines;
}

absl::Status LocalCluster::Stop() {
  absl::Status first;
  auto stop = [&](std::unique_ptr<ServiceProcess>& p) {
    if (p == nullptr) return;
    absl::Status s = p->Stop(options_.stop_grace);
    if (first.ok() && !s.ok()) first = s;
    p.reset();
  };
  for (auto it = workers_.rbegin(); it != workers_.rend(); ++it) stop(*it);
  for (auto it = daemons_.rbegin(); it != daemons_.rend(); ++it) stop(*it);
  stop(coordinator_);
  workers_.clear();
  daemons_.clear();
  return first;
}

}  // namespace asymcache::loadgen

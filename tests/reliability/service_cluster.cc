#include "tests/reliability/service_cluster.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "tests/services/test_binaries.h"

#ifndef ASYMCACHE_BUILT_WORKER
#define ASYMCACHE_BUILT_WORKER nullptr
#endif
#ifndef ASYMCACHE_BUILT_GENERATE_CLIENT
#define ASYMCACHE_BUILT_GENERATE_CLIENT nullptr
#endif

namespace asymcache::testing {
namespace {

// Member ids at the coordinator.
constexpr char kDaemonMemberId[] = "reliability-daemon";
constexpr char kWorkerMemberId[] = "reliability-worker";
// Deadline of each stats/list call the helpers make.
constexpr auto kCallTimeout = std::chrono::seconds(10);
// SIGTERM grace per child at teardown; a child still running after it is
// SIGKILLed (the test has already checked what it needed).
constexpr absl::Duration kStopGrace = absl::Seconds(5);

absl::Status FromGrpc(const grpc::Status& status, absl::string_view what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(what, ": ", status.error_message()));
}

std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
  grpc::ChannelArguments args;
  // The limits test sends messages past the servers' bounds on purpose; the
  // client side must not refuse them first.
  args.SetMaxSendMessageSize(-1);
  args.SetMaxReceiveMessageSize(-1);
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
}

std::string WorkerBinary() {
  return FindTestBinary("ASYMCACHE_WORKER_BIN", ASYMCACHE_BUILT_WORKER, "asymcache-worker");
}

}  // namespace

std::string GenerateClientBinary() {
  return FindTestBinary("ASYMCACHE_GENERATE_CLIENT_BIN", ASYMCACHE_BUILT_GENERATE_CLIENT,
                        "reliability_generate_client");
}

std::string BlockAccounting::DebugString() const {
  return absl::StrCat("capacity=", capacity, " free=", free, " writing=", writing,
                      " sealed_evictable=", sealed_evictable, " pinned=", pinned,
                      " in_transfer=", in_transfer, " active_leases=", active_leases,
                      " active_exports=", active_exports,
                      " agent_pinned_blocks=", agent_pinned_blocks, " evictions=", evictions,
                      " hit_tokens=", hit_tokens, " steps=", steps);
}

absl::StatusOr<std::unique_ptr<ServiceCluster>> ServiceCluster::Start(
    const ServiceClusterOptions& options) {
  if (options.log_dir.empty()) return absl::InvalidArgumentError("log_dir is required");
  std::unique_ptr<ServiceCluster> cluster(new ServiceCluster());
  if (absl::Status s = cluster->StartAll(options); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat(s.message(), "\n", cluster->Logs()));
  }
  return cluster;
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ServiceCluster::StartChild(
    const ServiceClusterOptions& options, const std::string& name, const std::string& binary,
    std::vector<std::string> flags) {
  if (binary.empty()) {
    return absl::NotFoundError(absl::StrCat("no ", name,
                                            " binary (build it, or set its *_BIN variable; "
                                            "tests/services/test_binaries.h)"));
  }
  ChildProcessOptions child;
  child.name = name;
  child.binary = binary;
  child.flags = std::move(flags);
  child.stderr_path = absl::StrCat(options.log_dir, "/", name, ".log");
  child.ready_timeout = options.ready_timeout;
  logs_.push_back(child.stderr_path);
  return ChildProcess::Start(child);
}

absl::Status ServiceCluster::StartAll(const ServiceClusterOptions& options) {
  if (options.coordinator) {
    std::vector<std::string> flags = {"--listen=127.0.0.1:0", "--metrics-port=-1", "--plaintext",
                                      "--heartbeat-interval=200ms", "--shutdown-grace=1s"};
    flags.insert(flags.end(), options.coordinator_flags.begin(), options.coordinator_flags.end());
    absl::StatusOr<std::unique_ptr<ChildProcess>> coordinator =
        StartChild(options, "coordinator", CoordinatorBinary(), std::move(flags));
    if (!coordinator.ok()) return coordinator.status();
    coordinator_ = *std::move(coordinator);
    coordinator_stub_ = v1::Coordinator::NewStub(Channel(coordinator_->address()));
    proxy_stub_ = v1::Worker::NewStub(Channel(coordinator_->address()));
  }

  // One shared-memory name per cluster of this test process.
  static std::atomic<int> clusters{0};
  const std::string shm = absl::StrCat("/asymcache-reliability-", ::getpid(), "-", clusters++);
  std::vector<std::string> daemon_flags = {
      "--listen=127.0.0.1:0", "--metrics-port=-1", "--plaintext", "--backend=host", "--model=tiny",
      absl::StrCat("--pool-bytes=", options.pool_bytes), absl::StrCat("--shm-name=", shm),
      "--shutdown-grace=1s", "--maintenance-interval=50ms"};
  if (coordinator_ != nullptr) {
    daemon_flags.push_back(absl::StrCat("--coordinators=", coordinator_->address()));
    daemon_flags.push_back(absl::StrCat("--member-id=", kDaemonMemberId));
  }
  daemon_flags.insert(daemon_flags.end(), options.daemon_flags.begin(), options.daemon_flags.end());
  absl::StatusOr<std::unique_ptr<ChildProcess>> daemon =
      StartChild(options, "daemon", DaemonBinary(), std::move(daemon_flags));
  if (!daemon.ok()) return daemon.status();
  daemon_ = *std::move(daemon);
  daemon_->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });
  daemon_stub_ = v1::CacheDaemon::NewStub(Channel(daemon_->address()));

  if (options.worker) {
    std::vector<std::string> flags = {
        absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
        "--metrics-port=-1", "--plaintext", "--model=tiny", "--seed=7", "--cpu-threads=1",
        "--stats-interval=20ms", "--shutdown-grace=1s"};
    if (coordinator_ != nullptr) {
      flags.push_back(absl::StrCat("--coordinators=", coordinator_->address()));
      flags.push_back(absl::StrCat("--member-id=", kWorkerMemberId));
      flags.push_back(absl::StrCat("--daemon-member-id=", kDaemonMemberId));
    }
    flags.insert(flags.end(), options.worker_flags.begin(), options.worker_flags.end());
    absl::StatusOr<std::unique_ptr<ChildProcess>> worker =
        StartChild(options, "worker", WorkerBinary(), std::move(flags));
    if (!worker.ok()) return worker.status();
    worker_ = *std::move(worker);
    worker_stub_ = v1::Worker::NewStub(Channel(worker_->address()));
    if (coordinator_ != nullptr) return WaitForWorkerRegistered();
  }
  return absl::OkStatus();
}

absl::Status ServiceCluster::WaitForWorkerRegistered() {
  // Registration happens at start; the daemon's event stream connects just
  // after. Routes need both.
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  std::string last;
  while (absl::Now() < deadline) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
    v1::ListMembersResponse members;
    const grpc::Status status = coordinator_stub_->ListMembers(&context, {}, &members);
    if (status.ok()) {
      bool worker = false;
      bool daemon_watched = false;
      for (const v1::MemberInfo& m : members.members()) {
        worker |= m.kind() == v1::MEMBER_KIND_WORKER && m.daemon_id() == kDaemonMemberId;
        daemon_watched |= m.kind() == v1::MEMBER_KIND_DAEMON && m.events_connected();
      }
      if (worker && daemon_watched) return absl::OkStatus();
      last = members.DebugString();
    } else {
      last = status.error_message();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the coordinator never listed the worker and a watched daemon: ", last));
}

ServiceCluster::~ServiceCluster() {
  // Channels first: an idle connection nobody polls would hold a server's
  // graceful stop for its whole grace.
  proxy_stub_.reset();
  coordinator_stub_.reset();
  worker_stub_.reset();
  daemon_stub_.reset();
  for (ChildProcess* child : {worker_.get(), daemon_.get(), coordinator_.get()}) {
    if (child != nullptr) (void)child->Stop(kStopGrace);
  }
  for (const std::string& path : logs_) ::unlink(path.c_str());
}

absl::StatusOr<BlockAccounting> ServiceCluster::Accounting() {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  v1::GetStatsResponse stats;
  if (absl::Status s = FromGrpc(daemon_stub_->GetStats(&context, {}, &stats), "daemon GetStats");
      !s.ok()) {
    return s;
  }
  BlockAccounting a;
  a.capacity = stats.capacity_blocks();
  a.free = stats.free_blocks();
  a.writing = stats.writing_blocks();
  a.sealed_evictable = stats.sealed_blocks();
  a.pinned = stats.pinned_blocks();
  a.in_transfer = stats.in_transfer_blocks();
  a.active_leases = stats.active_leases();
  a.active_exports = stats.active_exports();
  a.agent_pinned_blocks = stats.agent_pinned_blocks();
  a.evictions = stats.evictions();
  a.hit_tokens = stats.hit_tokens();
  a.steps = stats.steps();
  return a;
}

absl::StatusOr<v1::GetWorkerStatsResponse> ServiceCluster::WorkerStats() {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + kCallTimeout);
  v1::GetWorkerStatsResponse stats;
  if (absl::Status s =
          FromGrpc(worker_stub_->GetWorkerStats(&context, {}, &stats), "worker GetWorkerStats");
      !s.ok()) {
    return s;
  }
  return stats;
}

absl::StatusOr<BlockAccounting> ServiceCluster::WaitForIdlePool(absl::Duration bound,
                                                                bool include_worker) {
  const absl::Time deadline = absl::Now() + bound;
  while (true) {
    absl::StatusOr<BlockAccounting> accounting = Accounting();
    if (!accounting.ok()) return accounting.status();
    std::string worker_state;
    bool worker_idle = true;
    if (include_worker && worker_ != nullptr) {
      absl::StatusOr<v1::GetWorkerStatsResponse> stats = WorkerStats();
      if (!stats.ok()) return stats.status();
      worker_idle = stats->running() == 0 && stats->waiting() == 0;
      worker_state = absl::StrCat("; worker running=", stats->running(),
                                  " waiting=", stats->waiting());
    }
    if (accounting->Idle() && worker_idle) return accounting;
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("blocks still held after ", absl::FormatDuration(bound), ": ",
                       accounting->DebugString(), worker_state));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

std::string ServiceCluster::Logs() const {
  std::string out;
  for (const std::string& path : logs_) {
    absl::StrAppend(&out, "---- ", path, " ----\n", FileContents(path), "\n");
  }
  return out;
}

absl::StatusOr<int64_t> ResidentBytes(pid_t pid) {
  const std::string path = absl::StrCat("/proc/", pid, "/status");
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::string line;
  while (std::getline(in, line)) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, "VmRSS:")) continue;
    rest = absl::StripAsciiWhitespace(rest);
    if (!absl::ConsumeSuffix(&rest, "kB")) break;
    int64_t kib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &kib)) break;
    return kib * 1024;
  }
  return absl::InternalError(absl::StrCat(path, " has no readable VmRSS line"));
}

absl::StatusOr<std::unique_ptr<ClientProcess>> ClientProcess::Spawn(
    const std::string& binary, std::vector<std::string> args) {
  if (binary.empty()) return absl::NotFoundError("no client binary");
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  args.insert(args.begin(), binary);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // child: async-signal-safe calls only
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    ::dup2(out[1], STDOUT_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  if (pid < 0) {
    ::close(out[0]);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  return std::unique_ptr<ClientProcess>(new ClientProcess(pid, out[0]));
}

ClientProcess::~ClientProcess() {
  Kill();
  ::close(stdout_fd_);
}

void ClientProcess::Kill() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
}

absl::StatusOr<std::string> ClientProcess::ReadLine(absl::Duration bound) {
  const absl::Time deadline = absl::Now() + bound;
  while (true) {
    if (const size_t end = buffer_.find('\n'); end != std::string::npos) {
      std::string line = buffer_.substr(0, end);
      buffer_.erase(0, end + 1);
      return line;
    }
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) {
      return absl::DeadlineExceededError(
          absl::StrCat("the client printed no line in time; got '", buffer_, "'"));
    }
    pollfd p{stdout_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
    char chunk[4096];
    const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("the client's stdout closed before a full line; got '", buffer_, "'"));
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace asymcache::testing

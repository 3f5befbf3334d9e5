// asymcache-worker as a process, end to end on 127.0.0.1: a real
// asymcache-daemon process (host pool in shared memory, tiny model) and a
// real asymcache-worker process beside it (tiny model, random weights, CPU
// backend). The test talks to the worker only through its gRPC API
// (generated asymcache.v1.Worker stubs) and its /metrics endpoint, and
// signals it like a supervisor would:
//   - Generate streams max_new_tokens tokens with per-token times and ends
//     with finish_reason "length" and the request's stats; the same prompt
//     again gives the same tokens and hits the blocks the first request
//     sealed in the daemon;
//   - bad requests get INVALID_ARGUMENT;
//   - GetWorkerStats counts what was generated; /metrics serves the same
//     counts as asymcache_worker_* series;
//   - SIGTERM shuts it down gracefully: exit status 0; a stream still
//     running after the shutdown grace is ended with an error;
//   - with a real asymcache-coordinator process, it registers as a WORKER
//     member of its daemon with its role, and deregisters on SIGTERM;
//   - bad flags exit 2, an unreachable daemon exits 1, --help exits 0.
// The daemon runs as a testing::ChildProcess (tests/services/child_process.h);
// the worker is started by WorkerProcess below, which can also deliver
// SIGTERM and collect the exit status. The tests skip, saying why, when a
// binary is missing (test_binaries.h; ASYMCACHE_BUILT_WORKER from
// tests/services/CMakeLists.txt or ASYMCACHE_WORKER_BIN).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asymcache/v1/coordinator.grpc.pb.h"
#include "asymcache/v1/worker.grpc.pb.h"
#include "cachecore/step_calibration_fit.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "services/client/client.h"
#include "tests/services/child_process.h"
#include "tests/services/free_port.h"
#include "tests/services/http_get.h"
#include "tests/services/test_binaries.h"
#include "tests/services/worker/generate_stream.h"

#ifndef ASYMCACHE_BUILT_WORKER
#define ASYMCACHE_BUILT_WORKER nullptr
#endif

namespace asymcache {
namespace {

using ::asymcache::testing::FileContents;
using ::asymcache::testing::Generate;
using ::asymcache::testing::Generated;
using ::testing::HasSubstr;

// Bound on one Generate stream of these tests.
constexpr absl::Duration kGenerateDeadline = absl::Seconds(20);

std::string WorkerBinary() {
  return testing::FindTestBinary("ASYMCACHE_WORKER_BIN", ASYMCACHE_BUILT_WORKER,
                                 "asymcache-worker");
}

// Bound of every wait on a process: only a broken run waits it out.
constexpr absl::Duration kProcessBound = absl::Seconds(15);

// A binary run as a child whose exit status the test reads: stdout is a pipe
// to the test, stderr goes to `stderr_path`; PR_SET_PDEATHSIG(SIGKILL) keeps a
// crashed test from leaking it, and the destructor SIGKILLs and reaps a child
// still running. Not thread-safe (the test's thread only).
class ServiceProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Spawn(const std::string& binary,
                                                               std::vector<std::string> flags,
                                                               const std::string& stderr_path) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
    }
    const int log = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) {
      ::close(out[0]);
      ::close(out[1]);
      return absl::InternalError(absl::StrCat("open ", stderr_path, ": ", std::strerror(errno)));
    }
    flags.insert(flags.begin(), binary);
    std::vector<char*> argv;
    for (std::string& f : flags) argv.push_back(f.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {  // child: async-signal-safe calls only
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(log, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(log);
    if (pid < 0) {
      ::close(out[0]);
      return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
    }
    return std::unique_ptr<ServiceProcess>(new ServiceProcess(pid, out[0]));
  }

  ~ServiceProcess() {
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      Reap();
    }
    ::close(stdout_fd_);
  }

  // stdout up to its first newline (without it); DEADLINE_EXCEEDED when none
  // comes within `bound`, FAILED_PRECONDITION when stdout closes first.
  absl::StatusOr<std::string> ReadLine(absl::Duration bound) {
    const absl::Time deadline = absl::Now() + bound;
    while (true) {
      if (const size_t end = buffer_.find('\n'); end != std::string::npos) {
        std::string line = buffer_.substr(0, end);
        buffer_.erase(0, end + 1);
        return line;
      }
      absl::StatusOr<bool> more = ReadSome(deadline);
      if (!more.ok()) return more.status();
      if (!*more) {
        return absl::FailedPreconditionError(
            absl::StrCat("stdout closed before a full line; got '", buffer_, "'"));
      }
    }
  }

  // Sends `signal`.
  void Signal(int signal) { ::kill(pid_, signal); }

  // Waits (up to `bound`) for the child to exit: its stdout closes, then it is
  // reaped. Returns the wait status; whatever it printed meanwhile is in
  // output(). DEADLINE_EXCEEDED when it is still running.
  absl::StatusOr<int> WaitExit(absl::Duration bound) {
    const absl::Time deadline = absl::Now() + bound;
    while (true) {
      absl::StatusOr<bool> more = ReadSome(deadline);
      if (!more.ok()) return more.status();
      if (!*more) break;
    }
    return Reap();
  }

  // Stdout read so far and not consumed by ReadLine.
  const std::string& output() const { return buffer_; }

 private:
  ServiceProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}

  // Appends what stdout has to buffer_: true after reading, false at EOF.
  absl::StatusOr<bool> ReadSome(absl::Time deadline) {
    while (true) {
      const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (ms <= 0) return absl::DeadlineExceededError("the child did not answer in time");
      pollfd p{stdout_fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      buffer_.append(chunk, static_cast<size_t>(n));
      return true;
    }
  }

  int Reap() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    return status;
  }

  const pid_t pid_;
  const int stdout_fd_;
  std::string buffer_;
  bool reaped_ = false;
};

// The value of the series `name` (exact name with labels, if any) in an
// exposition; nullopt when absent.
std::optional<double> SeriesValue(const std::string& exposition, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::ConsumePrefix(&line, name) || !absl::ConsumePrefix(&line, " ")) continue;
    double value = 0;
    if (absl::SimpleAtod(line, &value)) return value;
  }
  return std::nullopt;
}


class WorkerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_bin_ = testing::DaemonBinary();
    worker_bin_ = WorkerBinary();
    if (daemon_bin_.empty()) GTEST_SKIP() << "no asymcache-daemon binary (test_binaries.h)";
    if (worker_bin_.empty()) {
      GTEST_SKIP() << "no asymcache-worker binary (build it, or set ASYMCACHE_WORKER_BIN)";
    }
    char dir[] = "/tmp/asymcache_worker_XXXXXX";
    ASSERT_NE(::mkdtemp(dir), nullptr) << std::strerror(errno);
    log_dir_ = dir;
  }

  void TearDown() override {
    if (HasFailure()) {
      for (const std::string& path : logs_) {
        std::fprintf(stderr, "---- %s ----\n%s\n", path.c_str(), FileContents(path).c_str());
      }
    }
    daemon_.reset();
    coordinator_.reset();
    for (const std::string& path : logs_) ::unlink(path.c_str());
    if (!log_dir_.empty()) ::rmdir(log_dir_.c_str());
  }

  std::string LogPath(const std::string& name) {
    logs_.push_back(absl::StrCat(log_dir_, "/", name, ".log"));
    return logs_.back();
  }

  // A daemon with a 16 MiB host pool for the tiny model (1024 blocks), plus
  // `extra` flags; its shared memory is unlinked when it is killed.
  void StartDaemon(const std::vector<std::string>& extra = {}) {
    testing::ChildProcessOptions options;
    options.name = "daemon";
    options.binary = daemon_bin_;
    const std::string shm = absl::StrCat("/asymcache-worker-test-", ::getpid());
    options.flags = {"--plaintext",    "--listen=127.0.0.1:0", "--metrics-port=-1",
                     "--backend=host", "--model=tiny",         "--pool-bytes=16MiB",
                     absl::StrCat("--shm-name=", shm),         "--shutdown-grace=1s"};
    options.flags.insert(options.flags.end(), extra.begin(), extra.end());
    options.stderr_path = LogPath("daemon");
    absl::StatusOr<std::unique_ptr<testing::ChildProcess>> daemon =
        testing::ChildProcess::Start(options);
    ASSERT_TRUE(daemon.ok()) << daemon.status();
    daemon_ = *std::move(daemon);
    daemon_->set_on_kill([shm] { ::shm_unlink(shm.c_str()); });
  }

  // The worker with --plaintext (these tests run without TLS;
  // tests/services/security/ runs it with) and `flags` (stderr in its log).
  std::unique_ptr<ServiceProcess> SpawnWorker(const std::vector<std::string>& flags) {
    std::vector<std::string> argv = {"--plaintext"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    absl::StatusOr<std::unique_ptr<ServiceProcess>> worker =
        ServiceProcess::Spawn(worker_bin_, argv, LogPath(absl::StrCat("worker-", ++workers_)));
    EXPECT_TRUE(worker.ok()) << worker.status();
    return worker.ok() ? *std::move(worker) : nullptr;
  }

  // Reads a spawned worker's READY line and returns a stub on its gRPC port
  // (null, with a test failure, when the line does not come).
  std::unique_ptr<v1::Worker::Stub> WorkerStub(ServiceProcess& worker) {
    absl::StatusOr<std::string> ready = worker.ReadLine(kProcessBound);
    EXPECT_TRUE(ready.ok()) << ready.status();
    int grpc_port = 0;
    if (!ready.ok() || std::sscanf(ready->c_str(), "READY grpc=%d", &grpc_port) != 1) {
      ADD_FAILURE() << "no READY line: " << (ready.ok() ? *ready : "");
      return nullptr;
    }
    return v1::Worker::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port),
                                                   grpc::InsecureChannelCredentials()));
  }

  std::string daemon_bin_;
  std::string worker_bin_;
  std::string log_dir_;
  std::vector<std::string> logs_;
  int workers_ = 0;
  std::unique_ptr<testing::ChildProcess> daemon_;
  std::unique_ptr<testing::ChildProcess> coordinator_;
};

TEST_F(WorkerProcessTest, GeneratesReportsMetricsAndStopsOnSigterm) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  std::unique_ptr<ServiceProcess> worker = SpawnWorker(
      {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
       "--metrics-host=127.0.0.1", "--metrics-port=0", "--model=tiny", "--seed=7",
       "--cpu-threads=2", "--stats-interval=20ms", "--shutdown-grace=2s"});
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<std::string> ready = worker->ReadLine(kProcessBound);
  ASSERT_TRUE(ready.ok()) << ready.status();
  int grpc_port = 0;
  int metrics_port = 0;
  ASSERT_EQ(std::sscanf(ready->c_str(), "READY grpc=%d metrics=%d", &grpc_port, &metrics_port), 2)
      << *ready;
  ASSERT_GT(grpc_port, 0);
  ASSERT_GT(metrics_port, 0);

  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", grpc_port),
                                     grpc::InsecureChannelCredentials());
  std::unique_ptr<v1::Worker::Stub> stub = v1::Worker::NewStub(channel);

  // 40 prompt tokens (two full 16-token blocks and a partial one), 8 new.
  constexpr int kPromptTokens = 40;
  constexpr int kNewTokens = 8;
  constexpr int kVocab = 1024;  // the tiny shape's
  std::mt19937 rng(20261127);
  v1::GenerateRequest request;
  for (int i = 0; i < kPromptTokens; ++i) {
    request.add_prompt_tokens(static_cast<int32_t>(rng() % kVocab));
  }
  request.set_max_new_tokens(kNewTokens);
  request.set_salt("tenant-worker-test");

  const Generated first = Generate(*stub, request, kGenerateDeadline);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_EQ(first.tokens.size(), static_cast<size_t>(kNewTokens));
  EXPECT_GE(first.messages, 2);  // tokens, then the finish message
  for (int32_t token : first.tokens) {
    EXPECT_GE(token, 0);
    EXPECT_LT(token, kVocab);
  }
  ASSERT_EQ(first.times_us.size(), first.tokens.size());
  EXPECT_TRUE(std::is_sorted(first.times_us.begin(), first.times_us.end()));
  EXPECT_EQ(first.finish_reason, "length");
  EXPECT_EQ(first.stats.prompt_tokens(), kPromptTokens);
  EXPECT_EQ(first.stats.computed_prompt_tokens(), kPromptTokens);  // nothing cached yet
  EXPECT_EQ(first.stats.hit_tokens(), 0);
  EXPECT_GT(first.stats.ttft_seconds(), 0);
  EXPECT_NEAR(first.stats.ttft_seconds(), first.times_us[0] * 1e-6, 1e-6);

  // The same prompt again: the same (greedy) tokens, the sealed blocks hit.
  const Generated second = Generate(*stub, request, kGenerateDeadline);
  ASSERT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_EQ(second.tokens, first.tokens);
  EXPECT_EQ(second.finish_reason, "length");
  EXPECT_GE(second.stats.hit_tokens(), 32);

  // Bad requests are refused by the engine's validation.
  v1::GenerateRequest empty;
  empty.set_max_new_tokens(4);
  Generated refused = Generate(*stub, empty, kGenerateDeadline);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(refused.tokens.empty());
  v1::GenerateRequest outside = request;
  outside.set_prompt_tokens(3, kVocab);
  refused = Generate(*stub, outside, kGenerateDeadline);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << refused.status.error_message();

  // GetWorkerStats: the engine counts a step once it ends, which may be just
  // after the stream's last message: poll until both requests are counted.
  v1::GetWorkerStatsResponse stats;
  const absl::Time stats_deadline = absl::Now() + kProcessBound;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    const grpc::Status status = stub->GetWorkerStats(&context, {}, &stats);
    ASSERT_TRUE(status.ok()) << status.error_message();
    if (stats.generated_tokens() >= 2 * kNewTokens && stats.running() == 0) break;
    ASSERT_LT(absl::Now(), stats_deadline) << "stats never settled: " << stats.DebugString();
    absl::SleepFor(absl::Milliseconds(5));  // the engine's current step
  }
  EXPECT_EQ(stats.role(), "both");
  EXPECT_EQ(stats.backend(), "cpu");
  EXPECT_EQ(stats.model().num_layers(), 2);
  EXPECT_EQ(stats.model().head_dim(), 64);
  EXPECT_EQ(stats.generated_tokens(), 2 * kNewTokens);
  EXPECT_GE(stats.prefill_tokens(), kPromptTokens);
  EXPECT_GE(stats.steps(), kNewTokens);
  EXPECT_EQ(stats.running(), 0);
  EXPECT_EQ(stats.waiting(), 0);
  EXPECT_GT(stats.forward_seconds(), 0);
  EXPECT_GT(stats.plan_rpc_seconds(), 0);
  EXPECT_GE(stats.step_seconds(), stats.forward_seconds());

  // /metrics reaches the same counts within a few stats intervals.
  std::string exposition;
  const absl::Time deadline = absl::Now() + kProcessBound;
  while (true) {
    absl::StatusOr<std::string> scraped = testing::ScrapeMetrics(metrics_port);
    ASSERT_TRUE(scraped.ok()) << scraped.status();
    exposition = *std::move(scraped);
    if (SeriesValue(exposition, "asymcache_worker_steps_total") == stats.steps()) break;
    ASSERT_LT(absl::Now(), deadline) << "metrics never caught up:\n" << exposition;
    absl::SleepFor(absl::Milliseconds(20));  // the next stats interval
  }
  EXPECT_THAT(exposition,
              HasSubstr("asymcache_worker_info{backend=\"cpu\",model=\"tiny\",role=\"both\"} 1"));
  EXPECT_EQ(SeriesValue(exposition, "asymcache_worker_generated_tokens_total"), 2 * kNewTokens);
  EXPECT_EQ(SeriesValue(exposition, "asymcache_worker_prefill_tokens_total"),
            stats.prefill_tokens());
  EXPECT_EQ(SeriesValue(exposition, "asymcache_worker_step_duration_seconds_count"), stats.steps());
  EXPECT_EQ(SeriesValue(exposition, "asymcache_worker_running_sequences"), 0);
  EXPECT_EQ(SeriesValue(exposition, "asymcache_worker_waiting_requests"), 0);
  const std::optional<double> finished =
      SeriesValue(exposition, "asymcache_worker_finished_requests_total");
  ASSERT_TRUE(finished.has_value());
  EXPECT_GE(*finished, 2);
  EXPECT_GT(SeriesValue(exposition, "asymcache_worker_forward_seconds_total").value_or(0), 0);
  EXPECT_GT(SeriesValue(exposition, "asymcache_worker_daemon_rpc_seconds_total").value_or(0), 0);
  for (const char* family : {"asymcache_worker_ttft_seconds_count",
                             "asymcache_worker_tpot_seconds_count",
                             "asymcache_worker_copied_tokens_total",
                             "asymcache_worker_preemptions_total"}) {
    EXPECT_TRUE(SeriesValue(exposition, family).has_value()) << family;
  }

  // SIGTERM: a graceful stop, exit status 0. The channel goes first: an idle
  // client connection that nobody polls would hold the server's graceful
  // stop (GOAWAY unanswered) for the whole shutdown grace.
  stub.reset();
  channel.reset();
  worker->Signal(SIGTERM);
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit)) << "wait status " << *exit;
  EXPECT_EQ(WEXITSTATUS(*exit), 0);
  EXPECT_THAT(FileContents(logs_.back()), HasSubstr("[asymcache-worker] stopped"));
}

TEST_F(WorkerProcessTest, SigtermEndsStreamsStillRunningAfterTheGrace) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  std::unique_ptr<ServiceProcess> worker = SpawnWorker(
      {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
       "--metrics-port=-1", "--cpu-threads=1", "--shutdown-grace=200ms"});
  ASSERT_NE(worker, nullptr);
  std::unique_ptr<v1::Worker::Stub> stub = WorkerStub(*worker);
  ASSERT_NE(stub, nullptr);

  // A request far longer than the test: it is still generating at SIGTERM.
  v1::GenerateRequest request;
  for (int32_t t : {1, 2, 3, 4, 5}) request.add_prompt_tokens(t);
  request.set_max_new_tokens(100000);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub->Generate(&context, request);
  v1::GenerateResponse response;
  ASSERT_TRUE(reader->Read(&response));  // streaming
  ASSERT_EQ(response.tokens_size(), 1);

  worker->Signal(SIGTERM);
  int64_t tokens = 1;
  while (reader->Read(&response)) {
    tokens += response.tokens_size();
    EXPECT_TRUE(response.finish_reason().empty());  // it never finishes normally
  }
  const grpc::Status status = reader->Finish();
  // gRPC cancels the calls left at the grace's end: UNAVAILABLE, retry elsewhere.
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_LT(tokens, 100000);
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit));
  EXPECT_EQ(WEXITSTATUS(*exit), 0);
}

// The coordinator's member list.
absl::StatusOr<v1::ListMembersResponse> ListMembers(v1::Coordinator::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::ListMembersResponse response;
  const grpc::Status status = stub.ListMembers(&context, {}, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        status.error_message());
  }
  return response;
}

const v1::MemberInfo* FindMember(const v1::ListMembersResponse& list, const std::string& id) {
  for (const v1::MemberInfo& m : list.members()) {
    if (m.member_id() == id) return &m;
  }
  return nullptr;
}

TEST_F(WorkerProcessTest, JoinsTheCoordinatorAsAWorkerAndLeavesOnSigterm) {
  const std::string coordinator_bin = testing::CoordinatorBinary();
  if (coordinator_bin.empty()) GTEST_SKIP() << "no asymcache-coordinator binary (test_binaries.h)";
  testing::ChildProcessOptions options;
  options.name = "coordinator";
  options.binary = coordinator_bin;
  options.flags = {"--plaintext", "--listen=127.0.0.1:0", "--metrics-port=-1",
                   "--heartbeat-interval=200ms", "--member-timeout=3s", "--shutdown-grace=1s"};
  options.stderr_path = LogPath("coordinator");
  absl::StatusOr<std::unique_ptr<testing::ChildProcess>> coordinator =
      testing::ChildProcess::Start(options);
  ASSERT_TRUE(coordinator.ok()) << coordinator.status();
  coordinator_ = *std::move(coordinator);
  const std::string coordinators = absl::StrCat("--coordinators=", coordinator_->address());
  ASSERT_NO_FATAL_FAILURE(
      StartDaemon({coordinators, "--member-id=daemon-a", "--coordinator-retry-max=200ms"}));

  std::unique_ptr<ServiceProcess> worker = SpawnWorker(
      {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
       "--metrics-port=-1", "--cpu-threads=1", "--role=decode", coordinators,
       "--member-id=worker-a", "--daemon-member-id=daemon-a", "--coordinator-retry-max=200ms",
       "--shutdown-grace=1s"});
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<std::string> ready = worker->ReadLine(kProcessBound);
  ASSERT_TRUE(ready.ok()) << ready.status();
  int grpc_port = 0;
  ASSERT_EQ(std::sscanf(ready->c_str(), "READY grpc=%d", &grpc_port), 1) << *ready;

  std::unique_ptr<v1::Coordinator::Stub> stub = v1::Coordinator::NewStub(
      grpc::CreateChannel(coordinator_->address(), grpc::InsecureChannelCredentials()));
  // Registration runs in the background: poll the member list (bounded).
  v1::ListMembersResponse list;
  const absl::Time deadline = absl::Now() + kProcessBound;
  while (true) {
    absl::StatusOr<v1::ListMembersResponse> listed = ListMembers(*stub);
    ASSERT_TRUE(listed.ok()) << listed.status();
    list = *std::move(listed);
    if (FindMember(list, "worker-a") != nullptr && FindMember(list, "daemon-a") != nullptr) break;
    ASSERT_LT(absl::Now(), deadline) << "never registered: " << list.DebugString();
    absl::SleepFor(absl::Milliseconds(20));  // the registrar's next attempt
  }
  const v1::MemberInfo& member = *FindMember(list, "worker-a");
  EXPECT_EQ(member.kind(), v1::MEMBER_KIND_WORKER);
  EXPECT_EQ(member.role(), v1::ROLE_DECODE);
  EXPECT_EQ(member.daemon_id(), "daemon-a");
  EXPECT_EQ(member.gpu(), -1);  // the cpu backend
  EXPECT_TRUE(absl::EndsWith(member.address(), absl::StrCat(":", grpc_port))) << member.address();
  // The daemon now routes as its worker's role.
  EXPECT_EQ(FindMember(list, "daemon-a")->effective_role(), v1::ROLE_DECODE);

  // SIGTERM: the worker deregisters before it exits.
  worker->Signal(SIGTERM);
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit));
  EXPECT_EQ(WEXITSTATUS(*exit), 0);
  absl::StatusOr<v1::ListMembersResponse> after = ListMembers(*stub);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(FindMember(*after, "worker-a"), nullptr) << after->DebugString();
  EXPECT_NE(FindMember(*after, "daemon-a"), nullptr);
}

// --client-rate-limit: a client past its burst gets RESOURCE_EXHAUSTED naming
// the limit, before anything is queued; under the limit it is served.
// --step-trace: one line per step, whose work the offline cost model turns
// into exactly the prediction the worker's scheduler made, and whose totals
// are the worker's own counters.
TEST_F(WorkerProcessTest, StepTraceRecordsEveryStepAsTheCostModelSeesIt) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  const std::string trace_path = LogPath("steps");
  std::unique_ptr<ServiceProcess> worker = SpawnWorker(
      {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
       "--metrics-port=-1", "--model=tiny", "--cpu-threads=1", "--shutdown-grace=2s",
       absl::StrCat("--step-trace=", trace_path)});
  ASSERT_NE(worker, nullptr);
  std::unique_ptr<v1::Worker::Stub> stub = WorkerStub(*worker);
  ASSERT_NE(stub, nullptr);

  // Three requests, the third repeating the first's prompt (cache hits), two
  // of them at once (decodes of one beside the other's prefill).
  constexpr int kNewTokens = 6;
  std::mt19937 rng(77);
  auto prompt = [&](int tokens) {
    v1::GenerateRequest request;
    for (int i = 0; i < tokens; ++i) request.add_prompt_tokens(static_cast<int32_t>(rng() % 1024));
    request.set_max_new_tokens(kNewTokens);
    return request;
  };
  const v1::GenerateRequest a = prompt(70);
  const v1::GenerateRequest b = prompt(150);
  ASSERT_TRUE(Generate(*stub, a, kGenerateDeadline).status.ok());
  std::thread other([&] { EXPECT_TRUE(Generate(*stub, b, kGenerateDeadline).status.ok()); });
  ASSERT_TRUE(Generate(*stub, a, kGenerateDeadline).status.ok());
  other.join();
  // The engine counts a step after its tokens went out: wait until it idles
  // (nothing running) and its counters stop moving.
  v1::GetWorkerStatsResponse stats;
  int64_t previous_steps = -1;
  const absl::Time give_up = absl::Now() + kProcessBound;
  while (true) {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->GetWorkerStats(&context, {}, &stats).ok());
    if (stats.running() == 0 && stats.steps() == previous_steps) break;
    ASSERT_LT(absl::Now(), give_up) << stats.DebugString();
    previous_steps = stats.steps();
    absl::SleepFor(absl::Milliseconds(50));
  }

  // The daemon's calibration: what the worker's scheduler predicted with.
  ClientOptions client_options;
  client_options.target = daemon_->address();
  absl::StatusOr<std::unique_ptr<Client>> daemon = Client::Create(client_options);
  ASSERT_TRUE(daemon.ok()) << daemon.status();
  absl::StatusOr<DaemonStats> daemon_stats = (*daemon)->GetStats();
  ASSERT_TRUE(daemon_stats.ok()) << daemon_stats.status();

  stub.reset();
  worker->Signal(SIGTERM);  // the trace is flushed on the way out
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();

  std::ifstream trace(trace_path);
  std::string line;
  ASSERT_TRUE(std::getline(trace, line));
  const nlohmann::json header = nlohmann::json::parse(line);
  EXPECT_EQ(header["schema"], "asymcache.step_trace.v1");
  EXPECT_EQ(header["model"]["name"], "tiny");
  ModelConfig model = daemon_stats->model;
  EXPECT_EQ(header["model"]["num_layers"], model.num_layers);
  EXPECT_EQ(header["model"]["block_tokens"], model.block_tokens);
  EXPECT_EQ(header["model"]["vocab_size"], model.vocab_size);

  int64_t steps = 0, decodes = 0, chunk_tokens = 0;
  double forward_ms = 0, last_t = -1;
  while (std::getline(trace, line)) {
    const nlohmann::json entry = nlohmann::json::parse(line);
    ++steps;
    MeasuredStep step;
    for (const nlohmann::json& context : entry["decodes"]) {
      step.decodes.push_back(DecodeWork{static_cast<SequenceId>(1000 + step.decodes.size()),
                                        context.get<int64_t>()});
    }
    for (const nlohmann::json& c : entry["chunks"]) {
      step.chunks.push_back(Chunk{c[0].get<SequenceId>(), c[1].get<int64_t>(), c[2].get<int64_t>()});
      chunk_tokens += step.chunks.back().tokens();
    }
    ASSERT_FALSE(step.decodes.empty() && step.chunks.empty()) << line;
    decodes += static_cast<int64_t>(step.decodes.size());
    forward_ms += entry["forward_ms"].get<double>();
    EXPECT_GE(entry["step_ms"].get<double>(), entry["forward_ms"].get<double>()) << line;
    EXPECT_GE(entry["t_ms"].get<double>(), last_t) << line;
    last_t = entry["t_ms"].get<double>();
    // The offline cost model gives the scheduler's prediction (to the
    // file's 0.1 µs).
    EXPECT_NEAR(PredictMeasuredStep(model, daemon_stats->calibration, step) * 1e3,
                entry["predicted_ms"].get<double>(), 1e-3)
        << line;
  }
  EXPECT_EQ(steps, stats.steps());
  EXPECT_EQ(chunk_tokens, stats.prefill_tokens());
  // Every token after a request's first comes from a decode query.
  EXPECT_EQ(decodes, stats.generated_tokens() - 3);
  EXPECT_NEAR(forward_ms, stats.forward_seconds() * 1e3, 0.01 * forward_ms + 0.01 * steps);
}

TEST_F(WorkerProcessTest, ClientOverItsRateLimitIsRefused) {
  ASSERT_NO_FATAL_FAILURE(StartDaemon());
  std::unique_ptr<ServiceProcess> worker = SpawnWorker(
      {absl::StrCat("--daemon=", daemon_->address()), "--listen=127.0.0.1:0",
       "--metrics-port=-1", "--cpu-threads=1", "--client-rate-limit=0.5",
       "--client-rate-burst=2"});
  ASSERT_NE(worker, nullptr);
  std::unique_ptr<v1::Worker::Stub> stub = WorkerStub(*worker);
  ASSERT_NE(stub, nullptr);
  v1::GenerateRequest request;
  for (int32_t t : {1, 2, 3, 4, 5}) request.add_prompt_tokens(t);
  request.set_max_new_tokens(2);
  for (int i = 0; i < 2; ++i) {
    const testing::Generated served = testing::Generate(*stub, request);
    EXPECT_TRUE(served.status.ok()) << i << ": " << served.status.error_message();
    EXPECT_EQ(served.tokens.size(), 2u);
  }
  // The third within the same second: over 0.5/s with a burst of 2.
  const testing::Generated refused = testing::Generate(*stub, request);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(),
              ::testing::HasSubstr("Generate: client 'ip:127.0.0.1' is over its limit of 0.5 "
                                   "requests/s (burst 2)"));
  EXPECT_TRUE(refused.tokens.empty());
}

TEST_F(WorkerProcessTest, BadFlagsExitTwoNamingTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--listen=127.0.0.1:0"}, "--daemon is required"},
      {{"--daemon=127.0.0.1:1", "--model=gpt-5"}, "--model: unknown model shape 'gpt-5'"},
      {{"--daemon=127.0.0.1:1", "--max-running=0"}, "--max-running must be >= 1"},
      {{"--daemon=127.0.0.1:1", "stray"}, "unexpected argument 'stray'"},
  };
  for (const auto& [flags, message] : cases) {
    std::unique_ptr<ServiceProcess> worker = SpawnWorker(flags);
    ASSERT_NE(worker, nullptr);
    absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
    ASSERT_TRUE(exit.ok()) << exit.status();
    EXPECT_TRUE(WIFEXITED(*exit));
    EXPECT_EQ(WEXITSTATUS(*exit), 2) << message;
    EXPECT_EQ(worker->output(), "");  // no READY line
    EXPECT_THAT(FileContents(logs_.back()), HasSubstr(message));
  }
}

TEST_F(WorkerProcessTest, UnreachableDaemonExitsOne) {
  const int port = testing::FreeLocalPort();
  ASSERT_NE(port, 0);
  std::unique_ptr<ServiceProcess> worker =
      SpawnWorker({absl::StrCat("--daemon=127.0.0.1:", port), "--daemon-connect-timeout=300ms",
                   "--listen=127.0.0.1:0", "--metrics-port=-1"});
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit));
  EXPECT_EQ(WEXITSTATUS(*exit), 1);
  EXPECT_EQ(worker->output(), "");
  EXPECT_THAT(FileContents(logs_.back()), HasSubstr(absl::StrCat("daemon 127.0.0.1:", port)));
}

TEST_F(WorkerProcessTest, HelpListsTheSettingsWithTheirDefaults) {
  std::unique_ptr<ServiceProcess> worker = SpawnWorker({"--max-running=oops", "--help"});
  ASSERT_NE(worker, nullptr);
  absl::StatusOr<int> exit = worker->WaitExit(kProcessBound);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(WIFEXITED(*exit));
  EXPECT_EQ(WEXITSTATUS(*exit), 0);
  const std::string& help = worker->output();
  EXPECT_THAT(help, HasSubstr("Usage: asymcache-worker --daemon=HOST:PORT"));
  EXPECT_THAT(help, HasSubstr("--listen"));
  EXPECT_THAT(help, HasSubstr("(default: 0.0.0.0:50071)"));
  EXPECT_THAT(help, HasSubstr("(default: 128)"));
  EXPECT_THAT(help, HasSubstr("(default: tiny)"));
  EXPECT_THAT(help, HasSubstr("--daemon-member-id"));
}

}  // namespace
}  // namespace asymcache

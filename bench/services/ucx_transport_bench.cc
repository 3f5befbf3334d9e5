// UcxTransport block-transfer bandwidth on one host, against memcpy.
//
// An exporter child process (this binary, re-run with ACB_CHILD=1) registers
// 256 MiB of host memory; the benchmark process reads all of it per iteration
// as blocks of 64 KiB, 256 KiB or 2 MiB, remote order shuffled, into local
// memory, through one UcxTransport per configuration (error-handling mode x
// transport list). Memcpy/<block> copies the same bytes in the same order
// inside this process: the ceiling on this machine.
//
//   build/bench/services/ucx_transport_bench --benchmark_min_time=1
//
// Results and their reading are in docs/transport.md. Everything stays on
// loopback (net_devices = "lo").
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "benchmark/benchmark.h"
#include "services/transport/ucx_transport.h"

extern char** environ;

namespace asymcache {
namespace {

using ErrorHandling = UcxTransportOptions::ErrorHandling;

constexpr size_t kTotalBytes = 256 << 20;

struct Config {
  const char* name;
  const char* transports;
  ErrorHandling error_handling;
  bool allocate;  // exporter memory from Allocate() instead of Register(mmap)
};

// <error handling>/<transport list>/<how the exporter got its memory>. The
// default list picks shared memory (sysv/posix) on one host, in kPeer too
// because UcxTransport turns on shared-memory error handling; "tcp" is what
// crosses hosts without RDMA. Allocate()d memory is read one-sided; Register()ed
// memory is served by the exporter's progress thread (software RMA).
constexpr Config kConfigs[] = {
    {"peer/default/allocate", "", ErrorHandling::kPeer, true},
    {"none/default/allocate", "", ErrorHandling::kNone, true},
    {"peer/default/register", "", ErrorHandling::kPeer, false},
    {"none/default/register", "", ErrorHandling::kNone, false},
    {"peer/tcp/register", "tcp", ErrorHandling::kPeer, false},
    {"none/tcp/register", "tcp", ErrorHandling::kNone, false},
};

UcxTransportOptions OptionsFor(const char* transports, ErrorHandling mode) {
  UcxTransportOptions options;
  options.transports = transports;
  options.net_devices = "lo";
  options.error_handling = mode;
  options.read_timeout = absl::Seconds(60);
  return options;
}

void* MapTouched(size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  std::memset(p, 0x5a, bytes);
  return p;
}

bool WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n <= 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

// Child: export kTotalBytes, send (address, rkey, base) on fd ACB_INFO_FD,
// serve until fd ACB_CONTROL_FD reaches EOF.
int RunExporterChild() {
  int info_fd = 0, control_fd = 0;
  if (!absl::SimpleAtoi(std::getenv("ACB_INFO_FD"), &info_fd) ||
      !absl::SimpleAtoi(std::getenv("ACB_CONTROL_FD"), &control_fd)) {
    return 2;
  }
  const std::string transports = std::getenv("ACB_TLS") ? std::getenv("ACB_TLS") : "";
  const ErrorHandling mode = std::string(std::getenv("ACB_ERR") ? std::getenv("ACB_ERR") : "") ==
                                     "none"
                                 ? ErrorHandling::kNone
                                 : ErrorHandling::kPeer;
  const bool allocate = std::getenv("ACB_ALLOC") != nullptr;
  void* region = allocate ? nullptr : MapTouched(kTotalBytes);
  if (!allocate && region == nullptr) return 3;
  {
    auto transport = UcxTransport::Create(OptionsFor(transports.c_str(), mode));
    if (!transport.ok()) return 4;
    auto registered = allocate ? (*transport)->Allocate(kTotalBytes)
                               : (*transport)->Register(region, kTotalBytes, MemoryKind::kHost);
    if (!registered.ok()) return 5;
    if (allocate) std::memset((*registered)->base(), 0x5a, kTotalBytes);
    const uint64_t base = reinterpret_cast<uintptr_t>((*registered)->base());
    for (const std::string* s : {&(*transport)->address(), &(*registered)->packed_rkey()}) {
      const uint32_t size = static_cast<uint32_t>(s->size());
      if (!WriteAll(info_fd, &size, 4) || !WriteAll(info_fd, s->data(), s->size())) return 6;
    }
    if (!WriteAll(info_fd, &base, sizeof(base))) return 6;
    char buffer[16];
    while (::read(control_fd, buffer, sizeof(buffer)) > 0) {
    }
  }
  if (!allocate) ::munmap(region, kTotalBytes);
  return 0;
}

// Parent side of one configuration: the exporter child and our transport.
class Pair {
 public:
  static std::unique_ptr<Pair> Start(const Config& config) {
    auto pair = std::unique_ptr<Pair>(new Pair);
    int info[2], control[2];
    if (::pipe2(info, O_CLOEXEC) != 0 || ::pipe2(control, O_CLOEXEC) != 0) return nullptr;
    std::vector<std::string> env = {"ACB_CHILD=1", absl::StrCat("ACB_INFO_FD=", info[1]),
                                    absl::StrCat("ACB_CONTROL_FD=", control[0]),
                                    absl::StrCat("ACB_TLS=", config.transports),
                                    absl::StrCat("ACB_ERR=", ErrorHandlingName(config.error_handling))};
    if (config.allocate) env.push_back("ACB_ALLOC=1");
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "ACB_", 4) != 0) env.push_back(*e);
    }
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string exe = "/proc/self/exe";
    char* argv[] = {exe.data(), nullptr};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, info[1], info[1]);
    posix_spawn_file_actions_adddup2(&actions, control[0], control[0]);
    const int rc = ::posix_spawn(&pair->pid_, exe.c_str(), &actions, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(info[1]);
    ::close(control[0]);
    pair->control_fd_ = control[1];
    const bool got = rc == 0 && pair->ReadString(info[0], &pair->address_) &&
                     pair->ReadString(info[0], &pair->rkey_) &&
                     pair->ReadExact(info[0], &pair->base_, sizeof(pair->base_));
    ::close(info[0]);
    if (!got) return nullptr;
    auto transport = UcxTransport::Create(OptionsFor(config.transports, config.error_handling));
    if (!transport.ok()) return nullptr;
    pair->transport_ = std::move(*transport);
    return pair;
  }

  ~Pair() {
    transport_.reset();
    if (control_fd_ >= 0) ::close(control_fd_);
    if (pid_ > 0) {
      int status = 0;
      const absl::Time give_up = absl::Now() + absl::Seconds(10);
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (absl::Now() > give_up) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        absl::SleepFor(absl::Milliseconds(5));
      }
    }
  }

  UcxTransport& transport() { return *transport_; }
  const std::string& address() const { return address_; }
  const std::string& rkey() const { return rkey_; }
  uint64_t base() const { return base_; }

 private:
  Pair() = default;

  static bool ReadExact(int fd, void* data, size_t size) {
    char* p = static_cast<char*>(data);
    const absl::Time give_up = absl::Now() + absl::Seconds(30);
    while (size > 0) {
      pollfd pfd{fd, POLLIN, 0};
      const int wait_ms = static_cast<int>(absl::ToInt64Milliseconds(give_up - absl::Now()));
      if (wait_ms <= 0 || ::poll(&pfd, 1, wait_ms) <= 0) return false;
      ssize_t n = ::read(fd, p, size);
      if (n <= 0) return false;
      p += n;
      size -= static_cast<size_t>(n);
    }
    return true;
  }
  static bool ReadString(int fd, std::string* out) {
    uint32_t size = 0;
    if (!ReadExact(fd, &size, 4) || size > (1u << 20)) return false;
    out->resize(size);
    return ReadExact(fd, out->data(), size);
  }

  pid_t pid_ = -1;
  int control_fd_ = -1;
  std::string address_, rkey_;
  uint64_t base_ = 0;
  std::unique_ptr<UcxTransport> transport_;
};

std::map<std::string, std::unique_ptr<Pair>>& Pairs() {
  static auto* pairs = new std::map<std::string, std::unique_ptr<Pair>>;
  return *pairs;
}

char* LocalBuffer() {
  static char* buffer = static_cast<char*>(MapTouched(kTotalBytes));
  return buffer;
}

// Block i of the transfer reads remote block order[i] into local block i.
std::vector<size_t> ShuffledBlocks(size_t block) {
  std::vector<size_t> order(kTotalBytes / block);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  return order;
}

void BM_UcxRead(benchmark::State& state, Config config) {
  const size_t block = static_cast<size_t>(state.range(0));
  std::unique_ptr<Pair>& pair = Pairs()[config.name];
  if (pair == nullptr) pair = Pair::Start(config);
  if (pair == nullptr) {
    state.SkipWithError("could not start the exporter or the transport");
    return;
  }
  std::vector<RemoteRead> reads;
  for (size_t i = 0; const size_t remote : ShuffledBlocks(block)) {
    reads.push_back({pair->base() + remote * block, LocalBuffer() + i++ * block, block});
  }
  const absl::Status warmup = pair->transport().Read(pair->address(), pair->rkey(), reads);
  if (!warmup.ok()) {
    state.SkipWithError(warmup.ToString().c_str());
    return;
  }
  for (auto _ : state) {
    const absl::Status status = pair->transport().Read(pair->address(), pair->rkey(), reads);
    if (!status.ok()) {
      state.SkipWithError(status.ToString().c_str());
      return;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kTotalBytes));
}

void BM_Memcpy(benchmark::State& state) {
  const size_t block = static_cast<size_t>(state.range(0));
  static char* source = static_cast<char*>(MapTouched(kTotalBytes));
  const std::vector<size_t> order = ShuffledBlocks(block);
  for (auto _ : state) {
    for (size_t i = 0; i < order.size(); ++i) {
      std::memcpy(LocalBuffer() + i * block, source + order[i] * block, block);
    }
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kTotalBytes));
}

void RegisterAll() {
  const std::vector<int64_t> blocks = {64 << 10, 256 << 10, 2 << 20};
  for (const Config& config : kConfigs) {
    auto* b = benchmark::RegisterBenchmark(absl::StrCat("UcxRead/", config.name).c_str(),
                                           BM_UcxRead, config);
    for (int64_t block : blocks) b->Arg(block);
    b->UseRealTime()->Unit(benchmark::kMillisecond);
  }
  auto* b = benchmark::RegisterBenchmark("Memcpy", BM_Memcpy);
  for (int64_t block : blocks) b->Arg(block);
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace asymcache

int main(int argc, char** argv) {
  if (std::getenv("ACB_CHILD") != nullptr) return asymcache::RunExporterChild();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  asymcache::RegisterAll();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  asymcache::Pairs().clear();  // stops the exporters
  return 0;
}

#include "services/transport/ucx_transport.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"

namespace asymcache {
namespace {

// ---------------------------------------------------------------------------
// ucs_status_t -> absl::Status, the one place the two error worlds meet.

absl::StatusCode CodeForUcs(ucs_status_t status) {
  switch (status) {
    case UCS_OK:
      return absl::StatusCode::kOk;
    case UCS_ERR_INVALID_PARAM:
    case UCS_ERR_INVALID_ADDR:
    case UCS_ERR_BUFFER_TOO_SMALL:
      return absl::StatusCode::kInvalidArgument;
    case UCS_ERR_NO_MEMORY:
    case UCS_ERR_NO_RESOURCE:
    case UCS_ERR_EXCEEDS_LIMIT:
      return absl::StatusCode::kResourceExhausted;
    case UCS_ERR_TIMED_OUT:
      return absl::StatusCode::kDeadlineExceeded;
    case UCS_ERR_UNSUPPORTED:
    case UCS_ERR_NOT_IMPLEMENTED:
    case UCS_ERR_NO_DEVICE:
    case UCS_ERR_NO_ELEM:
      return absl::StatusCode::kFailedPrecondition;
    case UCS_ERR_OUT_OF_RANGE:
      return absl::StatusCode::kOutOfRange;
    case UCS_ERR_IO_ERROR:
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_NO_PROGRESS:
    case UCS_ERR_SOME_CONNECTS_FAILED:
    case UCS_ERR_BUSY:
    case UCS_ERR_CANCELED:
    case UCS_ERR_SHMEM_SEGMENT:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED:
    case UCS_ERR_CONNECTION_RESET:
      return absl::StatusCode::kUnavailable;
    default:
      if (UCS_IS_LINK_ERROR(status) || UCS_IS_ENDPOINT_ERROR(status)) {
        return absl::StatusCode::kUnavailable;
      }
      return absl::StatusCode::kInternal;
  }
}

// "<what>: <ucs_status_string> (UCX status <n>)" under the code for `status`.
absl::Status UcsError(ucs_status_t status, absl::string_view what) {
  return absl::Status(CodeForUcs(status), absl::StrCat(what, ": ", ucs_status_string(status),
                                                       " (UCX status ", static_cast<int>(status), ")"));
}

// A failure of the transfer path itself: always UNAVAILABLE (the peer died, the
// link broke, the connection was dropped); retrying later may succeed.
absl::Status PeerError(ucs_status_t status, absl::string_view what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ucs_status_string(status),
                                             " (UCX status ", static_cast<int>(status), ")"));
}

// ---------------------------------------------------------------------------
// Envelopes around UCX's worker address and packed rkey. UCX does not
// validate these blobs (garbage can crash ucp_ep_create), so they travel
// inside a checked header: magic, version, the id of the transport that made
// them (an rkey used with another transport's address is caught), the region
// bounds (ranges outside it are caught) and an FNV-1a checksum.

constexpr char kAddressMagic[4] = {'A', 'C', 'W', 'A'};
constexpr char kRkeyMagic[4] = {'A', 'C', 'R', 'K'};
constexpr uint8_t kEnvelopeVersion = 1;
constexpr size_t kChecksumBytes = 8;
// magic(4) version(1) pad(3) instance(8) payload_len(4) pad(4)
constexpr size_t kAddressHeaderBytes = 24;
// magic(4) version(1) kind(1) pad(2) instance(8) base(8) bytes(8) payload_len(4) pad(4)
constexpr size_t kRkeyHeaderBytes = 40;
constexpr size_t kMaxPayloadBytes = 1 << 20;

uint64_t Fnv1a64(absl::string_view bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ull;
  }
  return hash;
}

void PutLe(std::string* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

uint64_t GetLe(absl::string_view in, size_t pos, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value |= static_cast<uint64_t>(static_cast<unsigned char>(in[pos + i])) << (8 * i);
  }
  return value;
}

void AppendChecksum(std::string* out) { PutLe(out, Fnv1a64(*out), kChecksumBytes); }

std::string EncodeAddress(uint64_t instance, absl::string_view ucx_address) {
  std::string out(kAddressMagic, 4);
  PutLe(&out, kEnvelopeVersion, 1);
  PutLe(&out, 0, 3);
  PutLe(&out, instance, 8);
  PutLe(&out, ucx_address.size(), 4);
  PutLe(&out, 0, 4);
  out.append(ucx_address.data(), ucx_address.size());
  AppendChecksum(&out);
  return out;
}

std::string EncodeRkey(uint64_t instance, MemoryKind kind, uint64_t base, uint64_t bytes,
                       absl::string_view ucx_rkey) {
  std::string out(kRkeyMagic, 4);
  PutLe(&out, kEnvelopeVersion, 1);
  PutLe(&out, kind == MemoryKind::kCuda ? 1 : 0, 1);
  PutLe(&out, 0, 2);
  PutLe(&out, instance, 8);
  PutLe(&out, base, 8);
  PutLe(&out, bytes, 8);
  PutLe(&out, ucx_rkey.size(), 4);
  PutLe(&out, 0, 4);
  out.append(ucx_rkey.data(), ucx_rkey.size());
  AppendChecksum(&out);
  return out;
}

// Checks magic, version, length and checksum; returns the payload length.
absl::StatusOr<size_t> CheckEnvelope(absl::string_view what, absl::string_view in,
                                     const char (&magic)[4], size_t header_bytes) {
  if (in.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is empty"));
  if (in.size() < header_bytes + kChecksumBytes || std::memcmp(in.data(), magic, 4) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not one made by UcxTransport (", in.size(), " bytes, bad header)"));
  }
  if (GetLe(in, 4, 1) != kEnvelopeVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has format version ", GetLe(in, 4, 1), ", expected ", kEnvelopeVersion));
  }
  const size_t payload = GetLe(in, header_bytes - 8, 4);
  if (payload == 0 || payload > kMaxPayloadBytes ||
      in.size() != header_bytes + payload + kChecksumBytes) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is truncated or padded (", in.size(),
                                                   " bytes, payload ", payload, ")"));
  }
  const absl::string_view body = in.substr(0, in.size() - kChecksumBytes);
  if (Fnv1a64(body) != GetLe(in, body.size(), kChecksumBytes)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is corrupt (checksum mismatch)"));
  }
  return payload;
}

struct DecodedAddress {
  uint64_t instance = 0;
  absl::string_view ucx_address;
};

absl::StatusOr<DecodedAddress> DecodeAddress(absl::string_view in) {
  absl::StatusOr<size_t> payload =
      CheckEnvelope("peer address", in, kAddressMagic, kAddressHeaderBytes);
  if (!payload.ok()) return payload.status();
  return DecodedAddress{GetLe(in, 8, 8), in.substr(kAddressHeaderBytes, *payload)};
}

struct DecodedRkey {
  uint64_t instance = 0;
  MemoryKind kind = MemoryKind::kHost;
  uint64_t base = 0;
  uint64_t bytes = 0;
  absl::string_view ucx_rkey;
};

absl::StatusOr<DecodedRkey> DecodeRkey(absl::string_view in) {
  absl::StatusOr<size_t> payload = CheckEnvelope("remote key", in, kRkeyMagic, kRkeyHeaderBytes);
  if (!payload.ok()) return payload.status();
  DecodedRkey key;
  key.kind = GetLe(in, 5, 1) == 1 ? MemoryKind::kCuda : MemoryKind::kHost;
  key.instance = GetLe(in, 8, 8);
  key.base = GetLe(in, 16, 8);
  key.bytes = GetLe(in, 24, 8);
  key.ucx_rkey = in.substr(kRkeyHeaderBytes, *payload);
  return key;
}

// Whether a UCX_TLS-style list may select the sysv/posix transports.
bool MayUseSharedMemory(absl::string_view transports) {
  if (transports.empty() || transports[0] == '^') return true;  // all, or all but some
  for (absl::string_view name : absl::StrSplit(transports, ',')) {
    if (name == "all" || name == "sm" || name == "shm" || name == "mm" || name == "posix" ||
        name == "sysv") {
      return true;
    }
  }
  return false;
}

uint64_t RandomInstanceId() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device() ^
         static_cast<uint64_t>(::getpid()) << 48;
}

}  // namespace

// ---------------------------------------------------------------------------

absl::string_view ErrorHandlingName(UcxTransportOptions::ErrorHandling mode) {
  return mode == UcxTransportOptions::ErrorHandling::kPeer ? "peer" : "none";
}

absl::Status UcxTransportOptions::Validate() const {
  if (error_handling != ErrorHandling::kPeer && error_handling != ErrorHandling::kNone) {
    return absl::InvalidArgumentError("error_handling must be kPeer or kNone");
  }
  if (read_timeout <= absl::ZeroDuration() || read_timeout == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("read_timeout must be finite and > 0, got ", absl::FormatDuration(read_timeout)));
  }
  if (max_outstanding < 1 || max_outstanding > 65536) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_outstanding must be in [1, 65536], got ", max_outstanding));
  }
  if (keepalive_interval <= absl::ZeroDuration() ||
      keepalive_interval == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("keepalive_interval must be finite and > 0, got ",
                                                   absl::FormatDuration(keepalive_interval)));
  }
  for (const std::string* list : {&transports, &net_devices}) {
    if (list->find_first_of(" \t\n\"'=") != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(list == &transports ? "transports" : "net_devices",
                       " must be a comma-separated list without blanks or quotes, got '", *list,
                       "'"));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Engine: the UCX context, worker and progress thread. Shared by the transport
// and its regions (a region keeps the context alive to unregister itself).
//
// Threading: every UCX call runs on the progress thread, except ucp_mem_unmap
// after Shutdown (then inline, under queue_mu_). Members under "progress
// thread" are touched only there, so they need no lock.
//
// Failure handling. A peer is dropped (DropPeer) when its endpoint reports an
// error, a get to it fails, or a Read to it times out: it leaves the cache, its
// Reads fail, and its endpoint is closed: forced in kPeer mode, which completes
// the gets still queued or in flight with an error; flushed in kNone mode
// (UCX refuses a forced close there). A failed Read returns once UCX completed
// all its gets, or kAbandonAfter after the failure once the endpoint is
// closed (or its close was given up): we saw UCX 1.13 leave gets of a killed
// shared-memory peer uncompleted after a forced close. Abandoned requests only
// free themselves if their callback ever comes. docs/transport.md discusses
// what this leaves open.

namespace {
// Bounds of the progress loop.
constexpr absl::Duration kSpinAfterActivity = absl::Microseconds(200);
constexpr int kMaxSleepMs = 100;          // UCX timers (keepalive) need progress
constexpr int kClosingSleepMs = 10;       // while endpoints are closing
constexpr int kPostBudgetPerPass = 1024;  // gets posted per Read per loop pass
constexpr size_t kMaxCachedRkeysPerPeer = 256;
constexpr absl::Duration kAbandonAfter = absl::Seconds(1);     // failed Read, gets still out
constexpr absl::Duration kCloseGiveUpAfter = absl::Seconds(1);  // endpoint close never completes
constexpr absl::Duration kShutdownCloseGrace = absl::Seconds(2);
}  // namespace

class UcxTransport::Engine {
 public:
  struct Peer;
  struct ReadOp;

  // User area of every UCX request (ucp_params.request_size). Zeroed by
  // request_init and again before a request goes back to UCX, so a callback
  // that fires before ucp_get_nbx returned sees op == nullptr.
  struct RequestArea {
    ReadOp* op;
    size_t bytes;
    size_t slot;  // index in op->requests
    bool early_done;
    bool abandoned;
    ucs_status_t early_status;
  };

  struct ReadOp {
    // Inputs, immutable while queued or active.
    std::string ucx_address;
    std::string ucx_rkey;
    absl::Span<const RemoteRead> reads;
    absl::Time deadline;
    Engine* engine = nullptr;
    // Progress thread.
    Peer* peer = nullptr;
    ucp_rkey_h rkey = nullptr;
    size_t next = 0;               // first range not posted yet
    size_t completed = 0;          // ranges that arrived
    std::vector<void*> requests;   // gets in flight
    absl::Status status;           // first error; OK while healthy
    absl::Time abandon_at = absl::InfiniteFuture();
    // Hands the result to the caller; op may be gone right after Notify.
    absl::Notification done;
  };

  struct Peer {
    std::string ucx_address;
    ucp_ep_h ep = nullptr;        // null once closing
    ucp_ep_h ep_key = nullptr;    // the handle, kept for peers_by_ep_
    absl::flat_hash_map<std::string, ucp_rkey_h> rkeys;  // packed UCX rkey -> handle
    int active_ops = 0;
    bool failed = false;
    ucs_status_ptr_t close_request = nullptr;
    absl::Time close_give_up_at = absl::InfiniteFuture();
  };

  explicit Engine(UcxTransportOptions options) : options_(std::move(options)) {}
  ~Engine();

  absl::Status Start();
  void Shutdown();

  const UcxTransportOptions& options() const { return options_; }
  const std::string& address() const { return address_; }
  bool cuda_supported() const { return cuda_supported_; }

  // Maps [base, base + bytes), or allocates `bytes` when base is null (then
  // *base is set), and packs its rkey.
  absl::Status Register(void** base, size_t bytes, MemoryKind kind, ucp_mem_h* memh,
                        std::string* packed_rkey);
  void Unregister(ucp_mem_h memh);
  absl::Status Read(absl::string_view peer_address, absl::string_view packed_rkey,
                    absl::Span<const RemoteRead> reads);
  absl::StatusOr<std::string> DescribeConnection(absl::string_view peer_address);
  BlockTransport::Stats GetStats() const;

 private:
  static void InitRequest(void* request);
  static void OnGetDone(void* request, ucs_status_t status, void* user_data);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  // Runs `task` on the progress thread and waits for it; after Shutdown it
  // runs inline under queue_mu_ (only unregistering comes then).
  void RunOnThread(const std::function<void()>& task);
  void Post(std::function<void()> task);
  void Wake();
  void ProgressLoop();
  int SleepBudgetMs(absl::Time now) const;

  // Progress thread.
  absl::StatusOr<Peer*> Connect(absl::string_view ucx_address);
  void StartRead(ReadOp* op);
  void PostGets(ReadOp* op, int budget);
  void CompleteGet(ReadOp* op, size_t bytes, ucs_status_t status);
  void FailOp(ReadOp* op, absl::Status status);
  void DropPeer(Peer* peer, ucs_status_t status, absl::string_view why);
  void CloseDroppedPeers();
  void ReapClosedPeers(absl::Time now);
  bool FinishDoneOps(absl::Time now);  // true if any op finished
  void CheckDeadlines(absl::Time now);
  void CloseAllPeers();
  void DestroyPeer(Peer* peer);
  static bool CloseDone(const Peer* peer);

  const UcxTransportOptions options_;
  // Immutable after Start.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  uint64_t instance_id_ = 0;
  bool cuda_supported_ = false;
  int ucx_efd_ = -1;
  int wake_fd_ = -1;
  int epoll_fd_ = -1;
  std::thread thread_;

  mutable absl::Mutex queue_mu_;
  std::vector<std::function<void()>> tasks_ ABSL_GUARDED_BY(queue_mu_);
  bool stop_requested_ ABSL_GUARDED_BY(queue_mu_) = false;
  bool thread_alive_ ABSL_GUARDED_BY(queue_mu_) = false;

  // Progress thread.
  absl::flat_hash_map<std::string, Peer*> peers_;  // UCX address -> live peer
  absl::flat_hash_map<ucp_ep_h, Peer*> peers_by_ep_;  // every peer not destroyed
  std::vector<ReadOp*> active_ops_;
  std::vector<Peer*> to_close_;  // dropped, endpoint not closed yet
  std::vector<Peer*> closing_;   // endpoint closing or Reads still draining
  std::vector<Peer*> zombies_;   // close never completed: kept until Shutdown

  std::atomic<int64_t> bytes_read_{0};
  std::atomic<int64_t> reads_ok_{0};
  std::atomic<int64_t> reads_failed_{0};
  std::atomic<int64_t> peers_failed_{0};
};

void UcxTransport::Engine::InitRequest(void* request) { new (request) RequestArea{}; }

absl::Status UcxTransport::Engine::Start() {
  instance_id_ = RandomInstanceId();
  ucp_config_t* config = nullptr;
  ucs_status_t status = ucp_config_read(nullptr, nullptr, &config);
  if (status != UCS_OK) return UcsError(status, "ucp_config_read");
  auto modify = [&](const char* name, const std::string& value) -> absl::Status {
    ucs_status_t s = ucp_config_modify(config, name, value.c_str());
    if (s != UCS_OK) {
      return absl::InvalidArgumentError(absl::StrCat("UCX rejected ", name, "='", value,
                                                     "': ", ucs_status_string(s)));
    }
    return absl::OkStatus();
  };
  absl::Status config_status;
  if (!options_.transports.empty()) config_status.Update(modify("TLS", options_.transports));
  if (!options_.net_devices.empty()) {
    config_status.Update(modify("NET_DEVICES", options_.net_devices));
  }
  if (options_.error_handling == UcxTransportOptions::ErrorHandling::kPeer) {
    // Shared-memory transports (sysv, posix) join PEER-mode endpoints only
    // when they advertise error handling (keepalive on the peer process),
    // which UCX 1.13 turns off by default; without it PEER mode falls back to
    // tcp on one host. UCX_MM_ERROR_HANDLING is the parent of both settings
    // (UCX warns about it when no such transport is in the list).
    if (MayUseSharedMemory(options_.transports)) {
      config_status.Update(modify("MM_ERROR_HANDLING", "y"));
    }
    config_status.Update(modify(
        "KEEPALIVE_INTERVAL",
        absl::StrCat(absl::ToInt64Microseconds(options_.keepalive_interval), "us")));
  }
  if (!config_status.ok()) {
    ucp_config_release(config);
    return config_status;
  }

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_REQUEST_SIZE |
                      UCP_PARAM_FIELD_REQUEST_INIT | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP;
  params.request_size = sizeof(RequestArea);
  params.request_init = &Engine::InitRequest;
  params.name = "asymcache";
  status = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (status != UCS_OK) {
    context_ = nullptr;
    absl::Status error = UcsError(status, "ucp_init");
    if (status == UCS_ERR_NO_DEVICE || status == UCS_ERR_NO_ELEM) {
      return absl::FailedPreconditionError(absl::StrCat(
          error.message(), " (no usable transport for transports='", options_.transports,
          "' net_devices='", options_.net_devices, "')"));
    }
    return error;
  }

  ucp_context_attr_t context_attr{};
  context_attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  status = ucp_context_query(context_, &context_attr);
  if (status != UCS_OK) return UcsError(status, "ucp_context_query");
  cuda_supported_ = (context_attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;

  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // only the progress thread calls it
  status = ucp_worker_create(context_, &worker_params, &worker_);
  if (status != UCS_OK) {
    worker_ = nullptr;
    return UcsError(status, "ucp_worker_create");
  }

  ucp_worker_attr_t worker_attr{};
  worker_attr.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS;
  status = ucp_worker_query(worker_, &worker_attr);
  if (status != UCS_OK) return UcsError(status, "ucp_worker_query(address)");
  address_ = EncodeAddress(instance_id_,
                           absl::string_view(reinterpret_cast<const char*>(worker_attr.address),
                                             worker_attr.address_length));
  ucp_worker_release_address(worker_, worker_attr.address);

  status = ucp_worker_get_efd(worker_, &ucx_efd_);
  if (status != UCS_OK) return UcsError(status, "ucp_worker_get_efd");
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || epoll_fd_ < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("eventfd/epoll_create1 failed: ", std::strerror(errno)));
  }
  for (int fd : {ucx_efd_, wake_fd_}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) {
      return absl::InternalError(absl::StrCat("epoll_ctl failed: ", std::strerror(errno)));
    }
  }
  {
    absl::MutexLock lock(&queue_mu_);
    thread_alive_ = true;
  }
  thread_ = std::thread([this] { ProgressLoop(); });
  return absl::OkStatus();
}

void UcxTransport::Engine::Shutdown() {
  {
    absl::MutexLock lock(&queue_mu_);
    if (!thread_alive_) return;
    stop_requested_ = true;
  }
  Wake();
  thread_.join();
}

UcxTransport::Engine::~Engine() {
  Shutdown();
  if (thread_.joinable()) thread_.join();
  if (worker_ != nullptr) ucp_worker_destroy(worker_);  // Start failed half-way
  if (context_ != nullptr) ucp_cleanup(context_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void UcxTransport::Engine::Wake() {
  const uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the thread wakes anyway.
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
}

void UcxTransport::Engine::Post(std::function<void()> task) {
  {
    absl::MutexLock lock(&queue_mu_);
    tasks_.push_back(std::move(task));
  }
  Wake();
}

void UcxTransport::Engine::RunOnThread(const std::function<void()>& task) {
  absl::Notification done;
  {
    absl::MutexLock lock(&queue_mu_);
    if (!thread_alive_) {
      task();
      return;
    }
    tasks_.push_back([&task, &done] {
      task();
      done.Notify();
    });
  }
  Wake();
  done.WaitForNotification();
}

int UcxTransport::Engine::SleepBudgetMs(absl::Time now) const {
  absl::Time wake = now + absl::Milliseconds(kMaxSleepMs);
  for (const ReadOp* op : active_ops_) {
    wake = std::min(wake, op->status.ok() ? op->deadline : op->abandon_at);
  }
  if (!closing_.empty()) wake = std::min(wake, now + absl::Milliseconds(kClosingSleepMs));
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(absl::Ceil(wake - now, absl::Milliseconds(1))),
                          0, kMaxSleepMs));
}

void UcxTransport::Engine::ProgressLoop() {
  absl::Time last_activity = absl::Now();
  std::vector<std::function<void()>> tasks;
  for (;;) {
    bool stop = false;
    {
      absl::MutexLock lock(&queue_mu_);
      tasks.swap(tasks_);
      stop = stop_requested_;
    }
    bool activity = !tasks.empty();
    for (auto& task : tasks) task();
    tasks.clear();
    if (stop) break;

    while (ucp_worker_progress(worker_) != 0) activity = true;
    for (ReadOp* op : active_ops_) {
      if (op->status.ok() && op->next < op->reads.size() &&
          op->requests.size() < static_cast<size_t>(options_.max_outstanding)) {
        PostGets(op, kPostBudgetPerPass);
        activity = true;
      }
    }
    const absl::Time now = absl::Now();
    CheckDeadlines(now);
    CloseDroppedPeers();
    if (FinishDoneOps(now)) activity = true;
    ReapClosedPeers(now);

    if (activity) {
      last_activity = now;
      continue;
    }
    // Spin a little after activity (ours, or a peer reading from us): on
    // shared memory the next message is microseconds away; a sleep and a
    // wake-up would cost more.
    if (now - last_activity < kSpinAfterActivity) continue;
    if (ucp_worker_arm(worker_) == UCS_ERR_BUSY) continue;  // events pending
    epoll_event events[2];
    const int n = ::epoll_wait(epoll_fd_, events, 2, SleepBudgetMs(now));
    for (int i = 0; i < n; ++i) {
      if (events[i].data.fd == wake_fd_) {
        uint64_t value;
        [[maybe_unused]] ssize_t r = ::read(wake_fd_, &value, sizeof(value));
      }
    }
  }

  // Shutdown: no Read is in flight (the transport's destructor contract).
  CloseAllPeers();
  absl::MutexLock lock(&queue_mu_);
  for (auto& task : tasks_) task();  // queued after the stop request
  tasks_.clear();
  thread_alive_ = false;
  ucp_worker_destroy(worker_);
  worker_ = nullptr;
}

bool UcxTransport::Engine::CloseDone(const Peer* peer) {
  return !UCS_PTR_IS_PTR(peer->close_request) ||
         ucp_request_check_status(peer->close_request) != UCS_INPROGRESS;
}

void UcxTransport::Engine::DestroyPeer(Peer* peer) {
  if (UCS_PTR_IS_PTR(peer->close_request)) ucp_request_free(peer->close_request);
  for (auto& [packed, rkey] : peer->rkeys) ucp_rkey_destroy(rkey);
  peers_by_ep_.erase(peer->ep_key);
  delete peer;
}

void UcxTransport::Engine::CloseAllPeers() {
  for (auto& [address, peer] : peers_) {
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = 0;  // flush: the peer learns that we left
    peer->close_request = ucp_ep_close_nbx(peer->ep, &param);
    peer->ep = nullptr;
    closing_.push_back(peer);
  }
  peers_.clear();
  CloseDroppedPeers();
  const absl::Time give_up = absl::Now() + kShutdownCloseGrace;
  for (;;) {
    ucp_worker_progress(worker_);
    bool pending = false;
    for (Peer* peer : closing_) pending = pending || !CloseDone(peer);
    if (!pending || absl::Now() >= give_up) break;
  }
  for (Peer* peer : closing_) DestroyPeer(peer);
  for (Peer* peer : zombies_) DestroyPeer(peer);
  closing_.clear();
  zombies_.clear();
}

// ---------------------------------------------------------------------------
// Registration.

absl::Status UcxTransport::Engine::Register(void** base, size_t bytes, MemoryKind kind,
                                            ucp_mem_h* memh, std::string* packed_rkey) {
  absl::Status result;
  RunOnThread([&] {
    ucp_mem_map_params_t params{};
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                        UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.address = *base;
    params.length = bytes;
    params.memory_type = kind == MemoryKind::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
    if (*base == nullptr) {
      params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
      params.flags = UCP_MEM_MAP_ALLOCATE;
    }
    ucs_status_t status = ucp_mem_map(context_, &params, memh);
    if (status != UCS_OK) {
      result = UcsError(status, absl::StrFormat("ucp_mem_map(%p, %u bytes, %s)", *base, bytes,
                                                MemoryKindName(kind)));
      return;
    }
    if (*base == nullptr) {
      ucp_mem_attr_t attr{};
      attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS;
      status = ucp_mem_query(*memh, &attr);
      if (status != UCS_OK) {
        result = UcsError(status, "ucp_mem_query");
        ucp_mem_unmap(context_, *memh);
        return;
      }
      *base = attr.address;
    }
    void* buffer = nullptr;
    size_t size = 0;
    status = ucp_rkey_pack(context_, *memh, &buffer, &size);
    if (status != UCS_OK) {
      result = UcsError(status, "ucp_rkey_pack");
      ucp_mem_unmap(context_, *memh);
      return;
    }
    *packed_rkey = EncodeRkey(instance_id_, kind, reinterpret_cast<uintptr_t>(*base), bytes,
                              absl::string_view(static_cast<const char*>(buffer), size));
    ucp_rkey_buffer_release(buffer);
  });
  return result;
}

void UcxTransport::Engine::Unregister(ucp_mem_h memh) {
  RunOnThread([&] {
    ucs_status_t status = ucp_mem_unmap(context_, memh);
    if (status != UCS_OK) {
      ABSL_RAW_LOG(ERROR, "ucp_mem_unmap failed: %s", ucs_status_string(status));
    }
  });
}

// ---------------------------------------------------------------------------
// Reads.

absl::Status UcxTransport::Engine::Read(absl::string_view peer_address,
                                        absl::string_view packed_rkey,
                                        absl::Span<const RemoteRead> reads) {
  absl::StatusOr<DecodedAddress> address = DecodeAddress(peer_address);
  if (!address.ok()) return address.status();
  absl::StatusOr<DecodedRkey> rkey = DecodeRkey(packed_rkey);
  if (!rkey.ok()) return rkey.status();
  if (rkey->instance != address->instance) {
    return absl::InvalidArgumentError(
        "remote key was packed by a different transport than the peer address names");
  }
  for (size_t i = 0; i < reads.size(); ++i) {
    const RemoteRead& r = reads[i];
    if (r.bytes == 0) {
      return absl::InvalidArgumentError(absl::StrCat("read ", i, " has zero bytes"));
    }
    if (r.local == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("read ", i, " has a null local pointer"));
    }
    if (r.remote_addr < rkey->base || r.bytes > rkey->bytes ||
        r.remote_addr - rkey->base > rkey->bytes - r.bytes) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "read %u: remote range [0x%x, +%u) is outside the registered region [0x%x, +%u)", i,
          r.remote_addr, r.bytes, rkey->base, rkey->bytes));
    }
  }
  if (reads.empty()) return absl::OkStatus();

  ReadOp op;
  op.ucx_address = std::string(address->ucx_address);
  op.ucx_rkey = std::string(rkey->ucx_rkey);
  op.reads = reads;
  op.engine = this;
  op.deadline = absl::Now() + options_.read_timeout;
  Post([this, &op] { StartRead(&op); });
  op.done.WaitForNotification();
  if (op.status.ok()) {
    reads_ok_.fetch_add(1, std::memory_order_relaxed);
  } else {
    reads_failed_.fetch_add(1, std::memory_order_relaxed);
  }
  return op.status;
}

absl::StatusOr<UcxTransport::Engine::Peer*> UcxTransport::Engine::Connect(
    absl::string_view ucx_address) {
  auto it = peers_.find(ucx_address);
  if (it != peers_.end()) return it->second;
  auto peer = std::make_unique<Peer>();
  peer->ucx_address = std::string(ucx_address);
  ucp_ep_params_t params{};
  params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  params.address = reinterpret_cast<const ucp_address_t*>(peer->ucx_address.data());
  if (options_.error_handling == UcxTransportOptions::ErrorHandling::kPeer) {
    params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &Engine::OnEndpointError;
    params.err_handler.arg = this;  // the peer is found by its ep: it may be gone by then
  } else {
    params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
  }
  ucs_status_t status = ucp_ep_create(worker_, &params, &peer->ep);
  if (status != UCS_OK) return PeerError(status, "cannot connect to peer (ucp_ep_create)");
  peer->ep_key = peer->ep;
  Peer* raw = peer.release();
  peers_.emplace(raw->ucx_address, raw);
  peers_by_ep_[raw->ep_key] = raw;
  return raw;
}

void UcxTransport::Engine::StartRead(ReadOp* op) {
  absl::StatusOr<Peer*> peer = Connect(op->ucx_address);
  if (!peer.ok()) {
    op->status = peer.status();
    op->done.Notify();
    return;
  }
  Peer* p = *peer;
  auto it = p->rkeys.find(op->ucx_rkey);
  if (it == p->rkeys.end()) {
    if (p->rkeys.size() >= kMaxCachedRkeysPerPeer && p->active_ops == 0) {
      for (auto& [packed, rkey] : p->rkeys) ucp_rkey_destroy(rkey);
      p->rkeys.clear();
    }
    ucp_rkey_h rkey = nullptr;
    ucs_status_t status = ucp_ep_rkey_unpack(p->ep, op->ucx_rkey.data(), &rkey);
    if (status != UCS_OK) {
      op->status = absl::FailedPreconditionError(
          absl::StrCat("remote key cannot be used on the connection to this peer "
                       "(ucp_ep_rkey_unpack): ",
                       ucs_status_string(status)));
      op->done.Notify();
      return;
    }
    it = p->rkeys.emplace(op->ucx_rkey, rkey).first;
  }
  op->peer = p;
  op->rkey = it->second;
  ++p->active_ops;
  active_ops_.push_back(op);
}

void UcxTransport::Engine::PostGets(ReadOp* op, int budget) {
  const size_t max_outstanding = static_cast<size_t>(options_.max_outstanding);
  while (budget-- > 0 && op->status.ok() && op->next < op->reads.size() &&
         op->requests.size() < max_outstanding) {
    const RemoteRead& r = op->reads[op->next++];
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK;
    param.cb.send = &Engine::OnGetDone;
    ucs_status_ptr_t request =
        ucp_get_nbx(op->peer->ep, r.local, r.bytes, r.remote_addr, op->rkey, &param);
    if (request == nullptr) {
      CompleteGet(op, r.bytes, UCS_OK);
    } else if (UCS_PTR_IS_ERR(request)) {
      CompleteGet(op, r.bytes, UCS_PTR_STATUS(request));
    } else {
      auto* area = static_cast<RequestArea*>(request);
      if (area->early_done) {  // completed before ucp_get_nbx returned
        const ucs_status_t status = area->early_status;
        *area = RequestArea{};
        ucp_request_free(request);
        CompleteGet(op, r.bytes, status);
      } else {
        area->op = op;
        area->bytes = r.bytes;
        area->slot = op->requests.size();
        op->requests.push_back(request);
      }
    }
  }
}

void UcxTransport::Engine::OnGetDone(void* request, ucs_status_t status, void* /*user_data*/) {
  auto* area = static_cast<RequestArea*>(request);
  if (area->abandoned) {  // its Read already returned
    *area = RequestArea{};
    ucp_request_free(request);
    return;
  }
  if (area->op == nullptr) {  // ucp_get_nbx has not returned yet: PostGets finishes it
    area->early_done = true;
    area->early_status = status;
    return;
  }
  ReadOp* op = area->op;
  const size_t bytes = area->bytes;
  void* last = op->requests.back();
  op->requests[area->slot] = last;
  static_cast<RequestArea*>(last)->slot = area->slot;
  op->requests.pop_back();
  *area = RequestArea{};
  ucp_request_free(request);
  op->engine->CompleteGet(op, bytes, status);
}

void UcxTransport::Engine::CompleteGet(ReadOp* op, size_t bytes, ucs_status_t status) {
  if (status == UCS_OK) {
    ++op->completed;
    bytes_read_.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
    return;
  }
  FailOp(op, PeerError(status, absl::StrCat("reading from peer failed after ", op->completed,
                                            " of ", op->reads.size(), " ranges")));
  DropPeer(op->peer, status, "a get failed");
}

void UcxTransport::Engine::FailOp(ReadOp* op, absl::Status status) {
  if (!op->status.ok()) return;
  op->status = std::move(status);
  op->abandon_at = absl::Now() + kAbandonAfter;
}

void UcxTransport::Engine::OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* engine = static_cast<Engine*>(arg);
  auto it = engine->peers_by_ep_.find(ep);
  if (it == engine->peers_by_ep_.end()) return;  // already destroyed
  engine->DropPeer(it->second, status, "the endpoint reported an error");
}

// Marks the peer failed, fails its Reads and queues its endpoint for closing
// (CloseDroppedPeers, outside UCX callbacks).
void UcxTransport::Engine::DropPeer(Peer* peer, ucs_status_t status, absl::string_view why) {
  if (peer->failed) return;
  peer->failed = true;
  peers_failed_.fetch_add(1, std::memory_order_relaxed);
  auto it = peers_.find(peer->ucx_address);
  if (it != peers_.end() && it->second == peer) peers_.erase(it);
  for (ReadOp* op : active_ops_) {
    if (op->peer == peer) {
      FailOp(op, PeerError(status, absl::StrCat("peer connection dropped (", why, ") after ",
                                                op->completed, " of ", op->reads.size(),
                                                " ranges")));
    }
  }
  to_close_.push_back(peer);
}

void UcxTransport::Engine::CloseDroppedPeers() {
  const absl::Time now = absl::Now();
  while (!to_close_.empty()) {
    Peer* peer = to_close_.back();
    to_close_.pop_back();
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    // kPeer: forced, completing the gets in flight with an error. kNone
    // cannot force (UCX answers INVALID_PARAM): flush, which ends when the
    // peer answers, if ever.
    param.flags = options_.error_handling == UcxTransportOptions::ErrorHandling::kPeer
                      ? UCP_EP_CLOSE_FLAG_FORCE
                      : 0;
    peer->close_request = ucp_ep_close_nbx(peer->ep, &param);
    peer->ep = nullptr;
    peer->close_give_up_at = now + kCloseGiveUpAfter;
    closing_.push_back(peer);
  }
}

void UcxTransport::Engine::ReapClosedPeers(absl::Time now) {
  for (size_t i = 0; i < closing_.size();) {
    Peer* peer = closing_[i];
    const bool close_done = CloseDone(peer);
    if (peer->active_ops > 0 || (!close_done && now < peer->close_give_up_at)) {
      ++i;
      continue;
    }
    if (close_done) {
      DestroyPeer(peer);
    } else {
      // UCX may still use the endpoint's rkeys for gets it never completed:
      // keep them until the worker goes.
      zombies_.push_back(peer);
    }
    closing_[i] = closing_.back();
    closing_.pop_back();
  }
}

void UcxTransport::Engine::CheckDeadlines(absl::Time now) {
  for (ReadOp* op : active_ops_) {
    if (op->status.ok() && now >= op->deadline) {
      FailOp(op, absl::DeadlineExceededError(absl::StrCat(
                     "read timed out after ", absl::FormatDuration(options_.read_timeout), ": ",
                     op->completed, " of ", op->reads.size(), " ranges arrived")));
      // Closing the endpoint is the only way to take back the gets in flight
      // (UCX cannot cancel an RMA request).
      DropPeer(op->peer, UCS_ERR_TIMED_OUT, "a read to it timed out");
    }
  }
}

bool UcxTransport::Engine::FinishDoneOps(absl::Time now) {
  bool any = false;
  for (size_t i = 0; i < active_ops_.size();) {
    ReadOp* op = active_ops_[i];
    bool finished = false;
    if (op->status.ok()) {
      finished = op->requests.empty() && op->completed == op->reads.size();
    } else if (op->requests.empty()) {
      finished = true;
    } else if (now >= op->abandon_at && op->peer->ep == nullptr &&
               (CloseDone(op->peer) || now >= op->peer->close_give_up_at)) {
      // The endpoint is closed (or will never be) and UCX did not complete
      // these gets: abandon them (see the Engine comment).
      for (void* request : op->requests) {
        auto* area = static_cast<RequestArea*>(request);
        area->op = nullptr;
        area->abandoned = true;
      }
      op->requests.clear();
      finished = true;
    }
    if (!finished) {
      ++i;
      continue;
    }
    --op->peer->active_ops;
    active_ops_[i] = active_ops_.back();
    active_ops_.pop_back();
    any = true;
    op->done.Notify();
  }
  return any;
}

absl::StatusOr<std::string> UcxTransport::Engine::DescribeConnection(
    absl::string_view peer_address) {
  absl::StatusOr<DecodedAddress> address = DecodeAddress(peer_address);
  if (!address.ok()) return address.status();
  absl::StatusOr<std::string> result;
  RunOnThread([&] {
    absl::StatusOr<Peer*> peer = Connect(address->ucx_address);
    if (!peer.ok()) {
      result = peer.status();
      return;
    }
    char* text = nullptr;
    size_t size = 0;
    FILE* stream = ::open_memstream(&text, &size);
    if (stream == nullptr) {
      result = absl::ResourceExhaustedError("open_memstream failed");
      return;
    }
    ucp_ep_print_info((*peer)->ep, stream);
    std::fclose(stream);
    result = std::string(text, size);
    std::free(text);
  });
  return result;
}

BlockTransport::Stats UcxTransport::Engine::GetStats() const {
  BlockTransport::Stats stats;
  stats.bytes_read = bytes_read_.load(std::memory_order_relaxed);
  stats.reads_ok = reads_ok_.load(std::memory_order_relaxed);
  stats.reads_failed = reads_failed_.load(std::memory_order_relaxed);
  stats.peers_failed = peers_failed_.load(std::memory_order_relaxed);
  return stats;
}

// ---------------------------------------------------------------------------
// Region and transport.

class UcxTransport::Region final : public RegisteredRegion {
 public:
  Region(std::shared_ptr<Engine> engine, void* base, size_t bytes,
            MemoryKind kind, ucp_mem_h memh, std::string packed_rkey)
      : engine_(std::move(engine)),
        base_(base),
        bytes_(bytes),
        kind_(kind),
        memh_(memh),
        packed_rkey_(std::move(packed_rkey)) {}
  ~Region() override { engine_->Unregister(memh_); }

  void* base() const override { return base_; }
  size_t bytes() const override { return bytes_; }
  MemoryKind kind() const override { return kind_; }
  const std::string& packed_rkey() const override { return packed_rkey_; }

 private:
  const std::shared_ptr<Engine> engine_;
  void* const base_;
  const size_t bytes_;
  const MemoryKind kind_;
  const ucp_mem_h memh_;
  const std::string packed_rkey_;
};

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(UcxTransportOptions options) {
  if (absl::Status valid = options.Validate(); !valid.ok()) return valid;
  auto engine = std::make_shared<Engine>(std::move(options));
  if (absl::Status started = engine->Start(); !started.ok()) return started;
  return std::unique_ptr<UcxTransport>(new UcxTransport(std::move(engine)));
}

UcxTransport::UcxTransport(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

UcxTransport::~UcxTransport() { engine_->Shutdown(); }

const std::string& UcxTransport::address() const { return engine_->address(); }

bool UcxTransport::SupportsMemory(MemoryKind kind) const {
  return kind == MemoryKind::kHost || (kind == MemoryKind::kCuda && engine_->cuda_supported());
}

absl::StatusOr<std::unique_ptr<RegisteredRegion>> UcxTransport::Register(void* base, size_t bytes,
                                                                          MemoryKind kind) {
  if (base == nullptr) return absl::InvalidArgumentError("Register: base is null");
  if (bytes == 0) return absl::InvalidArgumentError("Register: zero bytes");
  if (reinterpret_cast<uintptr_t>(base) > UINTPTR_MAX - bytes) {
    return absl::InvalidArgumentError("Register: base + bytes overflows the address space");
  }
  if (kind != MemoryKind::kHost && kind != MemoryKind::kCuda) {
    return absl::InvalidArgumentError("Register: unknown memory kind");
  }
  if (!SupportsMemory(kind)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "Register: this UCX build cannot register ", MemoryKindName(kind),
        " memory (no such memory type in ucp_context_query); stage the blocks through "
        "registered host memory (pinned, e.g. cudaHostAlloc) instead"));
  }
  ucp_mem_h memh = nullptr;
  std::string packed_rkey;
  if (absl::Status s = engine_->Register(&base, bytes, kind, &memh, &packed_rkey); !s.ok()) {
    return s;
  }
  return std::unique_ptr<RegisteredRegion>(
      new Region(engine_, base, bytes, kind, memh, std::move(packed_rkey)));
}

absl::StatusOr<std::unique_ptr<RegisteredRegion>> UcxTransport::Allocate(size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("Allocate: zero bytes");
  void* base = nullptr;
  ucp_mem_h memh = nullptr;
  std::string packed_rkey;
  if (absl::Status s = engine_->Register(&base, bytes, MemoryKind::kHost, &memh, &packed_rkey);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<RegisteredRegion>(
      new Region(engine_, base, bytes, MemoryKind::kHost, memh, std::move(packed_rkey)));
}

absl::Status UcxTransport::Read(absl::string_view peer_address, absl::string_view packed_rkey,
                                absl::Span<const RemoteRead> reads) {
  return engine_->Read(peer_address, packed_rkey, reads);
}

BlockTransport::Stats UcxTransport::GetStats() const { return engine_->GetStats(); }

absl::StatusOr<std::string> UcxTransport::DescribeConnection(absl::string_view peer_address) {
  return engine_->DescribeConnection(peer_address);
}

const UcxTransportOptions& UcxTransport::options() const { return engine_->options(); }

}  // namespace asymcache

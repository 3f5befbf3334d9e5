// UcxTransport: the BlockTransport over UCX (STYLE.md §14): one RAII wrapper
// that owns one ucp_context, one ucp_worker and the thread that drives it.
//
// Every UCX call runs on that progress thread: callers hand it work through a
// queue and wait; ucs_status_t becomes absl::Status at this boundary, with
// ucs_status_string in the message. The thread sleeps on the worker's event fd
// (ucp_worker_arm + epoll) when idle, spins briefly after activity, and wakes
// at least every 100 ms so UCX timers (keepalive) and Read deadlines run.
//
// Exported memory is either registered (Register: any host memory) or
// allocated by UCX (Allocate: shared memory that a reader on the same host
// maps, so its gets are one-sided memcpy at memory bandwidth; registered
// memory is served by the exporter's progress thread, an order of magnitude
// slower on one host). Across hosts both go over the network transport.
//
// Read issues one ucp_get_nbx per range, at most max_outstanding at a time,
// and returns when all completed, one failed, or read_timeout passed. A peer
// whose endpoint reports an error (or a Read to it that times out) is dropped:
// its endpoint is closed (forced in kPeer mode, which completes the gets still
// in flight) and the next Read to that peer reconnects. A failed Read returns
// once its gets completed, or at most about 1 s after the failure (gets UCX
// never completes are then abandoned; docs/transport.md says what that
// leaves open). See the doc for the error-handling modes, the transports they
// allow and measured bandwidth.
//
// Ownership: a RegisteredRegion keeps the UCX context alive, so it may outlive
// the transport (it is then unregistered when destroyed). Endpoints and cached
// remote keys belong to the transport and are closed by its destructor, which
// must not run while a Read is in flight.
//
// Thread-safety: thread-safe (see BlockTransport).
#ifndef ASYMCACHE_SERVICES_TRANSPORT_UCX_TRANSPORT_H_
#define ASYMCACHE_SERVICES_TRANSPORT_UCX_TRANSPORT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "services/transport/block_transport.h"

namespace asymcache {

struct UcxTransportOptions {
  // See docs/transport.md for the measurements behind the default.
  enum class ErrorHandling {
    // UCP_ERR_HANDLING_MODE_PEER: endpoints report peer failure (tcp reset,
    // keepalive every keepalive_interval), a failed or timed-out Read
    // force-closes the endpoint, which takes back its gets. UcxTransport also
    // turns on UCX_MM_ERROR_HANDLING so that shared memory (sysv/posix) takes
    // part; UCX 1.13 would otherwise use only tcp between two local peers.
    kPeer,
    // UCP_ERR_HANDLING_MODE_NONE: UCX reports nothing about peers and cannot
    // force-close; a dead peer is noticed only by a failed get or by
    // read_timeout, and a timed-out Read abandons its gets (see the doc).
    kNone,
  };

  // UCX_TLS-style transport list ("shm,cma,tcp", "tcp", "^ib"). Empty: UCX's
  // own choice (the UCX_TLS environment variable, else every transport).
  std::string transports;
  // UCX_NET_DEVICES-style network device list ("lo", "eth0,mlx5_0:1"). Empty:
  // UCX's own choice (the UCX_NET_DEVICES environment variable, else all).
  std::string net_devices;
  ErrorHandling error_handling = ErrorHandling::kPeer;
  // How long one Read may take, from the call to the last byte. > 0. A Read
  // that times out returns DEADLINE_EXCEEDED within about 1 s more (the time
  // UCX gets to complete its gets after the endpoint is closed).
  absl::Duration read_timeout = absl::Seconds(10);
  // Gets in flight per Read. [1, 65536].
  int max_outstanding = 256;
  // Interval of UCX keepalive probes on idle endpoints (kPeer only): a peer
  // that dies without closing its sockets is noticed within about twice this.
  // > 0.
  absl::Duration keepalive_interval = absl::Seconds(1);

  absl::Status Validate() const;  // INVALID_ARGUMENT naming the field
};

absl::string_view ErrorHandlingName(UcxTransportOptions::ErrorHandling mode);  // "peer", "none"

class UcxTransport final : public BlockTransport {
 public:
  // INVALID_ARGUMENT for bad options (including transport or device lists UCX
  // rejects); UNAVAILABLE/FAILED_PRECONDITION when UCX cannot start (no usable
  // transport, out of file descriptors...).
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(UcxTransportOptions options);
  ~UcxTransport() override;

  UcxTransport(const UcxTransport&) = delete;
  UcxTransport& operator=(const UcxTransport&) = delete;

  const std::string& address() const override;
  // kHost always; kCuda only if this UCX build has CUDA memory support
  // (ucp_context_query's memory_types). Debian's UCX 1.13 has none.
  bool SupportsMemory(MemoryKind kind) const override;
  absl::StatusOr<std::unique_ptr<RegisteredRegion>> Register(void* base, size_t bytes,
                                                              MemoryKind kind) override;
  absl::StatusOr<std::unique_ptr<RegisteredRegion>> Allocate(size_t bytes) override;
  absl::Status Read(absl::string_view peer_address, absl::string_view packed_rkey,
                    absl::Span<const RemoteRead> reads) override;
  Stats GetStats() const override;

  // Connects to the peer (if not connected yet) and returns UCX's description
  // of the endpoint: its lanes and the transport each uses (ucp_ep_print_info).
  // Lanes are final only after the first Read to the peer completed.
  // INVALID_ARGUMENT for a malformed address; UNAVAILABLE if unreachable.
  absl::StatusOr<std::string> DescribeConnection(absl::string_view peer_address);

  const UcxTransportOptions& options() const;

 private:
  class Engine;  // the UCX state and the progress thread, in ucx_transport.cc
  class Region;  // the RegisteredRegion it hands out
  explicit UcxTransport(std::shared_ptr<Engine> engine);
  std::shared_ptr<Engine> engine_;  // shared with the regions it registered
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_TRANSPORT_UCX_TRANSPORT_H_

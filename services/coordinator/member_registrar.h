// MemberRegistrar: the member side of the coordinator's membership protocol
// (proto/asymcache/v1/coordinator.proto: Register, Heartbeat, Deregister)
// against every coordinator replica a member is configured with. A cache
// daemon (and a worker) runs one; replicas hold only soft state, so each is
// registered with and heartbeated independently.
//
// Behaviour, per coordinator address (all driven by one thread, with every RPC
// issued asynchronously so a slow or dead replica never delays the others):
//   * Register until it succeeds; then Heartbeat (with the load callback's
//     latest values) every `heartbeat_interval_s` that replica returned.
//   * A heartbeat answered NOT_FOUND (the replica expired us, or restarted and
//     lost its table) registers again at once.
//   * A failed call (unreachable, deadline, refusal) is retried after a
//     backoff that doubles from `initial_backoff` to `max_backoff` (±20 %
//     jitter, so many members do not hit a restarted replica together) and
//     resets on success. The gRPC channel's own reconnect backoff is bounded
//     the same way, so a replica that comes back is found within max_backoff.
//   * Stop() ends the loop, cancels calls in flight and sends Deregister to
//     every replica that may hold the registration (one that refused it or
//     could not be reached does not), in parallel, each bounded by
//     `deregister_timeout`: Stop returns within about that long.
//
// Ownership: owns its channels and thread; the load callback is copied and
// must stay callable until Stop() returns (it runs on the registrar's thread,
// never under the registrar's lock, at most once per heartbeat round).
// Thread-safety: every public method is thread-safe; Stop() may be called from
// several threads (the first does the work, the others wait for it) and is
// called by the destructor.
#ifndef ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRAR_H_
#define ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRAR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "asymcache/v1/coordinator.pb.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace grpc {
class ChannelCredentials;
}  // namespace grpc

namespace asymcache {

struct MemberRegistrarOptions {
  // gRPC addresses (host:port) of every coordinator replica. Required: at
  // least one, none empty, no duplicates.
  std::vector<std::string> coordinators;
  // Deadline of one Register or Heartbeat call. 1 s: a healthy coordinator
  // answers in well under a millisecond, so this only bounds how long a hung
  // replica holds its own next attempt (never the others'). > 0.
  absl::Duration rpc_timeout = absl::Seconds(1);
  // Retry backoff after a failed call: starts at initial_backoff, doubles up
  // to max_backoff. 100 ms: a replica restarting on the same port is back in
  // well under a second; 2 s: a replica that is down for long costs one cheap
  // failed call every 2 s, and one that returns is rejoined within 2 s
  // (far below a typical member timeout). 0 < initial <= max <= 1 h.
  absl::Duration initial_backoff = absl::Milliseconds(100);
  absl::Duration max_backoff = absl::Seconds(2);
  // Heartbeat interval used when a replica's RegisterResponse carries none
  // (heartbeat_interval_s <= 0). 1 s, the coordinator's own default. > 0.
  absl::Duration fallback_heartbeat_interval = absl::Seconds(1);
  // Deadline of each Deregister on Stop() (sent to all replicas in
  // parallel). 1 s: a graceful shutdown should not wait on a dead replica,
  // which drops the member after its timeout anyway. > 0.
  absl::Duration deregister_timeout = absl::Seconds(1);
  // Channel credentials; nullptr = insecure (plain TCP). The daemon and the
  // worker pass MakeChannelCredentials of their transport security.
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  // INVALID_ARGUMENT naming the first bad field.
  absl::Status Validate() const;
};

class MemberRegistrar {
 public:
  // Who the member is (RegisterRequest, sent unchanged on every Register).
  struct Identity {
    std::string member_id;  // [A-Za-z0-9._:-]{1,128}, stable across restarts
    v1::MemberKind kind = v1::MEMBER_KIND_DAEMON;  // not UNSPECIFIED
    std::string address;    // host:port others reach it at; not empty
    int gpu = -1;           // GPU index on its host, -1 = CPU backend; >= -1
    v1::Role role = v1::ROLE_BOTH;
    std::optional<ModelConfig> model;              // required for daemons
    std::optional<CalibrationParams> calibration;  // daemons
    std::string daemon_id;  // workers: their co-located daemon's member id
    std::string instance;   // daemons: the run identity (daemon_instance)

    // INVALID_ARGUMENT naming the first bad field.
    absl::Status Validate() const;
  };

  // One heartbeat's load (coordinator.proto MemberLoad).
  struct Load {
    int64_t queued_prefill_tokens = 0;
    int64_t decode_batch = 0;
    int64_t free_blocks = 0;
    int64_t capacity_blocks = 0;
    int64_t busy_blocks = 0;            // not evictable now: writing, pinned, in transfer
    uint64_t last_event_sequence = 0;
  };
  using LoadFn = std::function<Load()>;

  // What the registrar knows about one replica (Peers()).
  struct PeerStatus {
    std::string address;
    bool registered = false;            // the last Register succeeded and no
                                        // heartbeat has been refused since
    std::string coordinator_instance;   // from its last RegisterResponse
    absl::Duration heartbeat_interval;  // in use for it
    int64_t registrations = 0;          // successful Register calls
    int64_t heartbeats = 0;             // successful Heartbeat calls
    int64_t failures = 0;               // failed calls of any kind
    absl::Status last_error;            // of the latest failed call (OK: none yet)
  };

  // Validates, creates one channel per replica and starts the thread; returns
  // at once (registration proceeds in the background). INVALID_ARGUMENT for
  // bad options or identity, or a null `load`.
  static absl::StatusOr<std::unique_ptr<MemberRegistrar>> Start(MemberRegistrarOptions options,
                                                                Identity identity, LoadFn load);
  ~MemberRegistrar();  // Stop()

  MemberRegistrar(const MemberRegistrar&) = delete;
  MemberRegistrar& operator=(const MemberRegistrar&) = delete;

  // Stops heartbeating and deregisters (see the file comment). Idempotent.
  void Stop();

  // One entry per configured replica, in configuration order.
  std::vector<PeerStatus> Peers() const;
  // Blocks until every replica has a successful registration standing (true)
  // or `timeout` passes or Stop() is called (false).
  bool WaitRegisteredWithAll(absl::Duration timeout) const;

  const Identity& identity() const { return identity_; }
  const MemberRegistrarOptions& options() const { return options_; }

 private:
  struct Peer;       // immutable: address and stub
  struct PeerState;  // mutable, guarded by mu_
  struct Call;       // one RPC in flight

  MemberRegistrar(MemberRegistrarOptions options, Identity identity, LoadFn load);
  void Run();
  // Whether an idle peer's next call is due at `now`; with `registered`, only
  // peers that will heartbeat (and so need a load) count.
  bool AnyDueLocked(absl::Time now, bool registered_only) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Time NextDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks the due peers busy and returns their calls, to be issued once mu_ is
  // released (gRPC may run a completion inline). A registered peer is left
  // for the next round when `load` is empty.
  std::vector<std::shared_ptr<Call>> TakeDueCallsLocked(absl::Time now,
                                                        const std::optional<Load>& load)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Issue(const std::shared_ptr<Call>& call) ABSL_LOCKS_EXCLUDED(mu_);
  void OnDone(const std::shared_ptr<Call>& call, const absl::Status& status)
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnFailureLocked(PeerState& state, const std::string& address, const char* what,
                       const absl::Status& status, absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration JitteredLocked(absl::Duration d) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WakeLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stopping_; }
  bool NoneInFlightLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DeregistersDoneLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return deregisters_pending_ == 0;
  }
  bool AllRegisteredOrStoppingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Immutable after construction.
  const MemberRegistrarOptions options_;
  const Identity identity_;
  const LoadFn load_;
  v1::RegisterRequest register_request_;  // built in the constructor, then only read
  std::vector<std::unique_ptr<Peer>> peers_;

  mutable absl::Mutex mu_;
  std::vector<PeerState> states_ ABSL_GUARDED_BY(mu_);  // parallel to peers_
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_started_ ABSL_GUARDED_BY(mu_) = false;
  int deregisters_pending_ ABSL_GUARDED_BY(mu_) = 0;
  std::minstd_rand jitter_ ABSL_GUARDED_BY(mu_);
  absl::Notification stopped_;
  std::thread thread_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COORDINATOR_MEMBER_REGISTRAR_H_

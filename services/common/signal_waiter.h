// SignalWaiter: the one thread of a service binary that takes SIGTERM and
// SIGINT. The constructor blocks both signals in the calling thread (and so in
// every thread it starts afterwards) and starts a thread in sigwait(). On the
// first signal that thread logs "[PROGRAM] signal N: shutting down" to
// stderr, sets stop_requested() and calls the shutdown action in place, if
// any (a running server's Shutdown()). A binary constructs it in main()
// before starting any other thread, so that no thread runs a default handler.
//
// Stop() (and the destructor) ends the thread: when no signal came it sends
// the process a SIGTERM, which only this thread takes, to wake it, and joins
// it.
//
// Ownership: owns its thread. Thread-safety: thread-safe; the shutdown action
// runs on the signal thread while SetShutdownAction's lock is held, so the
// action must not call SetShutdownAction.
#ifndef ASYMCACHE_SERVICES_COMMON_SIGNAL_WAITER_H_
#define ASYMCACHE_SERVICES_COMMON_SIGNAL_WAITER_H_

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace asymcache {

class SignalWaiter {
 public:
  // Blocks SIGTERM and SIGINT in the calling thread and starts the signal
  // thread. `program` names the binary in the log line.
  explicit SignalWaiter(std::string program);
  ~SignalWaiter();  // Stop()
  SignalWaiter(const SignalWaiter&) = delete;
  SignalWaiter& operator=(const SignalWaiter&) = delete;

  // True once SIGTERM or SIGINT has arrived (a flag a cancellable start
  // polls; it lives as long as the waiter).
  const std::atomic<bool>& stop_requested() const { return stop_requested_; }

  // What a signal shuts down from now on (nullptr: nothing). When a signal
  // has already arrived, a non-null action runs at once, in this call.
  void SetShutdownAction(std::function<void()> action) ABSL_LOCKS_EXCLUDED(mu_);

  // Wakes (when no signal came) and joins the signal thread. Idempotent;
  // called by the owner (main), not concurrently with itself.
  void Stop();

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  // Immutable after construction.
  const std::string program_;
  std::atomic<bool> stop_requested_{false};
  std::atomic<bool> exiting_{false};

  absl::Mutex mu_;
  std::function<void()> action_ ABSL_GUARDED_BY(mu_);

  std::thread thread_;  // started last, by the constructor
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_SIGNAL_WAITER_H_

#include "services/common/signal_waiter.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <utility>

namespace asymcache {

namespace {

sigset_t ShutdownSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  return signals;
}

}  // namespace

SignalWaiter::SignalWaiter(std::string program) : program_(std::move(program)) {
  const sigset_t signals = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  thread_ = std::thread([this]() { Run(); });
}

SignalWaiter::~SignalWaiter() { Stop(); }

void SignalWaiter::Run() {
  const sigset_t signals = ShutdownSignals();
  int sig = 0;
  sigwait(&signals, &sig);
  if (exiting_.load()) return;  // woken by Stop() on the way out
  std::fprintf(stderr, "[%s] signal %d: shutting down\n", program_.c_str(), sig);
  stop_requested_.store(true);
  absl::MutexLock lock(&mu_);
  if (action_) action_();
}

void SignalWaiter::SetShutdownAction(std::function<void()> action) {
  absl::MutexLock lock(&mu_);
  action_ = std::move(action);
  // A signal before the action was set: run it now.
  if (action_ && stop_requested_.load()) action_();
}

void SignalWaiter::Stop() {
  if (!thread_.joinable()) return;
  exiting_.store(true);
  if (!stop_requested_.load()) kill(getpid(), SIGTERM);  // wake the signal thread
  thread_.join();
}

}  // namespace asymcache

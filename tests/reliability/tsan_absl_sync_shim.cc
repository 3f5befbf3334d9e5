// libreliability_tsan_absl_sync_shim.so: makes abseil's synchronization
// visible to ThreadSanitizer when abseil itself is not instrumented (Debian's
// libabsl_synchronization.so is built without -fsanitize=thread, so TSan sees
// no happens-before edge through absl::Mutex and reports every access it
// guards as a race).
//
// Preloaded (LD_PRELOAD, which ctest sets for the reliability tests of a TSan
// build; scripts/tsan_check.sh runs them), it interposes the exported
// absl::Mutex / absl::CondVar / absl::Notification entry points: each calls
// the real function (dlsym RTLD_NEXT) and tells TSan what it did:
//   - __tsan_release(mutex) before giving a mutex up (Unlock, and the waits
//     that release it: Await*, CondVar::Wait*);
//   - __tsan_acquire(mutex) once it is held again (Lock, TryLock when it
//     succeeds, LockWhen*, after a wait);
//   - the conditions of LockWhen* and Await* are wrapped to acquire the mutex
//     before they read anything: abseil evaluates them with its lock held,
//     but before the wrapper's own acquire after the call;
//   - Notify releases on the Notification (and on its flag, which the inline
//     HasBeenNotified() loads with acquire); a wait that saw it acquires.
// Reader and writer locks are treated alike (extra edges between readers can
// hide a race, never invent one).
//
// Contract: only for TSan builds. The TSan hooks are weak: in a process
// without the TSan runtime (a shell that inherited LD_PRELOAD) the shim only
// forwards. A missing real symbol aborts with a message naming it.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/base/config.h"
#include "absl/base/macros.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

extern "C" {
void __tsan_acquire(void* addr) __attribute__((weak));
void __tsan_release(void* addr) __attribute__((weak));
}

namespace {

void Acquire(const void* addr) {
  if (__tsan_acquire != nullptr) __tsan_acquire(const_cast<void*>(addr));
}
void Release(const void* addr) {
  if (__tsan_release != nullptr) __tsan_release(const_cast<void*>(addr));
}

// The mangled name of absl::<inline namespace>::<member>: `member` is the
// rest of the Itanium mangling after the namespaces (e.g. "5Mutex4LockEv";
// S0_ in it stands for absl::<inline namespace>).
static_assert(ABSL_OPTION_USE_INLINE_NAMESPACE, "the shim expects abseil's inline namespace");
std::string Mangled(bool const_member, const char* member) {
  const std::string ns = ABSL_INTERNAL_TOKEN_STR(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  return std::string(const_member ? "_ZNK4absl" : "_ZN4absl") + std::to_string(ns.size()) + ns +
         member;
}

// The next definition of the member after this library (abseil's own).
template <typename Fn>
Fn Real(bool const_member, const char* member) {
  const std::string symbol = Mangled(const_member, member);
  void* found = ::dlsym(RTLD_NEXT, symbol.c_str());
  if (found == nullptr) {
    std::fprintf(stderr, "tsan_absl_sync_shim: %s not found after the shim\n", symbol.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(found);
}

// The real function behind one interposed entry point, looked up once.
#define REAL(type, member)                              \
  static const auto real = Real<type>(false, member);  \
  (void)0
#define REAL_CONST(type, member)                       \
  static const auto real = Real<type>(true, member);   \
  (void)0

using absl::Condition;
using absl::CondVar;
using absl::Duration;
using absl::Mutex;
using absl::Notification;
using absl::Time;

// Notification keeps its flag right after its Mutex (abseil 20220623).
// HasBeenNotified() is inline (an instrumented acquire load of the flag), so
// Notify also releases on the flag's address.
static_assert(sizeof(Notification) == 2 * sizeof(Mutex), "unexpected absl::Notification layout");
const void* FlagOf(const Notification* n) {
  return reinterpret_cast<const char*>(n) + sizeof(Mutex);
}

// A Condition is evaluated with the real lock held, by the waiter inside the
// real LockWhen/Await (before the shim's Acquire after it) or by the thread
// unlocking. The wrapper first acquires what the waiter released before the
// call (the Condition object the caller built, whose fields the instrumented
// header code reads) and the mutex, so what the condition reads is ordered
// after the last release; it releases the mutex again after evaluating.
// (The shim itself is not instrumented: its own reads of HeldCondition on
// the waiter's stack are not checked.)
struct HeldCondition {
  const Condition* condition;
  const Mutex* mu;
};
bool EvalHeld(HeldCondition* held) {
  Acquire(held->condition);
  Acquire(held->mu);
  const bool met = held->condition->Eval();
  // The evaluator holds the lock but may give it up inside abseil (a waiter
  // blocking again, an unlocker finishing) without passing the shim: publish
  // what the condition read now.
  Release(held->mu);
  return met;
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "5Mutex4LockEv");
  real(this);
  Acquire(this);
}
void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "5Mutex10ReaderLockEv");
  real(this);
  Acquire(this);
}
void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "5Mutex6UnlockEv");
  Release(this);
  real(this);
}
void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "5Mutex12ReaderUnlockEv");
  Release(this);
  real(this);
}
bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "5Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}
bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "5Mutex13ReaderTryLockEv");
  const bool locked = real(this);
  if (locked) Acquire(this);
  return locked;
}
void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "5Mutex8LockWhenERKNS0_9ConditionE");
  HeldCondition held{&cond, this};
  Release(&cond);
  real(this, Condition(&EvalHeld, &held));
  Acquire(this);
}
void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&),
       "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  HeldCondition held{&cond, this};
  Release(&cond);
  real(this, Condition(&EvalHeld, &held));
  Acquire(this);
}
bool Mutex::LockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), timeout);
  Acquire(this);  // held either way
  return met;
}
bool Mutex::LockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), deadline);
  Acquire(this);
  return met;
}
bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "5Mutex25ReaderLockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), timeout);
  Acquire(this);
  return met;
}
bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), deadline);
  Acquire(this);
  return met;
}
void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "5Mutex5AwaitERKNS0_9ConditionE");
  Release(this);
  HeldCondition held{&cond, this};
  Release(&cond);
  real(this, Condition(&EvalHeld, &held));
  Acquire(this);
}
bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  REAL(bool (*)(Mutex*, const Condition&, Duration),
       "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  Release(this);
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), timeout);
  Acquire(this);
  return met;
}
bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, Time),
       "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  Release(this);
  HeldCondition held{&cond, this};
  Release(&cond);
  const bool met = real(this, Condition(&EvalHeld, &held), deadline);
  Acquire(this);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "7CondVar4WaitEPNS0_5MutexE");
  Release(mu);
  real(this, mu);
  Acquire(mu);
}
bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  REAL(bool (*)(CondVar*, Mutex*, Duration),
       "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  Release(mu);
  const bool timed_out = real(this, mu, timeout);
  Acquire(mu);
  return timed_out;
}
bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, Time),
       "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  Release(mu);
  const bool timed_out = real(this, mu, deadline);
  Acquire(mu);
  return timed_out;
}

void Notification::Notify() {
  REAL(void (*)(Notification*), "12Notification6NotifyEv");
  Release(this);
  Release(FlagOf(this));
  real(this);
}
void Notification::WaitForNotification() const {
  REAL_CONST(void (*)(const Notification*), "12Notification19WaitForNotificationEv");
  real(this);
  Acquire(this);
}
bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  REAL_CONST(bool (*)(const Notification*, Duration),
       "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) Acquire(this);
  return notified;
}
bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  REAL_CONST(bool (*)(const Notification*, Time),
       "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) Acquire(this);
  return notified;
}
ABSL_NAMESPACE_END
}  // namespace absl

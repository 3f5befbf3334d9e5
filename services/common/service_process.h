// ServiceProcess: an AsymCache service binary (asymcache-daemon,
// -coordinator, -worker) run as a child process by a tool that starts a local
// cluster (asymcache-bench, the tests that need a process they can SIGKILL).
//
// Contract:
//   - Start() forks and execs `binary` with `flags` as argv[1..]; the child's
//     stdout is a pipe to the parent, its stderr goes to `stderr_path`
//     (appended) or, when that is empty, to the parent's own stderr. The child
//     gets PR_SET_PDEATHSIG(SIGKILL), so a parent that dies leaks no process.
//   - Start() returns only once the child's first stdout line is
//     "READY grpc=<port> metrics=<port>" (what every service binary prints once
//     serving), within `ready_timeout`. Any other first line, an exit before
//     it or no line in time is an error, and the child is killed and reaped
//     before Start() returns.
//   - Stop(grace) sends SIGTERM (the binaries' graceful shutdown), waits up to
//     `grace`, then SIGKILLs; returns how the child ended. Kill() sends
//     SIGKILL and reaps. Both run the on-kill hook once after reaping (e.g.
//     unlinking shared memory a killed daemon cannot unlink) and are
//     idempotent. The destructor calls Kill().
//   - Ownership: the object owns the child process and the read end of its
//     stdout pipe. Not thread-safe: one thread starts, queries and stops it.
//
// Errors (absl::Status): INVALID_ARGUMENT for bad options (naming the field),
// INTERNAL for a failed pipe/open/fork, FAILED_PRECONDITION for a child that
// exits or prints something else before READY, DEADLINE_EXCEEDED for no READY
// line within the bound.
#ifndef ASYMCACHE_SERVICES_COMMON_SERVICE_PROCESS_H_
#define ASYMCACHE_SERVICES_COMMON_SERVICE_PROCESS_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace asymcache {

// The whole text of the file at `path` (a child's stderr log, to show when
// something fails); "" when it cannot be read.
std::string FileContents(const std::string& path);

struct ServiceProcessOptions {
  // Names the child in error messages (e.g. a member id); required so that a
  // failure among several children says which one.
  std::string name;
  // Path of the executable; required.
  std::string binary;
  // argv[1..]. Default: none.
  std::vector<std::string> flags;
  // File the child's stderr is appended to (created 0644). Default "": the
  // child shares the parent's stderr.
  std::string stderr_path;
  // Bound on the wait for the READY line. Default 15 s: a daemon or
  // coordinator serves within a second on a 2-core machine, a few under
  // ASan; a CUDA worker loading a model needs a larger bound (its caller
  // sets it).
  absl::Duration ready_timeout = absl::Seconds(15);

  absl::Status Validate() const;
};

class ServiceProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ServiceProcess>> Start(
      const ServiceProcessOptions& options);

  ServiceProcess(const ServiceProcess&) = delete;
  ServiceProcess& operator=(const ServiceProcess&) = delete;
  ~ServiceProcess();

  // SIGKILL, reap, then the on-kill hook (idempotent).
  void Kill();
  // SIGTERM, up to `grace` for the child to exit, then SIGKILL; reaps and
  // runs the hook. OK when the child exited with status 0 after SIGTERM;
  // otherwise INTERNAL saying how it ended (exit code, signal, or killed after
  // the grace). Idempotent: a second call returns OK.
  absl::Status Stop(absl::Duration grace);

  // Runs once, after the child is reaped (by Kill(), Stop() or the destructor).
  void set_on_kill(std::function<void()> hook) { on_kill_ = std::move(hook); }

  int port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const;
  const std::string& name() const { return name_; }
  const std::string& stderr_path() const { return stderr_path_; }
  pid_t pid() const { return pid_; }

 private:
  ServiceProcess(std::string name, pid_t pid, int stdout_fd, std::string stderr_path);

  // Waits for the child; returns its wait status.
  int Reap();
  std::string StderrHint() const;
  // Reads stdout until its first line, which must be
  // "READY grpc=<port> metrics=<port>".
  absl::Status WaitReady(absl::Duration bound);

  // Immutable after construction.
  const std::string name_;
  const pid_t pid_;
  const int stdout_fd_;
  const std::string stderr_path_;
  // Set by WaitReady().
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  bool reaped_ = false;
  std::function<void()> on_kill_;
};

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_COMMON_SERVICE_PROCESS_H_

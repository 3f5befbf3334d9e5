// A service binary run by a test as a child process (fork + execv), for the
// tests that need a real asymcache-daemon or asymcache-coordinator process
// (one they can SIGKILL).
//
// Contract:
//   - Start() forks and execs `binary` with `flags` as argv[1..]; the child's
//     stdout is a pipe to the test, its stderr goes to `stderr_path` (appended)
//     or, when that is empty, to the test's own stderr. The child gets
//     PR_SET_PDEATHSIG(SIGKILL), so a test that crashes leaks no process.
//   - Start() returns only once the child's first stdout line is
//     "READY grpc=<port> metrics=<port>" (what daemon_main.cc and
//     coordinator_main.cc print once serving), within `ready_timeout`. Any
//     other first line, an exit before it or no line in time is an error, and
//     the child is killed and reaped before Start() returns.
//   - Kill() sends SIGKILL, reaps the child and then runs the on-kill hook
//     (e.g. unlinking shared memory that a killed daemon cannot unlink); it is
//     idempotent. The destructor calls Kill().
//   - Ownership: the object owns the child process and the read end of its
//     stdout pipe. Not thread-safe: one thread starts, queries and kills it.
//   - FileContents() reads a child's stderr log back (e.g. to print it when a
//     test fails).
//
// Errors (absl::Status): INVALID_ARGUMENT for bad options (naming the field),
// INTERNAL for a failed pipe/open/fork, FAILED_PRECONDITION for a child that
// exits or prints something else before READY, DEADLINE_EXCEEDED for no READY
// line within the bound.
#ifndef ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_
#define ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace asymcache::testing {

// The whole text of the file at `path` (a child's stderr log, for a failing
// test to print); "" when it cannot be read.
inline std::string FileContents(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

struct ChildProcessOptions {
  // Names the child in error messages (e.g. a member id); required so that a
  // failure among several children says which one.
  std::string name;
  // Path of the executable (test_binaries.h finds it); required.
  std::string binary;
  // argv[1..]. Default: none.
  std::vector<std::string> flags;
  // File the child's stderr is appended to (created 0644). Default "": the
  // child shares the test's stderr, which suits a single child whose log
  // interleaving with the test's output does not matter.
  std::string stderr_path;
  // Bound on the wait for the READY line. Default 15 s: a daemon or
  // coordinator serves within a second here, a few under ASan on two loaded
  // cores; only a broken start waits it out.
  absl::Duration ready_timeout = absl::Seconds(15);

  absl::Status Validate() const {
    if (name.empty()) return absl::InvalidArgumentError("ChildProcessOptions.name is empty");
    if (binary.empty()) return absl::InvalidArgumentError("ChildProcessOptions.binary is empty");
    if (ready_timeout <= absl::ZeroDuration()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ChildProcessOptions.ready_timeout must be > 0, got ",
                       absl::FormatDuration(ready_timeout)));
    }
    return absl::OkStatus();
  }
};

class ChildProcess {
 public:
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(const ChildProcessOptions& options) {
    if (absl::Status valid = options.Validate(); !valid.ok()) return valid;
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
      return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
    }
    int log = -1;
    if (!options.stderr_path.empty()) {
      log = ::open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (log < 0) {
        const int error = errno;
        ::close(out[0]);
        ::close(out[1]);
        return absl::InternalError(
            absl::StrCat("open stderr_path ", options.stderr_path, ": ", std::strerror(error)));
      }
    }
    // argv is built before fork: the child makes async-signal-safe calls only.
    std::vector<std::string> args = {options.binary};
    args.insert(args.end(), options.flags.begin(), options.flags.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      const int error = errno;
      ::close(out[0]);
      ::close(out[1]);
      if (log >= 0) ::close(log);
      return absl::InternalError(absl::StrCat("fork: ", std::strerror(error)));
    }
    if (pid == 0) {  // child
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(126);  // the parent died before prctl
      ::dup2(out[1], STDOUT_FILENO);
      if (log >= 0) ::dup2(log, STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    if (log >= 0) ::close(log);
    std::unique_ptr<ChildProcess> child(
        new ChildProcess(options.name, pid, out[0], options.stderr_path));
    if (absl::Status ready = child->WaitReady(options.ready_timeout); !ready.ok()) return ready;
    return child;
  }

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  ~ChildProcess() {
    Kill();
    ::close(stdout_fd_);
  }

  // SIGKILL, reap, then the on-kill hook (idempotent).
  void Kill() {
    if (reaped_) return;
    ::kill(pid_, SIGKILL);
    Reap();
  }

  // Runs once, after the child is reaped (by Kill() or the destructor).
  void set_on_kill(std::function<void()> hook) { on_kill_ = std::move(hook); }

  int port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }
  const std::string& name() const { return name_; }
  const std::string& stderr_path() const { return stderr_path_; }

 private:
  ChildProcess(std::string name, pid_t pid, int stdout_fd, std::string stderr_path)
      : name_(std::move(name)),
        pid_(pid),
        stdout_fd_(stdout_fd),
        stderr_path_(std::move(stderr_path)) {}

  // Waits for the child; returns its wait status.
  int Reap() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    if (on_kill_) std::exchange(on_kill_, nullptr)();
    return status;
  }

  std::string StderrHint() const {
    return stderr_path_.empty() ? "" : absl::StrCat("; stderr in ", stderr_path_);
  }

  // Reads stdout until its first line, which must be
  // "READY grpc=<port> metrics=<port>".
  absl::Status WaitReady(absl::Duration bound) {
    const absl::Time deadline = absl::Now() + bound;
    std::string buffer;
    while (absl::Now() < deadline) {
      pollfd p{stdout_fd_, POLLIN, 0};
      const int ms = static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()));
      if (::poll(&p, 1, std::max(ms, 1)) <= 0) continue;
      char chunk[256];
      const ssize_t n = ::read(stdout_fd_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        // Closed stdout: the child exited (or is exiting); its status says why.
        ::kill(pid_, SIGKILL);
        const int status = Reap();
        const bool exited = WIFEXITED(status);
        const std::string how =
            exited ? absl::StrCat("exit code ", WEXITSTATUS(status),
                                  WEXITSTATUS(status) == 127 ? " (execv failed)" : "")
                   : absl::StrCat("signal ", WTERMSIG(status));
        return absl::FailedPreconditionError(absl::StrCat(name_, " exited before READY (", how,
                                                          "); stdout: '", buffer, "'",
                                                          StderrHint()));
      }
      buffer.append(chunk, static_cast<size_t>(n));
      const size_t end = buffer.find('\n');
      if (end == std::string::npos) continue;
      const std::string line = buffer.substr(0, end);
      const std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
      absl::string_view grpc = parts.size() == 3 ? parts[1] : "";
      absl::string_view metrics = parts.size() == 3 ? parts[2] : "";
      if (parts.size() != 3 || parts[0] != "READY" || !absl::ConsumePrefix(&grpc, "grpc=") ||
          !absl::ConsumePrefix(&metrics, "metrics=") || !absl::SimpleAtoi(grpc, &grpc_port_) ||
          grpc_port_ <= 0 || !absl::SimpleAtoi(metrics, &metrics_port_)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "unexpected first stdout line of ", name_, ": '", line, "'", StderrHint()));
      }
      return absl::OkStatus();
    }
    return absl::DeadlineExceededError(absl::StrCat(name_, " printed no READY line within ",
                                                    absl::FormatDuration(bound), "; stdout: '",
                                                    buffer, "'", StderrHint()));
  }

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

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CHILD_PROCESS_H_

#include "services/common/service_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"

namespace asymcache {

std::string FileContents(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::Status ServiceProcessOptions::Validate() const {
  if (name.empty()) return absl::InvalidArgumentError("ServiceProcessOptions.name is empty");
  if (binary.empty()) return absl::InvalidArgumentError("ServiceProcessOptions.binary is empty");
  if (ready_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("ServiceProcessOptions.ready_timeout must be > 0, got ",
                     absl::FormatDuration(ready_timeout)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServiceProcess>> ServiceProcess::Start(
  const ServiceProcessOptions& options) {
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
  std::unique_ptr<ServiceProcess> child(
      new ServiceProcess(options.name, pid, out[0], options.stderr_path));
  if (absl::Status ready = child->WaitReady(options.ready_timeout); !ready.ok()) return ready;
  return child;
}

ServiceProcess::ServiceProcess(std::string name, pid_t pid, int stdout_fd,
                               std::string stderr_path)
    : name_(std::move(name)),
      pid_(pid),
      stdout_fd_(stdout_fd),
      stderr_path_(std::move(stderr_path)) {}

ServiceProcess::~ServiceProcess() {
  Kill();
  ::close(stdout_fd_);
}

void ServiceProcess::Kill() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  Reap();
}

absl::Status ServiceProcess::Stop(absl::Duration grace) {
  if (reaped_) return absl::OkStatus();
  ::kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  int status = 0;
  pid_t waited = 0;
  while ((waited = ::waitpid(pid_, &status, WNOHANG)) == 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  if (waited == pid_) {
    reaped_ = true;
    if (on_kill_) std::exchange(on_kill_, nullptr)();
  } else {
    ::kill(pid_, SIGKILL);
    Reap();
    return absl::InternalError(absl::StrCat(name_, " did not exit within ",
                                            absl::FormatDuration(grace),
                                            " of SIGTERM and was killed", StderrHint()));
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(
      name_, " ended with ",
      WIFEXITED(status) ? absl::StrCat("exit code ", WEXITSTATUS(status))
                        : absl::StrCat("signal ", WTERMSIG(status)),
      " after SIGTERM", StderrHint()));
}

std::string ServiceProcess::address() const { return absl::StrCat("127.0.0.1:", grpc_port_); }

int ServiceProcess::Reap() {
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  reaped_ = true;
  if (on_kill_) std::exchange(on_kill_, nullptr)();
  return status;
}

std::string ServiceProcess::StderrHint() const {
  return stderr_path_.empty() ? "" : absl::StrCat("; stderr in ", stderr_path_);
}

absl::Status ServiceProcess::WaitReady(absl::Duration bound) {
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

}  // namespace asymcache

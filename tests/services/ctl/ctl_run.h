// RunCommand(): a binary (asymcachectl) run to its end as a child process,
// with its exit status, stdout and stderr, bounded in time.
//
// Contract: test-only; blocks until the child exits or `bound` passes (then
// the child is SIGKILLed and reaped, and the result says timed_out). The
// child gets PR_SET_PDEATHSIG(SIGKILL), so a crashed test leaks nothing.
// Thread-compatible.
#ifndef ASYMCACHE_TESTS_SERVICES_CTL_CTL_RUN_H_
#define ASYMCACHE_TESTS_SERVICES_CTL_CTL_RUN_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace asymcache::testing {

struct CommandResult {
  int exit_code = -1;      // the exit status; -1 when killed by a signal or not started
  bool timed_out = false;  // still running at the bound (then SIGKILLed)
  std::string out;         // stdout
  std::string err;         // stderr (or why the child could not be started)

  // For failure messages: the whole result.
  std::string Describe() const {
    return absl::StrCat("exit ", exit_code, timed_out ? " (timed out)" : "", "\n--- stdout\n", out,
                        "--- stderr\n", err);
  }
};

inline CommandResult RunCommand(const std::string& binary, const std::vector<std::string>& args,
                                absl::Duration bound = absl::Seconds(20)) {
  CommandResult result;
  int out[2];
  int err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    result.err = absl::StrCat("pipe2: ", std::strerror(errno));
    return result;
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    result.err = absl::StrCat("pipe2: ", std::strerror(errno));
    ::close(out[0]);
    ::close(out[1]);
    return result;
  }
  // argv is built before fork: the child makes async-signal-safe calls only.
  std::vector<std::string> argv_text = {binary};
  argv_text.insert(argv_text.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_text) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(126);
    ::dup2(out[1], STDOUT_FILENO);
    ::dup2(err[1], STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(out[1]);
  ::close(err[1]);
  if (pid < 0) {
    result.err = absl::StrCat("fork: ", std::strerror(errno));
    ::close(out[0]);
    ::close(err[0]);
    return result;
  }
  const absl::Time deadline = absl::Now() + bound;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&result.out, &result.err};
  int open_pipes = 2;
  while (open_pipes > 0) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    if (::poll(fds, 2, static_cast<int>(ms)) <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(fds[i].fd, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_pipes;
        continue;
      }
      sinks[i]->append(chunk, static_cast<size_t>(n));
    }
  }
  for (const pollfd& p : fds) {
    if (p.fd >= 0) ::close(p.fd);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && !result.timed_out) result.exit_code = WEXITSTATUS(status);
  return result;
}

}  // namespace asymcache::testing

#endif  // ASYMCACHE_TESTS_SERVICES_CTL_CTL_RUN_H_

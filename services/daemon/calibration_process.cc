#include "services/daemon/calibration_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace asymcache {

std::string DefaultCalibratorPath() {
  char buf[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return "asymcache-calibrate";
  std::string exe(buf, static_cast<size_t>(n));
  const size_t slash = exe.rfind('/');
  return slash == std::string::npos ? "asymcache-calibrate"
                                    : exe.substr(0, slash + 1) + "asymcache-calibrate";
}

absl::StatusOr<CalibrationParams> CalibrateInChildProcess(const std::string& calibrator,
                                                          const ModelConfig& model, int device,
                                                          absl::Duration budget,
                                                          absl::Duration timeout,
                                                          const std::atomic<bool>* cancel) {
  if (access(calibrator.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "on-start GPU calibration: no executable calibrator at '", calibrator,
        "' (install asymcache-calibrate beside the daemon, point --calibrator at it, or pass "
        "--calibration FILE)"));
  }
  char path_template[] = "/tmp/asymcache-calibration-XXXXXX";
  const int fd = mkstemp(path_template);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("on-start GPU calibration: cannot create a temporary file: ", std::strerror(errno)));
  }
  close(fd);
  const std::string out = path_template;
  std::vector<std::string> args = {
      calibrator,
      absl::StrCat("--out=", out),
      absl::StrCat("--num_layers=", model.num_layers),
      absl::StrCat("--num_q_heads=", model.num_q_heads),
      absl::StrCat("--num_kv_heads=", model.num_kv_heads),
      absl::StrCat("--head_dim=", model.head_dim),
      absl::StrCat("--dtype_bytes=", model.dtype_bytes),
      absl::StrCat("--block_tokens=", model.block_tokens),
      absl::StrCat("--hidden_size=", model.hidden_size),
      absl::StrCat("--intermediate_size=", model.intermediate_size),
      absl::StrCat("--vocab_size=", model.vocab_size),
      absl::StrCat("--device=", device),
      absl::StrCat("--budget=", absl::FormatDuration(budget)),
  };
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // fork + exec (not posix_spawn) so that the child can ask to die with the
  // daemon (PR_SET_PDEATHSIG). Between fork and exec only async-signal-safe
  // calls: the child unblocks the signals the daemon blocks for its signal
  // thread, sends its stdout to stderr (the daemon's stdout carries the READY
  // line), and execs.
  const pid_t parent = getpid();
  sigset_t none;
  sigemptyset(&none);
  const pid_t pid = fork();
  if (pid < 0) {
    const int error = errno;
    unlink(out.c_str());
    return absl::FailedPreconditionError(absl::StrCat("on-start GPU calibration: fork: ",
                                                      std::strerror(error)));
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the daemon died before prctl
    sigprocmask(SIG_SETMASK, &none, nullptr);
    dup2(STDERR_FILENO, STDOUT_FILENO);
    execv(calibrator.c_str(), argv.data());
    _exit(127);
  }
  const absl::Time deadline = absl::Now() + timeout;
  int status = 0;
  for (;;) {
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) {
      unlink(out.c_str());
      return absl::InternalError(absl::StrCat("on-start GPU calibration: waitpid: ", std::strerror(errno)));
    }
    if (cancel != nullptr && cancel->load()) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      unlink(out.c_str());
      return absl::CancelledError("on-start GPU calibration cancelled (shutdown requested)");
    }
    if (absl::Now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      unlink(out.c_str());
      return absl::DeadlineExceededError(absl::StrCat(
          "on-start GPU calibration: ", calibrator, " ran longer than ", absl::FormatDuration(timeout),
          " and was killed"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    unlink(out.c_str());
    const std::string how = WIFEXITED(status) ? absl::StrCat("exit status ", WEXITSTATUS(status))
                                              : absl::StrCat("signal ", WTERMSIG(status));
    // Exit 1 is a measurement failure (e.g. no CUDA device), 2 bad arguments.
    const absl::StatusCode code = WIFEXITED(status) && WEXITSTATUS(status) == 1
                                      ? absl::StatusCode::kFailedPrecondition
                                      : absl::StatusCode::kInternal;
    return absl::Status(code, absl::StrCat("on-start GPU calibration failed (", calibrator, ", ",
                                           how, "; its message is in the log above)"));
  }
  absl::StatusOr<CalibrationParams> params = CostModel::LoadCalibrationFile(out);
  unlink(out.c_str());
  if (!params.ok()) {
    return absl::InternalError(absl::StrCat("on-start GPU calibration wrote an unreadable file: ",
                                            params.status().message()));
  }
  return params;
}

}  // namespace asymcache

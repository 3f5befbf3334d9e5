#include "services/daemon/calibration_process.h"

#include <signal.h>
#include <spawn.h>
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

extern char** environ;

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
                                                          absl::Duration timeout) {
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
  // The daemon blocks SIGTERM/SIGINT for its signal thread; the child must not
  // inherit that mask.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, calibrator.c_str(), nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (spawned != 0) {
    unlink(out.c_str());
    return absl::FailedPreconditionError(absl::StrCat("on-start GPU calibration: cannot start '",
                                                      calibrator, "': ", std::strerror(spawned)));
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

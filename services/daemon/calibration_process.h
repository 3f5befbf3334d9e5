// CalibrateInChildProcess: runs the asymcache-calibrate binary (MSA + cuBLAS
// measurements of this GPU, services/daemon/gpu_calibration.h) as a child
// process and loads the calibration it writes. The daemon uses it on start
// with the cuda backend: cuBLAS never enters the daemon's address space and
// the child's scratch GPU memory is all returned when it exits.
//
// The child's stdout and stderr (one line per measurement) go to the
// daemon's stderr; the child is killed if the daemon dies
// (PR_SET_PDEATHSIG) or runs past the timeout. Thread-safe (no shared state).
#ifndef ASYMCACHE_SERVICES_DAEMON_CALIBRATION_PROCESS_H_
#define ASYMCACHE_SERVICES_DAEMON_CALIBRATION_PROCESS_H_

#include <atomic>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cachecore/cost_model.h"
#include "cachecore/model_config.h"

namespace asymcache {

// The default calibrator: "asymcache-calibrate" in the directory of the
// running executable (/proc/self/exe).
std::string DefaultCalibratorPath();

// FAILED_PRECONDITION when `calibrator` is not an executable file (naming the
// path and the --calibrator / --calibration alternatives); the child's
// failure as INTERNAL with its exit status (FAILED_PRECONDITION for exit 1
// "no CUDA device"-style failures is not distinguishable: the message says
// to read the log above); DEADLINE_EXCEEDED when it runs past `timeout` (it
// is killed).
// CANCELLED (the child killed) as soon as *cancel becomes true, when given.
absl::StatusOr<CalibrationParams> CalibrateInChildProcess(const std::string& calibrator,
                                                          const ModelConfig& model, int device,
                                                          absl::Duration budget,
                                                          absl::Duration timeout,
                                                          const std::atomic<bool>* cancel = nullptr);

}  // namespace asymcache

#endif  // ASYMCACHE_SERVICES_DAEMON_CALIBRATION_PROCESS_H_

// MsaWgmmaAvailable (kernels/msa_cuda.h) leaves the caller's CUDA state alone.
//
// What is checked, on a CUDA build with a device: a non-sticky runtime error
// the caller has not read yet (cudaSetDevice(-1): cudaErrorInvalidDevice) is
// still pending after MsaWgmmaAvailable() (current device), after
// MsaWgmmaAvailable(0) and after a first probe of a device index that does
// not exist (its probe fails inside, on the probe's own thread); the current
// device is unchanged; the no-argument form answers for the current device,
// the same as MsaWgmmaAvailable(current). Skips (GTEST_SKIP, with the reason)
// without CUDA in the build or without a device; without CUDA the answers
// are checked by MsaCudaUnavailableTest (msa_cuda_test.cc).
//
// This file includes the CUDA runtime header (CUDA builds only) to set and
// read the runtime's per-thread last error, which msa_cuda.h does not expose.
#include "gtest/gtest.h"
#include "kernels/msa_cuda.h"

#if defined(ASYMCACHE_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace asymcache::msa {
namespace {

TEST(MsaWgmmaProbeTest, KeepsTheCallersPendingErrorAndDevice) {
#if !defined(ASYMCACHE_WITH_CUDA)
  GTEST_SKIP() << "built without CUDA";
#else
  int device_count = 0;
  if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count == 0) {
    cudaGetLastError();
    GTEST_SKIP() << "no CUDA device";
  }
  int before = -1;
  ASSERT_EQ(cudaGetDevice(&before), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess) << "an earlier test left an error pending";

  ASSERT_EQ(cudaSetDevice(-1), cudaErrorInvalidDevice);  // pending, unread
  const bool current = MsaWgmmaAvailable();
  const bool explicit_current = MsaWgmmaAvailable(before);
  MsaWgmmaAvailable(0);
  // Not probed by any other test: its probe runs now and fails on its thread.
  EXPECT_FALSE(MsaWgmmaAvailable(device_count));
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);

  int after = -1;
  ASSERT_EQ(cudaGetDevice(&after), cudaSuccess);
  EXPECT_EQ(after, before);
  EXPECT_EQ(current, explicit_current);
#endif
}

}  // namespace
}  // namespace asymcache::msa

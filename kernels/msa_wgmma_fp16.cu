// Explicit instantiation of the Hopper (wgmma) prefill launchers, fp16, head
// dim 128. Compiled for sm_90a only (kernels/CMakeLists.txt: the msa_wgmma
// object library); see msa_wgmma.cuh.
#include "kernels/msa_wgmma.cuh"

namespace asymcache::msa::cuda {

template cudaError_t LaunchMsaWgmmaPrefill<__half>(const MsaKernelParams&, int32_t, bool,
                                                    cudaStream_t);
template cudaError_t ProbeMsaWgmmaPrefill<__half>();
template cudaError_t LaunchMsaWgmmaTileTest<__half>(const void*, const void*, const void*, float*,
                                                float*, int, cudaStream_t);

}  // namespace asymcache::msa::cuda

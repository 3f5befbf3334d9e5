// Explicit instantiation of the MSA attention launcher: fp16, head dim 128.
// One file per (dtype, head dim) keeps the CUDA build parallel.
#include "kernels/msa_kernel.cuh"

namespace asymcache::msa::cuda {

template cudaError_t LaunchMsaAttention<__half, 128>(const MsaKernelParams&, int32_t,
                                                     int32_t, bool, cudaStream_t);

}  // namespace asymcache::msa::cuda

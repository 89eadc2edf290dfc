// cuda_emulation.h -- just enough of CUDA to run this project's elementwise kernels on the CPU with the
// host compiler: the qualifiers, the index variables and a launch that runs every (block, thread) of
// the grid one after another. Enough because the kernels use no shared memory, barriers, warp
// intrinsics or atomics; each emulated thread runs its whole grid-stride loop before the next starts.
// Include after any torch headers and before csrc/cuda/pointwise_kernels.cuh.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulation.h runs CUDA kernels on the host; do not include it under nvcc"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// The index variables of the thread being emulated (one emulated launch at a time per host thread).
inline thread_local dim3 gridDim, blockDim, blockIdx, threadIdx;

namespace lstm_ext {
namespace emulated {

enum class LaunchOrder { kForward, kReverse };

// Runs kernel(args...) as a 1-D grid of `blocks` x `threads`, in the given order of blocks and threads.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), unsigned blocks, unsigned threads, LaunchOrder order, Args... args) {
  gridDim = {blocks, 1, 1};
  blockDim = {threads, 1, 1};
  for (unsigned b = 0; b < blocks; ++b) {
    blockIdx = {order == LaunchOrder::kForward ? b : blocks - 1 - b, 0, 0};
    for (unsigned t = 0; t < threads; ++t) {
      threadIdx = {order == LaunchOrder::kForward ? t : threads - 1 - t, 0, 0};
      kernel(args...);
    }
  }
}

}  // namespace emulated
}  // namespace lstm_ext

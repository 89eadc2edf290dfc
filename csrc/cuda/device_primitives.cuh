// device_primitives.cuh -- what a kernel with shared memory and barriers needs beyond elementwise code,
// spelled once for nvcc and for the CPU emulation (csrc/emulated/cuda_emulation.h), so one kernel source
// compiles for both:
//
//   LSTM_EXT_SHARED(float, partial, 256);     // __shared__ float partial[256];  (per block)
//   LSTM_EXT_DYNAMIC_SHARED(float, row);      // extern __shared__ float row[];  (the launch's bytes)
//   lstm_ext::cuda::grid_sync();              // cooperative_groups::this_grid().sync()
//
// __syncthreads(), __syncwarp() and __shfl*_sync() keep their CUDA names (the emulation defines them);
// kFullWarpMask is the mask of a whole warp. A kernel that calls grid_sync() must be launched
// cooperatively (cudaLaunchCooperativeKernel, all blocks co-resident; LaunchConfig::cooperative in the
// emulation). A 2-D shared array takes a row type: `using Row = float[33]; LSTM_EXT_SHARED(Row, tile, 32);`
#pragma once

#if defined(__CUDACC__)

#include <cooperative_groups.h>

#define LSTM_EXT_SHARED(type, name, count) __shared__ type name[count]
// One byte array for every kernel (extern __shared__ arrays of one name must agree in type), viewed as type.
#define LSTM_EXT_DYNAMIC_SHARED(type, name)                                          \
  extern __shared__ __align__(16) unsigned char lstm_ext_dynamic_shared_memory[]; \
  type* name = reinterpret_cast<type*>(lstm_ext_dynamic_shared_memory)

namespace lstm_ext {
namespace cuda {

// Waits until every thread of the grid arrives, with memory ordering across the grid.
__device__ __forceinline__ void grid_sync() { cooperative_groups::this_grid().sync(); }

}  // namespace cuda
}  // namespace lstm_ext

#else  // the host compiler: the emulation

#include <source_location>

#include "../emulated/cuda_emulation.h"

// `name` is a reference to the block's array (sizeof and bounds as in CUDA); the static tag's address
// identifies the declaration, so every thread of a block gets the same array.
#define LSTM_EXT_SHARED(type, name, count)  \
  static char lstm_ext_shared_tag_##name; \
  type(&name)[count] = ::lstm_ext::emulated::block_shared_array<type, (count)>(&lstm_ext_shared_tag_##name, #name)
#define LSTM_EXT_DYNAMIC_SHARED(type, name) type* name = ::lstm_ext::emulated::dynamic_shared<type>()

namespace lstm_ext {
namespace cuda {

inline void grid_sync(std::source_location where = std::source_location::current()) {
  ::lstm_ext::emulated::grid_barrier(where);
}

}  // namespace cuda
}  // namespace lstm_ext

#endif

namespace lstm_ext {
namespace cuda {

constexpr unsigned kFullWarpMask = 0xFFFFFFFFu;

}  // namespace cuda
}  // namespace lstm_ext

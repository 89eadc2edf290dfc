// persistent_cuda.cu -- the persistent kernels of persistent_kernels.cuh on a GPU: the CUDA backend's time
// loops (StepKernels::forward_loop / backward_loop of pointwise_cuda.cu's CudaStepKernels) under
// $LSTM_EXT_CUDA_RECURRENCE, planned from the device's properties and the occupancy API, launched with
// cudaLaunchCooperativeKernel on the current stream. float32, bfloat16 and float16; float64 runs the
// alternating loop.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <cstring>
#include <string>
#include <vector>

#include "persistent_kernels.cuh"
#include "persistent_launch.h"

namespace lstm_ext {
namespace cuda {
namespace {

// A CUDA error as text, cleared so that it does not surface at the next launch check.
std::string cleared_error(const char* what, cudaError_t error) {
  (void)cudaGetLastError();
  return std::string(what) + " failed: " + cudaGetErrorString(error);
}

struct CooperativeLauncher {
  cudaStream_t stream;
  c10::Device device;

  // Through pinned memory, asynchronously on the current stream: the host allocator keeps the pinned
  // buffer until the copy is done, and nothing waits for the GPU.
  DeviceSteps device_steps(const std::vector<PersistentStep>& steps) const {
    const int64_t bytes = static_cast<int64_t>(steps.size() * sizeof(PersistentStep));
    at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(host.mutable_data_ptr(), steps.data(), static_cast<size_t>(bytes));
    const at::Tensor on_device = host.to(device, at::kByte, /*non_blocking=*/true);
    return {on_device, static_cast<const PersistentStep*>(on_device.const_data_ptr())};
  }

  template <typename Params>
  std::string operator()(void (*kernel)(Params), PersistentLaunchConfig config, Params params) const {
    void* args[] = {&params};
    const cudaError_t error = cudaLaunchCooperativeKernel(
        reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(config.blocks)),
        dim3(static_cast<unsigned>(config.threads)), args, static_cast<size_t>(config.shared_bytes), stream);
    return error == cudaSuccess ? std::string() : cleared_error("the cooperative launch", error);
  }
};

// How many blocks of `kernel` one SM of the current device holds (PersistentDeviceFacts::blocks_per_sm).
template <typename Kernel>
struct KernelOccupancy {
  Kernel kernel;

  int64_t operator()(int64_t threads, int64_t shared_bytes) const {
    // Above 48 KiB a kernel must opt in to its dynamic shared memory before it is asked about or launched.
    if (cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(shared_bytes)) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, reinterpret_cast<const void*>(kernel),
                                                      static_cast<int>(threads),
                                                      static_cast<size_t>(shared_bytes)) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return blocks;
  }
};

std::string device_unsupported(const cudaDeviceProp& props) {
  return props.cooperativeLaunch ? std::string() : "the device does not support cooperative launches";
}

// The current device's limits; `occupancy` must outlive them.
template <typename Kernel>
PersistentDeviceFacts device_facts(const cudaDeviceProp& props, const KernelOccupancy<Kernel>& occupancy) {
  return {props.multiProcessorCount, props.maxThreadsPerBlock, static_cast<int64_t>(props.sharedMemPerBlockOptin),
          occupancy};
}

// Runs `launch.template operator()<scalar_t>()` for the dtypes the persistent kernels are built for, else
// says which dtype they do not take.
template <typename Launch>
std::string for_dtype(at::ScalarType dtype, const Launch& launch) {
  switch (dtype) {
    case at::kFloat:
      return launch(float{});
    case at::kBFloat16:
      return launch(at::BFloat16{});
    case at::kHalf:
      return launch(at::Half{});
    default:
      return std::string("dtype ") + c10::toString(dtype) +
             "; the persistent kernels run float32, bfloat16 and float16 on CUDA";
  }
}

// Why the persistent kernels cannot run `problem` on this device ("" when they can), the fit aside.
template <typename Problem>
std::string why_not_here(const Problem& problem, const cudaDeviceProp& props) {
  std::string why = persistent_unsupported(problem);
  return why.empty() ? device_unsupported(props) : why;
}

}  // namespace

bool cuda_persistent_forward_loop(const ForwardLoopArgs& args) {
  return run_persistent(recurrence_from_environment(), kRecurrenceVariable, "forward pass",
                        auto_prefers_persistent(*args.problem), [&]() -> std::string {
    const cudaDeviceProp& props = *at::cuda::getCurrentDeviceProperties();
    if (std::string why = why_not_here(*args.problem, props); !why.empty()) {
      return why;
    }
    return for_dtype(args.problem->input.scalar_type(), [&](auto zero) {
      using scalar_t = decltype(zero);
      const KernelOccupancy<decltype(&lstm_persistent_forward_kernel<scalar_t, float>)> occupancy{
          &lstm_persistent_forward_kernel<scalar_t, float>};
      const CooperativeLauncher launcher{at::cuda::getCurrentCUDAStream(), args.problem->input.device()};
      return launch_persistent_forward<scalar_t>(args, device_facts(props, occupancy), {}, launcher);
    });
  });
}

bool cuda_persistent_backward_loop(const BackwardLoopArgs& args) {
  return run_persistent(recurrence_from_environment(), kRecurrenceVariable, "backward pass",
                        auto_prefers_persistent(args.problem->forward), [&]() -> std::string {
    const cudaDeviceProp& props = *at::cuda::getCurrentDeviceProperties();
    if (std::string why = why_not_here(*args.problem, props); !why.empty()) {
      return why;
    }
    return for_dtype(args.problem->forward.input.scalar_type(), [&](auto zero) {
      using scalar_t = decltype(zero);
      const KernelOccupancy<decltype(&lstm_persistent_backward_kernel<scalar_t, float>)> occupancy{
          &lstm_persistent_backward_kernel<scalar_t, float>};
      const CooperativeLauncher launcher{at::cuda::getCurrentCUDAStream(), args.problem->forward.input.device()};
      return launch_persistent_backward<scalar_t>(args, device_facts(props, occupancy), {}, launcher);
    });
  });
}

}  // namespace cuda
}  // namespace lstm_ext

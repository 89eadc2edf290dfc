// persistent_emulated.cpp -- the persistent CUDA kernels (persistent_kernels.cuh) run on the CPU through
// cuda_emulation.h, driven by the same recurrence (lstm_recurrence.cpp's loop seam) and the same plan and
// launch code (persistent_launch.h) as on a GPU, with forced geometry and made-up device facts. Test-only
// ops of the lstm_ext_testing library:
//   emulated_persistent_layer_forward / _backward: the layer ops' arguments, then keyword-only `blocks`,
//     `threads_per_block`, `reverse_launch_order` and `recurrence` (as $LSTM_EXT_CUDA_RECURRENCE; the
//     alternating fallback runs the emulated pointwise kernels), `launch_failure` (non-empty: the cooperative
//     launch fails with that message, as a device that cannot co-schedule the blocks reports); the forward also takes
//     `planted_early_return_step` (one thread of the last block returns at that step);
//   emulated_persistent_launches: how many persistent kernels this process has launched in the emulation;
//   persistent_plan: plan_persistent on given device facts;
//   cuda_recurrence: what $LSTM_EXT_CUDA_RECURRENCE selects now (lstm_ext.cuda_recurrence()).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <tuple>

#include "../layer_ops.h"
#include "cuda_emulation.h"  // after the torch headers, before the kernels
#include "../cuda/persistent_kernels.cuh"
#include "../cuda/persistent_launch.h"
#include "../cuda/pointwise_kernels.cuh"
#include "../cuda/pointwise_launch.h"

namespace lstm_ext {
namespace {

constexpr const char* kForwardOp = "lstm_ext_testing.emulated_persistent_layer_forward";
constexpr const char* kBackwardOp = "lstm_ext_testing.emulated_persistent_layer_backward";

std::atomic<int64_t> persistent_launches{0};

struct EmulatedLauncher {
  emulated::LaunchOrder order;
  std::string launch_failure;  // non-empty: the cooperative launch fails with this, as the device would say it

  // The alternating loop's pointwise kernels (pointwise_launch.h).
  template <typename... KernelArgs, typename... Args>
  void operator()(void (*kernel)(KernelArgs...), cuda::PointwiseLaunchConfig config, Args... args) const {
    emulated::launch(kernel, config.blocks, config.threads, order, args...);
  }

  // The persistent kernels (persistent_launch.h): a cooperative launch, every block co-resident.
  cuda::DeviceSteps device_steps(const std::vector<cuda::PersistentStep>& steps) const {
    return {at::Tensor(), steps.data()};
  }
  template <typename Params>
  std::string operator()(void (*kernel)(Params), cuda::PersistentLaunchConfig launch, const Params& params) const {
    emulated::LaunchConfig config;
    config.grid = dim3(static_cast<unsigned>(launch.blocks));
    config.block = dim3(static_cast<unsigned>(launch.threads));
    config.dynamic_shared_bytes = static_cast<std::size_t>(launch.shared_bytes);
    config.cooperative = true;
    config.order = order;
    if (!launch_failure.empty()) {
      return launch_failure;
    }
    ++persistent_launches;
    emulated::launch(config, kernel, params);
    return "";
  }
};

// Blocks per SM of a device with these limits (the emulation's stand-in for the occupancy API).
int64_t modeled_blocks_per_sm(int64_t threads, int64_t shared_bytes, int64_t threads_per_sm, int64_t shared_per_sm) {
  constexpr int64_t kMaxBlocksPerSm = 32;
  const int64_t by_threads = threads > 0 ? threads_per_sm / threads : 0;
  const int64_t by_shared = shared_bytes > 0 ? shared_per_sm / shared_bytes : kMaxBlocksPerSm;
  return std::min({kMaxBlocksPerSm, by_threads, by_shared});
}

struct EmulatedGeometry {
  int64_t blocks;
  int64_t threads;
  bool reverse_launch_order;
  cuda::Recurrence recurrence;
  int64_t planted_early_return_step;
  std::string launch_failure;
};

class EmulatedPersistentStepKernels final : public StepKernels {
 public:
  explicit EmulatedPersistentStepKernels(const EmulatedGeometry& g)
      : geometry_(g),
        policy_{static_cast<int>(g.threads), g.blocks},
        launcher_{g.reverse_launch_order ? emulated::LaunchOrder::kReverse : emulated::LaunchOrder::kForward,
                  g.launch_failure} {}

  void forward_pointwise(const ForwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.dtype, "lstm_ext_emulated_persistent_fallback_forward",
                                   [&] { cuda::launch_forward_step<scalar_t>(args, policy_, launcher_); });
  }
  void backward_pointwise(const BackwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.dtype, "lstm_ext_emulated_persistent_fallback_backward",
                                   [&] { cuda::launch_backward_step<scalar_t>(args, policy_, launcher_); });
  }

  bool forward_loop(const ForwardLoopArgs& args) const override {
    return cuda::run_persistent(geometry_.recurrence, "recurrence", "forward pass",
                        cuda::auto_prefers_persistent(*args.problem), [&]() -> std::string {
      if (std::string why = cuda::persistent_unsupported(*args.problem); !why.empty()) {
        return why;
      }
      std::string result;
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.problem->input.scalar_type(), "lstm_ext_emulated_persistent",
                                     [&] {
                                       result = cuda::launch_persistent_forward<scalar_t>(
                                           args, facts(), forced(), launcher_, geometry_.planted_early_return_step);
                                     });
      return result;
    });
  }
  bool backward_loop(const BackwardLoopArgs& args) const override {
    return cuda::run_persistent(geometry_.recurrence, "recurrence", "backward pass",
                        cuda::auto_prefers_persistent(args.problem->forward), [&]() -> std::string {
      if (std::string why = cuda::persistent_unsupported(*args.problem); !why.empty()) {
        return why;
      }
      std::string result;
      AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.problem->forward.input.scalar_type(),
                                     "lstm_ext_emulated_persistent", [&] {
                                       result = cuda::launch_persistent_backward<scalar_t>(args, facts(), forced(),
                                                                                           launcher_);
                                     });
      return result;
    });
  }

 private:
  // One SM per forced block, each holding one block of up to 1024 threads and the emulation's largest
  // dynamic shared memory.
  cuda::PersistentDeviceFacts facts() const {
    return {geometry_.blocks, emulated::kMaxThreadsPerBlock, static_cast<int64_t>(emulated::kMaxDynamicSharedBytes),
            blocks_per_sm_};
  }
  cuda::PersistentGeometry forced() const { return {geometry_.blocks, geometry_.threads}; }

  static int64_t one_sm(int64_t threads, int64_t shared_bytes) {
    return modeled_blocks_per_sm(threads, shared_bytes, emulated::kMaxThreadsPerBlock,
                                 static_cast<int64_t>(emulated::kMaxDynamicSharedBytes));
  }

  EmulatedGeometry geometry_;
  cuda::LaunchPolicy policy_;
  EmulatedLauncher launcher_;
  int64_t (*blocks_per_sm_)(int64_t, int64_t) = &one_sm;
};

EmulatedPersistentStepKernels steps_from(const char* op, const c10::IValue* launch, bool with_plant) {
  const int64_t blocks = launch[0].toInt(), threads = launch[1].toInt();
  TORCH_CHECK(blocks >= 1 && blocks <= 65535, op, ": blocks must be in [1, 65535], got ", blocks);
  TORCH_CHECK(threads >= 1 && threads <= emulated::kMaxThreadsPerBlock, op, ": threads_per_block must be in [1, ",
              emulated::kMaxThreadsPerBlock, "], got ", threads);
  const std::string recurrence(launch[3].toStringRef());
  return EmulatedPersistentStepKernels({blocks, threads, launch[2].toBool(),
                                        cuda::parse_recurrence(recurrence.c_str(), "recurrence"),
                                        with_plant ? launch[5].toInt() : -1, std::string(launch[4].toStringRef())});
}

constexpr size_t kForwardLaunchArgs = 6;
constexpr size_t kBackwardLaunchArgs = 5;
constexpr const char* kBackwardLaunchSchema =
    ", *, int blocks, int threads_per_block, bool reverse_launch_order, str recurrence=\"persistent\", "
    "str launch_failure=\"\"";
const std::string kForwardLaunchSchema = std::string(kBackwardLaunchSchema) + ", int planted_early_return_step=-1";

void emulated_forward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const c10::IValue* args = torch::jit::last(*stack, LayerForwardArgs::count + kForwardLaunchArgs).data();
  const auto steps = steps_from(kForwardOp, args + LayerForwardArgs::count, /*with_plant=*/true);
  auto results = run_layer_forward(kForwardOp, steps, LayerForwardArgs::from(args));
  torch::jit::drop(*stack, LayerForwardArgs::count + kForwardLaunchArgs);
  std::move(results).push_to(*stack);
}

void emulated_backward(const c10::OperatorHandle&, c10::DispatchKeySet, torch::jit::Stack* stack) {
  const c10::IValue* args = torch::jit::last(*stack, LayerBackwardArgs::count + kBackwardLaunchArgs).data();
  const auto steps = steps_from(kBackwardOp, args + LayerBackwardArgs::count, /*with_plant=*/false);
  auto results = run_layer_backward(kBackwardOp, steps, LayerBackwardArgs::from(args));
  torch::jit::drop(*stack, LayerBackwardArgs::count + kBackwardLaunchArgs);
  std::move(results).push_to(*stack);
}

int64_t emulated_persistent_launches() {
  return persistent_launches.load();
}

// plan_persistent for one pass on a device of these limits, blocks per SM as modeled_blocks_per_sm says:
// (does_not_fit, blocks, threads, units_per_block, k_split, shared_bytes).
std::tuple<std::string, int64_t, int64_t, int64_t, int64_t, int64_t> persistent_plan(
    const std::string& pass, int64_t hidden, int64_t batch, c10::ScalarType dtype, int64_t sm_count,
    int64_t max_threads_per_block, int64_t max_dynamic_shared_bytes, int64_t threads_per_sm, int64_t shared_per_sm,
    int64_t blocks, int64_t threads_per_block) {
  TORCH_CHECK(pass == "forward" || pass == "backward",
              "lstm_ext_testing.persistent_plan: pass must be 'forward' or 'backward', got '", pass, "'");
  const auto per_sm = [&](int64_t threads, int64_t shared_bytes) {
    return modeled_blocks_per_sm(threads, shared_bytes, threads_per_sm, shared_per_sm);
  };
  const cuda::PersistentPlan plan = cuda::plan_persistent(
      pass == "forward" ? cuda::PersistentPass::kForward : cuda::PersistentPass::kBackward, hidden, batch,
      static_cast<int64_t>(c10::elementSize(dtype)), static_cast<int64_t>(c10::elementSize(at::toOpMathType(dtype))),
      {sm_count, max_threads_per_block, max_dynamic_shared_bytes, per_sm}, {blocks, threads_per_block});
  return {plan.does_not_fit, plan.blocks, plan.threads, plan.layout.units_per_block, plan.layout.k_split,
          plan.shared_bytes};
}

std::string cuda_recurrence() {
  return cuda::recurrence_name(cuda::recurrence_from_environment());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_ext_testing, m) {
  m.def(layer_forward_schema("emulated_persistent_layer_forward", kForwardLaunchSchema).c_str());
  m.def(layer_backward_schema("emulated_persistent_layer_backward", kBackwardLaunchSchema).c_str());
  m.def("emulated_persistent_launches() -> int", &emulated_persistent_launches);
  m.def("persistent_plan(str pass_, int hidden, int batch, ScalarType dtype, int sm_count, int max_threads_per_block, "
        "int max_dynamic_shared_bytes, int threads_per_sm, int shared_per_sm, int blocks=0, int threads_per_block=0) "
        "-> (str, int, int, int, int, int)",
        &persistent_plan);
  m.def("cuda_recurrence() -> str", &cuda_recurrence);
}

TORCH_LIBRARY_IMPL(lstm_ext_testing, CPU, m) {
  m.impl("emulated_persistent_layer_forward", torch::CppFunction::makeFromBoxedFunction<&emulated_forward>());
  m.impl("emulated_persistent_layer_backward", torch::CppFunction::makeFromBoxedFunction<&emulated_backward>());
}

}  // namespace lstm_ext

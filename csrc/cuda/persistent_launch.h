// persistent_launch.h -- from a time loop (step_kernels.h's ForwardLoopArgs / BackwardLoopArgs) to a
// launch of a persistent kernel (persistent_kernels.cuh): which recurrence the caller asked for, what the
// kernels run, the plan (blocks, threads, units per block, shared memory) or why it does not fit, the
// step table and the kernel's parameters. Written once for the real CUDA launch (persistent_cuda.cu) and
// the emulated one (csrc/emulated/persistent_emulated.cpp), which passes forced geometry and made-up
// device facts. `Launcher` has launcher.device_steps(steps) -> DeviceSteps and
// launcher(kernel, PersistentLaunchConfig, params) -> "" when the cooperative launch ran, else why not.
// Include persistent_kernels.cuh (or the emulation header and then it) before this file.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/FunctionRef.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "../lstm_recurrence.h"
#include "../step_kernels.h"
#include "persistent_kernels.cuh"

namespace lstm_ext {
namespace cuda {

// ---- Which time loop a CUDA pass runs: $LSTM_EXT_CUDA_RECURRENCE, read at every call. ----

// auto: the persistent kernel where it runs the pass and fits, else the alternating loop (a GEMM and a
// pointwise launch per step); persistent: the persistent kernel or an error that says why not;
// alternating: never the persistent kernel.
enum class Recurrence { kAuto, kPersistent, kAlternating };

constexpr const char* kRecurrenceVariable = "LSTM_EXT_CUDA_RECURRENCE";

// `text` as a Recurrence; null or empty is auto. `source` names where it came from, for the error.
inline Recurrence parse_recurrence(const char* text, const char* source) {
  const std::string value = text == nullptr ? "" : text;
  if (value.empty() || value == "auto") {
    return Recurrence::kAuto;
  }
  if (value == "persistent") {
    return Recurrence::kPersistent;
  }
  if (value == "alternating") {
    return Recurrence::kAlternating;
  }
  TORCH_CHECK(false, source, " must be one of auto, persistent, alternating (or unset: auto), got '", value, "'");
}

inline Recurrence recurrence_from_environment() {
  return parse_recurrence(std::getenv(kRecurrenceVariable), kRecurrenceVariable);
}

inline const char* recurrence_name(Recurrence recurrence) {
  switch (recurrence) {
    case Recurrence::kPersistent:
      return "persistent";
    case Recurrence::kAlternating:
      return "alternating";
    default:
      return "auto";
  }
}

// Whether the persistent kernel ran a pass (under auto only where `auto_prefers`). `attempt()` runs it and returns "", or returns why it cannot
// (unsupported, does not fit, the launch failed) having changed nothing: under auto the caller then runs the
// alternating loop, under persistent that is an error. `source` names where the choice came from.
template <typename Attempt>
bool run_persistent(Recurrence recurrence, const char* source, const char* pass, bool auto_prefers,
                    const Attempt& attempt) {
  if (recurrence == Recurrence::kAlternating || (recurrence == Recurrence::kAuto && !auto_prefers)) {
    return false;
  }
  const std::string why_not = attempt();
  TORCH_CHECK(why_not.empty() || recurrence != Recurrence::kPersistent, source,
              "=persistent, but the persistent kernel cannot run this ", pass, ": ", why_not);
  return why_not.empty();
}

// ---- What the kernels run: the plain cell, h unprojected, a small batch. ----

// More sequences than this go to the alternating loop, whose per-step GEMM has the rows to fill a GPU.
constexpr int64_t kMaxPersistentBatch = 64;

// Where auto takes the persistent kernels: B * H at most this, where benchmarks/README.md's cost model
// predicts them at most 0.7x the alternating loop's time (a prediction until a GPU measures it).
constexpr int64_t kAutoMaxBatchTimesHidden = 16 * 1024;

inline bool auto_prefers_persistent(const LayerForwardProblem& p) {
  return p.layout->batch * p.c0.size(1) <= kAutoMaxBatchTimesHidden;
}

// Why the persistent kernels cannot run the forward of `p` ("" when they can), the dtype aside.
inline std::string persistent_unsupported(const LayerForwardProblem& p) {
  if (!p.cell.plain()) {
    return "the cell has variants (peephole, layer norm, recurrent dropout or zoneout); the persistent kernels "
           "run nn.LSTM's plain cell";
  }
  if (p.weights.weight_hr.defined()) {
    return "proj_size is set (weight_hr); the persistent kernels run h without a projection";
  }
  if (p.layout->batch > kMaxPersistentBatch) {
    return "a batch of " + std::to_string(p.layout->batch) + " sequences; the persistent kernels take at most " +
           std::to_string(kMaxPersistentBatch);
  }
  return "";
}

inline std::string persistent_unsupported(const LayerBackwardProblem& bp) {
  if (bp.grad_cells.defined()) {
    return "a gradient of the cell states arrives (grad_cells); the persistent kernels run the plain cell";
  }
  return persistent_unsupported(bp.forward);
}

// ---- The plan. ----

// What the device offers, from cudaGetDeviceProperties and the occupancy API (made up in the emulation).
struct PersistentDeviceFacts {
  int64_t sm_count;
  int64_t max_threads_per_block;
  int64_t max_dynamic_shared_bytes;  // per block, the opt-in maximum
  // How many blocks of `threads` threads with `dynamic_shared_bytes` each one SM holds at once.
  c10::function_ref<int64_t(int64_t threads, int64_t dynamic_shared_bytes)> blocks_per_sm;
};

// Launch geometry the caller forces (the emulated tests); 0: the plan's choice.
struct PersistentGeometry {
  int64_t blocks = 0;
  int64_t threads = 0;
};

enum class PersistentPass { kForward, kBackward };

constexpr int64_t kPersistentThreadsPerBlock = 256;

struct PersistentPlan {
  std::string does_not_fit;  // why not, "" when it fits
  int64_t blocks = 0;
  int64_t threads = 0;
  int64_t shared_bytes = 0;  // dynamic, per block
  PersistentLayout layout{};
  bool fits() const { return does_not_fit.empty(); }
};

inline int64_t round_up(int64_t n, int64_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// The row stride of a shared-memory matrix whose rows k_split threads each read k_split neighbouring
// elements of: rows start k_split elements apart in the 128 bytes of the 32 banks, so the groups of one
// warp, each on its own row, hit different banks.
inline int64_t padded_stride(int64_t k_len, int64_t k_split, int64_t element_size) {
  const int64_t bank_row = 128 / element_size;
  return round_up(k_len, bank_row) + k_split % bank_row;
}

// The plan of one pass over `hidden` units and `batch` sequences, elements of `element_size` bytes summed in
// `acc_size` bytes: one block per SM by default (at most one per unit), ceil(H / blocks) units a block, the
// last block partial; the dynamic shared memory of the layout; does-not-fit when that is more than a block
// may have or when the blocks cannot all be co-resident (a cooperative launch needs them all at once).
inline PersistentPlan plan_persistent(PersistentPass pass, int64_t hidden, int64_t batch, int64_t element_size,
                                      int64_t acc_size, const PersistentDeviceFacts& facts,
                                      PersistentGeometry forced = {}) {
  PersistentPlan plan;
  const bool forward = pass == PersistentPass::kForward;
  plan.threads =
      forced.threads > 0 ? forced.threads : std::min(kPersistentThreadsPerBlock, facts.max_threads_per_block);
  const int64_t wanted_blocks =
      forced.blocks > 0 ? forced.blocks : std::max<int64_t>(1, std::min(hidden, facts.sm_count));
  const int64_t units = std::max<int64_t>(1, (hidden + wanted_blocks - 1) / wanted_blocks);
  plan.blocks = forced.blocks > 0 ? forced.blocks : std::max<int64_t>(1, (hidden + units - 1) / units);

  PersistentLayout& layout = plan.layout;
  layout.units_per_block = units;
  const int64_t weight_rows = forward ? 4 * units : units;
  const int64_t k_len = forward ? hidden : 4 * hidden;
  // As many threads per product as leaves none idle, a power of two up to a warp (whole warps only).
  const int64_t most_products = batch * weight_rows;
  layout.k_split = 1;
  if (plan.threads % 32 == 0) {
    while (layout.k_split < 32 && 2 * layout.k_split * most_products <= plan.threads && 2 * layout.k_split <= k_len) {
      layout.k_split *= 2;
    }
  }
  layout.weight_stride = padded_stride(k_len, layout.k_split, element_size);
  layout.stage_stride = layout.weight_stride;
  layout.stage_offset = round_up(weight_rows * layout.weight_stride * element_size, 16);
  layout.products_offset = round_up(layout.stage_offset + batch * layout.stage_stride * element_size, 16);
  plan.shared_bytes = layout.products_offset + (forward ? batch * 4 * units * acc_size : 0);

  if (plan.threads > facts.max_threads_per_block || plan.threads > kMaxPersistentThreads) {
    plan.does_not_fit = "blocks of " + std::to_string(plan.threads) + " threads; the device takes at most " +
                        std::to_string(std::min<int64_t>(facts.max_threads_per_block, kMaxPersistentThreads));
    return plan;
  }
  const std::string what = std::to_string(plan.blocks) + " blocks of " + std::to_string(plan.threads) + " threads, " +
                           std::to_string(units) + " units and " + std::to_string(plan.shared_bytes) +
                           " bytes of shared memory each (W_hh's slice and " + std::to_string(batch) +
                           " staged rows)";
  if (plan.shared_bytes > facts.max_dynamic_shared_bytes) {
    plan.does_not_fit = what + ": more shared memory than the device gives a block (" +
                        std::to_string(facts.max_dynamic_shared_bytes) + " bytes)";
    return plan;
  }
  const int64_t per_sm = facts.blocks_per_sm(plan.threads, plan.shared_bytes);
  if (plan.blocks > facts.sm_count * per_sm) {
    plan.does_not_fit = what + ": not all co-resident, the device holds " + std::to_string(facts.sm_count * per_sm) +
                        " (" + std::to_string(facts.sm_count) + " SMs x " + std::to_string(per_sm) + ")";
  }
  return plan;
}

// ---- The launch. ----

struct PersistentLaunchConfig {
  int64_t blocks;
  int64_t threads;
  int64_t shared_bytes;
};

// The step table where the kernel reads it; `storage` keeps device memory alive (undefined in the emulation).
struct DeviceSteps {
  at::Tensor storage;
  const PersistentStep* data;
};

// Steps [first_step, last_step) of the direction's order (backward: the reverse of it, all steps), each
// with its live rows and where their previous state is: the direction's previous step (t - 1, or t + 1 in
// reverse) for the rows it also has, h0/c0 for the rest.
inline std::vector<PersistentStep> persistent_steps(const SequenceLayout& layout, bool reverse, int64_t first_step,
                                                    int64_t last_step, bool backward) {
  const int64_t T = layout.steps();
  std::vector<PersistentStep> steps;
  steps.reserve(static_cast<size_t>(std::max<int64_t>(0, last_step - first_step)));
  for (int64_t step = first_step; step < last_step; ++step) {
    const int64_t t = backward ? (reverse ? step : T - 1 - step) : (reverse ? T - 1 - step : step);
    const int64_t prev_t = reverse ? t + 1 : t - 1;
    const bool has_prev = prev_t >= 0 && prev_t < T;
    const int64_t rows = layout.batch_sizes[t];
    steps.push_back({layout.offsets[t], rows, has_prev ? std::min(rows, layout.batch_sizes[prev_t]) : 0,
                     has_prev ? layout.offsets[prev_t] : 0});
  }
  return steps;
}

template <typename T>
T* rows_ptr(const RowBlock& block) {
  return block.data == nullptr ? nullptr : block.ptr<T>();
}

template <typename T>
const T* tensor_ptr(const at::Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}

// Plans and launches the forward kernel over `args`: "" when it ran (or there was no step), else why not.
template <typename scalar_t, typename Launcher>
std::string launch_persistent_forward(const ForwardLoopArgs& args, const PersistentDeviceFacts& facts,
                                      PersistentGeometry forced, const Launcher& launcher,
                                      int64_t planted_early_return_step = -1) {
  using acc_t = at::opmath_type<scalar_t>;
  const LayerForwardProblem& p = *args.problem;
  if (args.last_step <= args.first_step) {
    return "";
  }
  const int64_t H = p.c0.size(1);
  const PersistentPlan plan = plan_persistent(PersistentPass::kForward, H, p.layout->batch, sizeof(scalar_t),
                                              sizeof(acc_t), facts, forced);
  if (!plan.fits()) {
    return plan.does_not_fit;
  }
  const std::vector<PersistentStep> steps =
      persistent_steps(*p.layout, p.reverse, args.first_step, args.last_step, /*backward=*/false);
  const DeviceSteps device_steps = launcher.device_steps(steps);
  const PersistentForwardParams<scalar_t> params{device_steps.data,
                                                 static_cast<int64_t>(steps.size()),
                                                 H,
                                                 tensor_ptr<scalar_t>(p.weights.weight_hh),
                                                 rows_ptr<scalar_t>(args.gates),
                                                 args.gates_first_row,
                                                 tensor_ptr<scalar_t>(p.h0),
                                                 tensor_ptr<scalar_t>(p.c0),
                                                 rows_ptr<scalar_t>(args.output),
                                                 rows_ptr<scalar_t>(args.cells),
                                                 rows_ptr<scalar_t>(args.c_state),
                                                 p.training,
                                                 plan.layout,
                                                 planted_early_return_step};
  return launcher(lstm_persistent_forward_kernel<scalar_t, acc_t>,
                  PersistentLaunchConfig{plan.blocks, plan.threads, plan.shared_bytes}, params);
}

// Plans and launches the backward kernel over `args`: "" when it ran (or there was no step), else why not.
template <typename scalar_t, typename Launcher>
std::string launch_persistent_backward(const BackwardLoopArgs& args, const PersistentDeviceFacts& facts,
                                       PersistentGeometry forced, const Launcher& launcher) {
  using acc_t = at::opmath_type<scalar_t>;
  const LayerBackwardProblem& bp = *args.problem;
  const LayerForwardProblem& p = bp.forward;
  const int64_t T = p.layout->steps(), H = p.c0.size(1);
  if (T == 0) {
    return "";
  }
  const PersistentPlan plan = plan_persistent(PersistentPass::kBackward, H, p.layout->batch, sizeof(scalar_t),
                                              sizeof(acc_t), facts, forced);
  if (!plan.fits()) {
    return plan.does_not_fit;
  }
  const std::vector<PersistentStep> steps = persistent_steps(*p.layout, p.reverse, 0, T, /*backward=*/true);
  const DeviceSteps device_steps = launcher.device_steps(steps);
  const PersistentBackwardParams<scalar_t> params{device_steps.data,
                                                  T,
                                                  H,
                                                  tensor_ptr<scalar_t>(p.weights.weight_hh),
                                                  tensor_ptr<scalar_t>(bp.saved.gates),
                                                  tensor_ptr<scalar_t>(bp.saved.cells),
                                                  tensor_ptr<scalar_t>(p.c0),
                                                  tensor_ptr<scalar_t>(bp.grad_output),
                                                  rows_ptr<scalar_t>(args.grad_h),
                                                  rows_ptr<scalar_t>(args.grad_c),
                                                  rows_ptr<scalar_t>(args.grad_gates),
                                                  plan.layout};
  return launcher(lstm_persistent_backward_kernel<scalar_t, acc_t>,
                  PersistentLaunchConfig{plan.blocks, plan.threads, plan.shared_bytes}, params);
}

#ifdef LSTM_EXT_WITH_CUDA
// The CUDA backend's loops (persistent_cuda.cu), for StepKernels::forward_loop / backward_loop: the
// recurrence of $LSTM_EXT_CUDA_RECURRENCE on the current device and stream.
bool cuda_persistent_forward_loop(const ForwardLoopArgs& args);
bool cuda_persistent_backward_loop(const BackwardLoopArgs& args);
#endif

}  // namespace cuda
}  // namespace lstm_ext

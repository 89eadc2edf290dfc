// emulation_selftest.cpp -- test-only ops that launch the kernels of emulation_selftest_kernels.cuh
// through the CUDA emulation (cuda_emulation.h), so tests/test_cuda_emulation.py can check block
// barriers, shared memory, warp shuffles and the grid barrier on the CPU, and that misused barriers are
// reported. Registered in the lstm_ext_testing library (defined in pointwise_emulated.cpp).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "emulation_selftest_kernels.cuh"  // after the torch headers: it brings in the emulation

namespace lstm_ext {
namespace {

using emulated::LaunchConfig;
using emulated::LaunchOrder;

LaunchConfig config_1d(const char* op, int64_t blocks, int64_t threads, bool reverse_order) {
  TORCH_CHECK(blocks >= 1 && blocks <= 65535, op, ": blocks must be in [1, 65535], got ", blocks);
  TORCH_CHECK(threads >= 1 && threads <= emulated::kMaxThreadsPerBlock, op, ": threads must be in [1, ",
              emulated::kMaxThreadsPerBlock, "], got ", threads);
  LaunchConfig config;
  config.grid = dim3(static_cast<unsigned>(blocks));
  config.block = dim3(static_cast<unsigned>(threads));
  config.order = reverse_order ? LaunchOrder::kReverse : LaunchOrder::kForward;
  return config;
}

void check_rows(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1, op, ": x must be 2-D with at least one row, got shape ", x.sizes());
  TORCH_CHECK(x.size(1) < (int64_t{1} << 31), op, ": x must have fewer than 2^31 columns, got ", x.size(1));
}

// Row sums of x [rows, cols], one block of `threads` per row: through shared memory and __syncthreads
// (use_shuffles false) or warp shuffles (true; threads a multiple of 32).
at::Tensor row_sum(const at::Tensor& x_in, int64_t threads, bool use_shuffles, bool reverse_order,
                   int64_t fiber_stack_kib) {
  constexpr const char* op = "lstm_ext_testing.emulation_row_sum";
  check_rows(op, x_in);
  TORCH_CHECK(fiber_stack_kib >= 0, op, ": fiber_stack_kib must be >= 0 (0: the default), got ", fiber_stack_kib);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({x.size(0)}, x.options());
  LaunchConfig config = config_1d(op, x.size(0), threads, reverse_order);
  config.fiber_stack_bytes = static_cast<std::size_t>(fiber_stack_kib) * 1024;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emulation_row_sum", [&] {
    config.kernel_name = use_shuffles ? "warp_row_sum_kernel" : "block_row_sum_kernel";
    emulated::launch(config,
                     use_shuffles ? selftest::warp_row_sum_kernel<scalar_t> : selftest::block_row_sum_kernel<scalar_t>,
                     x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<int>(x.size(1)));
  });
  return out;
}

// What each of `threads` threads (one block) reads in one shuffle of its value 7 t + 3.
at::Tensor shuffle_lanes(const at::Tensor& like, int64_t threads, int64_t kind, int64_t operand, int64_t width) {
  constexpr const char* op = "lstm_ext_testing.emulation_shuffle_lanes";
  TORCH_CHECK(kind >= selftest::kShuffleXor && kind <= selftest::kShuffleIndex, op,
              ": kind must be 0 (xor), 1 (down), 2 (up) or 3 (index), got ", kind);
  at::Tensor out = at::empty({threads}, like.options());
  LaunchConfig config = config_1d(op, 1, threads, false);
  config.kernel_name = "shuffle_lanes_kernel";
  AT_DISPATCH_SWITCH(like.scalar_type(), "emulation_shuffle_lanes",
                     AT_DISPATCH_CASE(at::kInt, [&] {
                       emulated::launch(config, selftest::shuffle_lanes_kernel<int32_t>, out.mutable_data_ptr<int32_t>(),
                                        static_cast<int>(kind), static_cast<int>(operand), static_cast<int>(width));
                     }) AT_DISPATCH_CASE(at::kDouble, [&] {
                       emulated::launch(config, selftest::shuffle_lanes_kernel<double>, out.mutable_data_ptr<double>(),
                                        static_cast<int>(kind), static_cast<int>(operand), static_cast<int>(width));
                     }));
  return out;
}

// x with every row reversed, staged in `dynamic_shared_bytes` of dynamic shared memory per block.
at::Tensor reverse_rows(const at::Tensor& x_in, int64_t threads, int64_t dynamic_shared_bytes) {
  constexpr const char* op = "lstm_ext_testing.emulation_reverse_rows";
  check_rows(op, x_in);
  TORCH_CHECK(dynamic_shared_bytes >= 0, op, ": dynamic_shared_bytes must be >= 0, got ", dynamic_shared_bytes);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  LaunchConfig config = config_1d(op, x.size(0), threads, false);
  config.dynamic_shared_bytes = static_cast<std::size_t>(dynamic_shared_bytes);
  config.kernel_name = "reverse_rows_kernel";
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "emulation_reverse_rows", [&] {
    emulated::launch(config, selftest::reverse_rows_kernel<scalar_t>, x.const_data_ptr<scalar_t>(),
                     out.mutable_data_ptr<scalar_t>(), static_cast<int>(x.size(1)));
  });
  return out;
}

// history [rounds, blocks, threads] of grid_exchange_kernel from seeds [blocks, threads] (float64).
at::Tensor grid_exchange(const at::Tensor& seeds_in, int64_t rounds, bool cooperative, bool reverse_order) {
  constexpr const char* op = "lstm_ext_testing.emulation_grid_exchange";
  TORCH_CHECK(seeds_in.device().is_cpu() && seeds_in.scalar_type() == at::kDouble && seeds_in.dim() == 2, op,
              ": seeds must be a 2-D float64 CPU tensor [blocks, threads], got ", seeds_in.scalar_type(), " ",
              seeds_in.sizes(), " on ", seeds_in.device());
  TORCH_CHECK(rounds >= 0, op, ": rounds must be >= 0, got ", rounds);
  const at::Tensor seeds = seeds_in.contiguous();
  at::Tensor slots = at::empty_like(seeds);
  at::Tensor history = at::empty({rounds, seeds.size(0), seeds.size(1)}, seeds.options());
  LaunchConfig config = config_1d(op, seeds.size(0), seeds.size(1), reverse_order);
  config.cooperative = cooperative;
  config.kernel_name = "grid_exchange_kernel";
  emulated::launch(config, selftest::grid_exchange_kernel, seeds.const_data_ptr<double>(),
                   slots.mutable_data_ptr<double>(), history.mutable_data_ptr<double>(), static_cast<int>(rounds));
  return history;
}

// Runs barrier_fault_kernel with one of selftest::BarrierFault; `out` (int32, blocks * threads) takes
// what the threads that get to the end write. The kernel's name comes from its symbol here.
void barrier_fault(const at::Tensor& out, int64_t fault, int64_t blocks, int64_t threads, bool cooperative,
                   bool reverse_order) {
  constexpr const char* op = "lstm_ext_testing.emulation_barrier_fault";
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kInt && out.is_contiguous() &&
                  out.numel() == blocks * threads,
              op, ": out must be a contiguous int32 CPU tensor of blocks * threads = ", blocks * threads,
              " elements, got ", out.scalar_type(), " ", out.sizes());
  LaunchConfig config = config_1d(op, blocks, threads, reverse_order);
  config.cooperative = cooperative;
  emulated::launch(config, selftest::barrier_fault_kernel, static_cast<int>(fault), out.mutable_data_ptr<int32_t>());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_ext_testing, m) {
  m.def("emulation_row_sum(Tensor x, int threads, bool use_shuffles, bool reverse_order, int fiber_stack_kib=0) -> Tensor");
  m.def("emulation_shuffle_lanes(Tensor like, int threads, int kind, int operand, int width) -> Tensor");
  m.def("emulation_reverse_rows(Tensor x, int threads, int dynamic_shared_bytes) -> Tensor");
  m.def("emulation_grid_exchange(Tensor seeds, int rounds, bool cooperative, bool reverse_order) -> Tensor");
  m.def("emulation_barrier_fault(Tensor(a!) out, int fault, int blocks, int threads, bool cooperative, "
        "bool reverse_order) -> ()");
}

TORCH_LIBRARY_IMPL(lstm_ext_testing, CPU, m) {
  m.impl("emulation_row_sum", &row_sum);
  m.impl("emulation_shuffle_lanes", &shuffle_lanes);
  m.impl("emulation_reverse_rows", &reverse_rows);
  m.impl("emulation_grid_exchange", &grid_exchange);
  m.impl("emulation_barrier_fault", &barrier_fault);
}

}  // namespace lstm_ext

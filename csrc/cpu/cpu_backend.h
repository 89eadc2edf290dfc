// cpu_backend.h -- the whole CPU backend (StepKernels): the fused pointwise steps (rows split over threads
// with at::parallel_for, units within a row in at::vec::Vectorized lanes with a scalar tail; the math is
// lstm_math.h's and lstm_cell_rows.h's, run on the vector type through a Transcendentals specialization),
// the per-step and input GEMMs (panel_gemm.h), the weight gradients, the work shares per thread, the
// inference projection's plan and the pass's buffers (buffer_cache.h). Why each threshold is what it is:
// benchmarks/README.md's profile notes (numbered there).
//
// Compiled once per instruction set: cpu_backend.cpp (baseline), cpu_backend_avx2.cpp and
// cpu_backend_avx512.cpp define LSTM_EXT_CPU_VARIANT (the namespace) and include this file;
// cpu_step_kernels() picks one at run time. Include only from those files.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "../cell_step_rows.h"
#include "../lstm_cell_rows.h"
#include "../lstm_math.h"
#include "../step_kernels.h"
#include "blas_gemm.h"
#include "buffer_cache.h"
#include "panel_gemm.h"
#include "spin_barrier.h"
#include "vector_exp.h"
#include "weight_grad_gemm.h"

#ifndef LSTM_EXT_CPU_VARIANT
#error "define LSTM_EXT_CPU_VARIANT before including cpu_backend.h"
#endif

namespace lstm_ext {
namespace math {
template <typename S>
struct Transcendentals<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  // float with AVX2 or AVX-512: vector_exp.h's inline exp (Sleef's, which ATen calls, is out of line);
  // otherwise ATen's.
  static V exp(const V& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<S, float>) {
      return LSTM_EXT_CPU_VARIANT::vector_exp::exp(x);
    } else {
      return x.exp();
    }
#else
    return x.exp();
#endif
  }
  // float: tanh(x) = 2 / (1 + exp(-2x)) - 1, within 2e-7 of tanh (absolute; tests/test_activations.py)
  // and about ten times cheaper than Sleef's tanhf, which was a tenth of a large inference forward.
  // double keeps Sleef's.
  static V tanh(const V& x) {
    if constexpr (std::is_same_v<S, float>) {
      return V(2.f) / (V(1.f) + exp(x * V(-2.f))) - V(1.f);
    } else {
      return x.tanh();
    }
  }
};
}  // namespace math

namespace LSTM_EXT_CPU_VARIANT {
namespace {

// How a group of `width` consecutive units is loaded and stored: one scalar, or one SIMD vector. The
// math runs in `type`: for bfloat16 storage that is float (at::opmath_type).
template <typename S>
struct ScalarLanes {
  using type = at::opmath_type<S>;
  static constexpr int64_t width = 1;
  static type load(const S* p) { return static_cast<type>(*p); }
  static void store(S* p, type v) { *p = static_cast<S>(v); }
};

template <typename S>
struct VectorLanes {
  using type = at::vec::Vectorized<S>;
  static constexpr int64_t width = type::size();
  static type load(const S* p) { return type::loadu(p); }
  static void store(S* p, const type& v) { v.store(p); }
};

// Calls unit_fn(lanes, j) for each group of units in `units`: whole vectors first, then a scalar tail.
// Storage types narrower than their math type (bfloat16) take the scalar path throughout.
template <typename S, typename UnitFn>
inline void for_each_unit_group(const IndexRange& units, const UnitFn& unit_fn) {
  int64_t j = units.begin;
  if constexpr (std::is_same_v<S, at::opmath_type<S>>) {
    for (; j + VectorLanes<S>::width <= units.end; j += VectorLanes<S>::width) {
      unit_fn(VectorLanes<S>{}, j);
    }
  }
  for (; j < units.end; ++j) {
    unit_fn(ScalarLanes<S>{}, j);
  }
}

// Rows per task: enough units that a thread's share outweighs waking it.
inline int64_t row_grain(int64_t H) {
  constexpr int64_t kUnitsPerTask = 16384;
  return std::max<int64_t>(1, kUnitsPerTask / std::max<int64_t>(H, 1));
}

// at::parallel_for(0, rows, grain, fn), but rows that make one task run here directly: parallel_for's
// own bookkeeping for a task it would run inline costs more than a small step.
template <typename Fn>
inline void for_row_tasks(int64_t rows, int64_t grain, const Fn& fn) {
  if (rows <= grain) {
    if (rows > 0) {
      fn(int64_t{0}, rows);
    }
  } else {
    at::parallel_for(0, rows, grain, fn);
  }
}

// cell_rows' executor for one row on this thread: the units in vector lanes and a scalar tail, sums in a
// fixed order (the vector lanes' partial sums, then the tail).
template <typename S>
struct RowExec {
  using A = at::opmath_type<S>;
  template <typename F>
  void units(int64_t n, const F& f) const {
    for_each_unit_group<S>(IndexRange{0, n}, [&](auto lanes, int64_t j) { f(lanes, j); });
  }
  template <typename F>
  A sum(int64_t n, const F& f) const {
    A total = A(0);
    int64_t j = 0;
    if constexpr (std::is_same_v<S, A>) {
      using V = at::vec::Vectorized<S>;
      V partial(S(0));
      for (; j + V::size() <= n; j += V::size()) {
        partial = partial + f(VectorLanes<S>{}, j);
      }
      alignas(64) S lanes[V::size()];
      partial.store(lanes);
      for (int64_t k = 0; k < V::size(); ++k) {
        total += lanes[k];
      }
    }
    for (; j < n; ++j) {
      total += f(ScalarLanes<S>{}, j);
    }
    return total;
  }
  void sync() const {}
  template <typename F>
  void single(const F& f) const {
    f();
  }
};

// The variants' steps (lstm_cell_rows.h), a row at a time.
template <typename S>
void variant_forward_step(const ForwardStepArgs& args) {
  const auto first = first_forward_row<S>(args);
  for_row_tasks(args.c.rows, row_grain(args.c.cols), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      cell_rows::forward_row(RowExec<S>{}, cell_rows::forward_row_at(first, row));
    }
  });
}

template <typename S>
void variant_backward_step(const BackwardStepArgs& args) {
  const auto first = first_backward_row<S>(args);
  for_row_tasks(args.c.rows, row_grain(args.c.cols), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      cell_rows::backward_row(RowExec<S>{}, cell_rows::backward_row_at(first, row));
    }
  });
}

template <typename S>
void forward_step(const ForwardStepArgs& args) {
  if (args.cell != nullptr) {
    variant_forward_step<S>(args);
    return;
  }
  const int64_t B = args.c.rows, H = args.c.cols;
  S* gates = args.gates.ptr<S>();
  const S* c_prev = args.c_prev.ptr<S>();
  S* h = args.h.ptr<S>();
  S* c = args.c.ptr<S>();
  const bool keep_gates = args.keep_gates;
  for_row_tasks(B, row_grain(args.units.size()), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      S* g = gates + row * 4 * H;
      const S* cp = c_prev + row * H;
      S* hr = h + row * H;
      S* cr = c + row * H;
      for_each_unit_group<S>(args.units, [&](auto lanes, int64_t j) {
        using L = decltype(lanes);
        const math::Gates<typename L::type> pre{L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j),
                                                L::load(g + 3 * H + j)};
        const auto out = math::cell_forward(pre, L::load(cp + j));
        L::store(cr + j, out.c);
        L::store(hr + j, out.h);
        if (keep_gates) {
          L::store(g + j, out.act.i);
          L::store(g + H + j, out.act.f);
          L::store(g + 2 * H + j, out.act.g);
          L::store(g + 3 * H + j, out.act.o);
        }
      });
    }
  });
}

template <typename S>
void backward_step(const BackwardStepArgs& args) {
  if (args.cell != nullptr) {
    variant_backward_step<S>(args);
    return;
  }
  const int64_t B = args.c.rows, H = args.c.cols;
  const S* gates = args.gates.ptr<S>();
  const S* c = args.c.ptr<S>();
  const S* c_prev = args.c_prev.ptr<S>();
  const S* grad_h_out = args.grad_h_out.ptr<S>();
  const S* grad_h_next = args.grad_h_next.ptr<S>();
  S* grad_c = args.grad_c.ptr<S>();
  S* grad_gates = args.grad_gates.ptr<S>();
  for_row_tasks(B, row_grain(args.units.size()), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const S* g = gates + row * 4 * H;
      S* dg = grad_gates + row * 4 * H;
      const int64_t r = row * H;
      for_each_unit_group<S>(args.units, [&](auto lanes, int64_t j) {
        using L = decltype(lanes);
        const math::Gates<typename L::type> act{L::load(g + j), L::load(g + H + j), L::load(g + 2 * H + j),
                                                L::load(g + 3 * H + j)};
        const auto grad_h = L::load(grad_h_out + r + j) + L::load(grad_h_next + r + j);
        const auto out = math::cell_backward(act, L::load(c + r + j), L::load(c_prev + r + j), grad_h,
                                             L::load(grad_c + r + j));
        L::store(dg + j, out.grad_pre.i);
        L::store(dg + H + j, out.grad_pre.f);
        L::store(dg + 2 * H + j, out.grad_pre.g);
        L::store(dg + 3 * H + j, out.grad_pre.o);
        L::store(grad_c + r + j, out.grad_c_prev);
      });
    }
  });
}

// Layer norm of the input product (cell_rows::input_norm_row), a row at a time.
template <typename S>
void normalize_input_rows(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                          const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh) {
  const int64_t width = gates.cols;
  const S* b_ih = bias_ih.defined() ? bias_ih.const_data_ptr<S>() : nullptr;
  const S* b_hh = bias_hh.defined() ? bias_hh.const_data_ptr<S>() : nullptr;
  for_row_tasks(gates.rows, row_grain(width), [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const cell_rows::InputNormRow<S> r{width, gates.ptr<S>() + row * width, normalized.ptr<S>() + row * width,
                                         stats.ptr<S>() + row * 4, weight.const_data_ptr<S>(), b_ih, b_hh};
      cell_rows::input_norm_row<S, at::opmath_type<S>>(RowExec<S>{}, r);
    }
  });
}

// Rows whose layer norm weight terms one partial sum takes: fixed, so the sums' order is the same for any
// number of threads.
constexpr int64_t kInputNormRowsPerPartial = 64;

// Its backward (cell_rows::input_norm_backward_row), a block of rows per task, each block's weight terms in
// a partial sum of its own, the partials then added in block order. S is its own math type (float, double).
template <typename S>
InputNormGrads normalize_input_backward_rows(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                             const at::Tensor& row_stats, const at::Tensor& weight) {
  const int64_t rows = grad_gates.size(0), width = grad_gates.size(1);
  TORCH_INTERNAL_ASSERT(grad_gates.is_contiguous() && normalized.is_contiguous() && row_stats.is_contiguous() &&
                        weight.is_contiguous() && normalized.size(1) == rows && weight.numel() == width);
  const int64_t blocks = std::max<int64_t>(1, at::divup(rows, kInputNormRowsPerPartial));
  const at::Tensor partials = at::zeros({blocks, 2, width}, grad_gates.options());
  InputNormGrads grads;
  grads.grad_product = cpu::empty_huge_page_backed({rows, width}, grad_gates.options());
  const S* g = grad_gates.const_data_ptr<S>();
  const S* x = normalized.const_data_ptr<S>();
  const S* x_recurrent = x + rows * width;
  const S* stats = row_stats.const_data_ptr<S>();
  S* out = grads.grad_product.mutable_data_ptr<S>();
  S* sums = partials.mutable_data_ptr<S>();
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t block = block_begin; block < block_end; ++block) {
      S* block_sums = sums + block * 2 * width;
      const int64_t last = std::min(rows, (block + 1) * kInputNormRowsPerPartial);
      for (int64_t row = block * kInputNormRowsPerPartial; row < last; ++row) {
        const int64_t at = row * width;
        const cell_rows::InputNormBackwardRow<S, S> r{width, g + at, x + at, x_recurrent + at, stats + row * 4,
                                                   weight.const_data_ptr<S>(), out + at, block_sums,
                                                   block_sums + width};
        cell_rows::input_norm_backward_row<S, S>(RowExec<S>{}, r);
      }
    }
  });
  for (int64_t block = 1; block < blocks; ++block) {
    const S* block_sums = sums + block * 2 * width;
    for (int64_t k = 0; k < 2 * width; ++k) {
      sums[k] += block_sums[k];
    }
  }
  grads.grad_weight_ih = partials[0][0].clone();  // outputs of their own, not views of one buffer
  grads.grad_weight_hh = partials[0][1].clone();
  return grads;
}

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
constexpr bool kPanelGemm = true;
#else
constexpr bool kPanelGemm = false;  // at::vec's baseline Vectorized is a loop over an array: BLAS is faster
#endif

class CpuStepKernels final : public StepKernels {
 public:
  void forward_pointwise(const ForwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.dtype, "lstm_ext_cpu_forward_step",
                                   [&] { forward_step<scalar_t>(args); });
  }
  void backward_pointwise(const BackwardStepArgs& args) const override {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, args.dtype, "lstm_ext_cpu_backward_step",
                                   [&] { backward_step<scalar_t>(args); });
  }
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) const override {
    return cpu::empty_huge_page_backed(sizes, options);
  }
  // Float weights packed for panel_gemm where the CPU has the vector width it is written for (a weight
  // already in panels, op(W) = W with whole panels, is its own `packed`, no copy, where products of few
  // rows read it: kMinRowsToPack; so is op(W) = W^T where the pass has so few rows that transposing W's
  // tiles as they are used costs less than packing: kMaxTransposedPasses); BLAS (double) or ATen
  // (bfloat16) otherwise.
  StepWeight prepare_weight(const at::Tensor& weight, bool transpose, WeightUse use) const override {
    if (!kPanelGemm || weight.scalar_type() != at::kFloat) {
      return StepWeight{weight, transpose, at::Tensor()};
    }
    const int64_t rows_per_thread = at::divup(use.rows, chunk_count(use.rows));
    const bool in_place =
        transpose ? use.products * at::divup(use.rows, panel_gemm::kTransposedRows) <= kMaxTransposedPasses
                  : weight.size(1) % panel_gemm::kPanelWidth == 0 &&
                        (rows_per_thread < kMinRowsToPack || use.rows * use.products < kMinTotalRowsToPack);
    return StepWeight{weight, transpose, in_place ? weight : panel_gemm::pack(weight, transpose)};
  }
  // Float biases are summed where the panels' sums start (panel_gemm::Start): no buffer, no ATen call.
  StepBias prepare_bias(const at::Tensor& bias_ih, const at::Tensor& bias_hh) const override {
    if (kPanelGemm && bias_ih.defined() && bias_ih.scalar_type() == at::kFloat) {
      return StepBias{at::Tensor(), bias_ih, bias_hh};
    }
    return StepKernels::prepare_bias(bias_ih, bias_hh);
  }
  void copy_rows(const RowBlock& to, const RowBlock& from, const at::TensorOptions& /*options*/) const override {
    TORCH_INTERNAL_ASSERT(to.rows == from.rows && to.cols == from.cols && to.itemsize == from.itemsize);
    if (to.rows > 0 && to.cols > 0) {
      std::memcpy(to.data, from.data, to.rows * to.cols * to.itemsize);
    }
  }
  void matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, bool accumulate,
              IndexRange columns) const override {
    if (!panel_matmul(out, a, weight, panel_gemm::Start{accumulate, nullptr}, columns) &&
        !blas_gemm(out, a, weight, accumulate, columns)) {
      StepKernels::matmul(out, a, weight, accumulate, columns);
    }
  }
  // The sums start from the bias in panel_gemm's blocks: no pass of its own over out.
  void project(const RowBlock& out, const RowBlock& a, const StepWeight& weight, const StepBias& bias,
               IndexRange columns) const override {
    if (!bias.defined()) {
      matmul(out, a, weight, /*accumulate=*/false, columns);
      return;
    }
    const at::Tensor& first = bias.sum.defined() ? bias.sum : bias.ih;
    if (first.scalar_type() != at::kFloat ||
        !panel_matmul(out, a, weight,
                      panel_gemm::Start{false, first.const_data_ptr<float>(),
                                        bias.sum.defined() ? nullptr : bias.hh.const_data_ptr<float>()},
                      columns)) {
      StepKernels::project(out, a, weight, bias, columns);
    }
  }
  void weight_gradients(const std::vector<TransposedProduct>& products, const at::Tensor& column_sums,
                        const at::Tensor& summed) const override {
    const auto is_float = [](const at::Tensor& t) { return t.scalar_type() == at::kFloat; };
    if (!kPanelGemm || !is_float(summed)) {
      StepKernels::weight_gradients(products, column_sums, summed);
      return;
    }
    const int64_t m = summed.size(1);
    std::vector<weight_grad_gemm::Product> cpu_products;
    for (const TransposedProduct& p : products) {
      TORCH_INTERNAL_ASSERT(p.out.is_contiguous() && p.a.is_contiguous() && p.b.is_contiguous() && is_float(p.out) &&
                            is_float(p.a) && is_float(p.b) && p.out.size(0) == m && p.a.size(1) == m);
      cpu_products.push_back({p.a.const_data_ptr<float>(), p.b.const_data_ptr<float>(), p.a.size(0), p.b.size(1),
                              p.out.mutable_data_ptr<float>(), p.accumulate});
    }
    TORCH_INTERNAL_ASSERT(summed.is_contiguous() && (!column_sums.defined() || column_sums.numel() == m));
    weight_grad_gemm::weight_gradients(cpu_products, m,
                                       column_sums.defined() ? column_sums.mutable_data_ptr<float>() : nullptr,
                                       summed.const_data_ptr<float>(), summed.size(0));
  }
  // A chunk per thread, each running all its steps with single-threaded GEMMs and pointwise passes
  // (nested parallelism is off): no thread wakes up or waits per step. A batch with fewer sequences than
  // threads has its units split too, where a step has enough work (unit_slices).
  void for_each_work_share(int64_t batch, int64_t hidden, bool may_split_units,
                           const WorkShareFn& fn) const override {
    const int64_t chunks = chunk_count(batch);
    const int64_t slices = may_split_units ? unit_slices(batch, hidden, chunks) : 1;
    if (chunks * slices == 1) {
      // Not through parallel_for, which would run it as inside a parallel region: the share's products and
      // pointwise passes then could not use the other threads.
      fn(WorkShare{BatchChunk{0, batch}, IndexRange{0, hidden}});
      return;
    }
    const auto chunk_at = [&](int64_t chunk) {
      return BatchChunk{batch * chunk / chunks, batch * (chunk + 1) / chunks};
    };
    // Slice s of a chunk: units [unit_at(s), unit_at(s + 1)), whole panels of the gate GEMMs (one slice:
    // all units).
    const auto unit_at = [&](int64_t s) {
      return s == slices ? hidden : hidden * s / slices / panel_gemm::kPanelWidth * panel_gemm::kPanelWidth;
    };
    std::vector<std::unique_ptr<cpu::SpinBarrier>> barriers;  // a chunk's slices meet at its own
    for (int64_t chunk = 0; slices > 1 && chunk < chunks; ++chunk) {
      barriers.push_back(std::make_unique<cpu::SpinBarrier>(slices));
    }
    // OpenMP gives each thread of the region one range of shares, all running at once. A region with
    // fewer threads than shares hands a thread adjacent slices, which it runs as one share of their
    // units, arriving at its chunk's barrier for all of them.
    at::parallel_for(0, chunks * slices, 1, [&](int64_t first, int64_t last) {
      for (int64_t chunk = first / slices; chunk * slices < last; ++chunk) {
        const int64_t s0 = std::max(first, chunk * slices) - chunk * slices;
        const int64_t s1 = std::min(last, (chunk + 1) * slices) - chunk * slices;
        const StepBarrier* barrier = slices > 1 ? barriers[chunk].get() : nullptr;
        fn(WorkShare{chunk_at(chunk), IndexRange{unit_at(s0), unit_at(s1)}, barrier, s1 - s0});
      }
    });
  }
  // Inference projects the input inside each chunk, right before the step, where the chunks have enough
  // work per step (no wait between the projection and the steps, and the step's gates stay in cache);
  // else a block of steps at a time whose gates fit in cache (a large fresh buffer also costs a page fault
  // per 4 KiB on every call).
  InferenceProjection plan_inference_projection(int64_t batch, int64_t steps, int64_t input_size, int64_t gate_width,
                                                int64_t element_size) const override {
    const int64_t rows = batch / chunk_count(batch);
    if (rows >= kMinChunkProjectionRows && rows * input_size * gate_width >= kMinChunkProjectionMacs) {
      return InferenceProjection{true, steps};
    }
    const int64_t step_bytes = std::max<int64_t>(batch * gate_width * element_size, 1);
    return InferenceProjection{false, std::clamp(kProjectionBlockBytes / step_bytes, int64_t{1},
                                                 std::max<int64_t>(steps, 1))};
  }
  void normalize_input(const RowBlock& gates, const RowBlock& normalized, const RowBlock& stats,
                       const at::Tensor& weight, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                       const at::TensorOptions& options) const override {
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, options.dtype().toScalarType(), "lstm_ext_cpu_normalize_input", [&] {
      normalize_input_rows<scalar_t>(gates, normalized, stats, weight, bias_ih, bias_hh);
    });
  }
  // bfloat16 sums its weight terms in ATen's float accumulators.
  InputNormGrads normalize_input_backward(const at::Tensor& grad_gates, const at::Tensor& normalized,
                                          const at::Tensor& row_stats, const at::Tensor& weight) const override {
    if (grad_gates.scalar_type() == at::kBFloat16) {
      return StepKernels::normalize_input_backward(grad_gates, normalized, row_stats, weight);
    }
    return AT_DISPATCH_FLOATING_TYPES(grad_gates.scalar_type(), "lstm_ext_cpu_normalize_input_backward", [&] {
      return normalize_input_backward_rows<scalar_t>(grad_gates, normalized, row_stats, weight);
    });
  }
  void multiply_rows(const RowBlock& out, const RowBlock& a, const RowBlock& mask,
                     const at::TensorOptions& options) const override {
    TORCH_INTERNAL_ASSERT(out.rows == a.rows && out.rows == mask.rows && out.cols == a.cols && out.cols == mask.cols);
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, options.dtype().toScalarType(), "lstm_ext_cpu_multiply_rows", [&] {
      const int64_t n = out.rows * out.cols;
      scalar_t* o = out.ptr<scalar_t>();
      const scalar_t* x = a.ptr<scalar_t>();
      const scalar_t* m = mask.ptr<scalar_t>();
      for (int64_t i = 0; i < n; ++i) {
        o[i] = x[i] * m[i];
      }
    });
  }

 private:
  // Columns `columns` of out (+)= a @ op(weight) through panel_gemm, where the weight is packed for it
  // (any depth: with 6 x 64 blocks grad_input at H = 512, k = 2048, ran 4-7% faster than MKL's sgemm,
  // backward op alone, in one process); false, doing nothing, otherwise.
  bool panel_matmul(const RowBlock& out, const RowBlock& a, const StepWeight& weight, panel_gemm::Start start,
                    IndexRange columns) const {
    if (!weight.packed.defined()) {
      return false;
    }
    const bool in_place = weight.packed.is_same(weight.weight);
    if (in_place && weight.transpose) {  // few rows by prepare_weight: on this thread, no tasks
      panel_gemm::gemm_transposed_in_place(a.ptr<float>(), out.rows, a.cols, weight.weight.const_data_ptr<float>(),
                                           out.ptr<float>(), out.cols, start, columns.begin, columns.end);
      return true;
    }
    // Tasks of (block of rows, panel), row block major: a thread's run of tasks keeps its rows of `a`
    // in cache while the panels pass. The blocks are of even height (at most kRowBlock): the threads take
    // equal runs of tasks, and with full blocks and a short last one, T=16, B=8 (128 rows: 96 + 32) gave
    // one thread three times the other's rows. Inside a batch chunk this runs on the chunk's thread; outside
    // (the input projections, or one chunk of a small batch) the tasks are split over the threads
    // when there is enough work to pay for waking them.
    // The columns' panels: a share's columns start and (but for the last gate's) end on a panel edge.
    const int64_t first_panel = columns.begin / panel_gemm::kPanelWidth;
    const int64_t last_panel = columns.end == out.cols ? panel_gemm::panel_count(out.cols)
                                                       : columns.end / panel_gemm::kPanelWidth;
    TORCH_INTERNAL_ASSERT(columns.begin % panel_gemm::kPanelWidth == 0 &&
                              (columns.end == out.cols || columns.end % panel_gemm::kPanelWidth == 0),
                          "matmul: columns [", columns.begin, ", ", columns.end, ") are not whole panels");
    const int64_t panels = last_panel - first_panel;
    const int64_t row_blocks = at::divup(out.rows, kRowBlock);
    const int64_t task_macs = std::min(out.rows, kRowBlock) * a.cols * panel_gemm::kPanelWidth;
    const int64_t grain = at::divup(kMinMacsPerTask, std::max<int64_t>(task_macs, 1));
    const int64_t k = a.cols, n = out.cols;
    const panel_gemm::Panels panels_at{weight.packed.const_data_ptr<float>(),
                                       in_place ? panel_gemm::kPanelWidth : k * panel_gemm::kPanelWidth,
                                       in_place ? n : panel_gemm::kPanelWidth};
    at::parallel_for(0, row_blocks * panels, grain, [&](int64_t first, int64_t last) {
      for (int64_t task = first; task < last;) {
        const int64_t block = task / panels, panel = first_panel + task % panels;
        const int64_t panel_end = std::min(last_panel, panel + (last - task));  // this block's panels in range
        const int64_t row = panel_gemm::row_block_begin(out.rows, row_blocks, block);
        const int64_t rows = panel_gemm::row_block_begin(out.rows, row_blocks, block + 1) - row;
        panel_gemm::gemm_panels(a.sub(row, rows).ptr<float>(), rows, k, panels_at, out.sub(row, rows).ptr<float>(),
                                n, start, panel, panel_end);
        task += panel_end - panel;
      }
    });
    return true;
  }
  // How many chunks for_each_work_share splits `batch` into: one per thread, one inside a parallel region.
  static int64_t chunk_count(int64_t batch) {
    return at::in_parallel_region() ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), batch));
  }
  // How many shares split the units of each of `chunks` chunks of `batch` sequences: the threads a chunk
  // would leave idle, where each share still has enough of a step's recurrent product and whole gate
  // panels. Only under OpenMP, whose region runs its threads at once (a share waits for the others at
  // every step; a pool running two shares one after the other would wait forever).
  static int64_t unit_slices(int64_t batch, int64_t hidden, int64_t chunks) {
#if AT_PARALLEL_OPENMP
    if (at::in_parallel_region() || hidden % panel_gemm::kPanelWidth != 0) {
      return 1;
    }
    const int64_t rows = at::divup(batch, chunks);
    int64_t slices = std::min(at::get_num_threads() / chunks, hidden / panel_gemm::kPanelWidth);
    while (slices > 1 && rows * hidden * 4 * hidden / slices < kMinSplitMacs) {
      --slices;
    }
    return std::max<int64_t>(slices, 1);
#else
    return 1;
#endif
  }
  // Below this a share's half step costs less than the meeting at the barrier (profile note 13).
  static constexpr int64_t kMinSplitMacs = int64_t{1} << 14;
  // Where a chunk's own per-step input projection pays for its per-step calls (profile note 12).
  static constexpr int64_t kMinChunkProjectionRows = 8;
  static constexpr int64_t kMinChunkProjectionMacs = int64_t{1} << 20;
  static constexpr int64_t kProjectionBlockBytes = int64_t{4} << 20;
  static constexpr int64_t kMinMacsPerTask = 32768;
  // W read in place puts a panel's rows in few L1 sets, which blocks of 4-6 rows miss on every row; blocks
  // of 1-3 rows read adjacent panels, and few rows in all do not repay the copy (profile note 14).
  static constexpr int64_t kMinRowsToPack = 4;
  static constexpr int64_t kMinTotalRowsToPack = 384;
  // op(W) = W^T is read in place where a pass makes at most this many passes over W in all (products times
  // blocks of panel_gemm::kTransposedRows rows; the in-place product runs on one thread): each pass
  // transposes every tile of W once, as the packing would, without the packed copy's buffer.
  static constexpr int64_t kMaxTransposedPasses = 1;
  // Rows of `a` kept in cache across panels: 16 register blocks with AVX2, 8 with AVX-512.
  static constexpr int64_t kRowBlock = 96;
};

}  // namespace

const StepKernels& step_kernels() {
  static const CpuStepKernels steps;
  return steps;
}

}  // namespace LSTM_EXT_CPU_VARIANT
}  // namespace lstm_ext

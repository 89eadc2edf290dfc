// bernoulli_mask.cpp -- the masks of recurrent dropout and zoneout on the CPU (lstm_ext::bernoulli_mask):
// value i is 1 where the i-th 32-bit word of the splitmix64 stream that starts at `seed` (Java's
// SplittableRandom) is below p * 2^32, else 0. Each word is computed from its index alone, so the rows
// split over threads give the same mask for any number of threads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace lstm_ext {
namespace {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;

// The k-th 64-bit output of splitmix64 started at `seed` (k from 0).
inline uint64_t splitmix64_at(uint64_t seed, uint64_t k) {
  uint64_t z = seed + (k + 1) * kGoldenGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

template <typename S>
void fill_mask(S* out, int64_t n, uint64_t seed, uint64_t threshold) {
  constexpr int64_t kGrain = 1 << 15;  // values per task: even, so a task starts on a word pair
  at::parallel_for(0, (n + 1) / 2, kGrain / 2, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const uint64_t bits = splitmix64_at(seed, static_cast<uint64_t>(k));
      const int64_t i = 2 * k;
      out[i] = static_cast<S>((bits & 0xFFFFFFFFull) < threshold ? 1 : 0);
      if (i + 1 < n) {
        out[i + 1] = static_cast<S>((bits >> 32) < threshold ? 1 : 0);
      }
    }
  });
}

at::Tensor bernoulli_mask_cpu(const at::Tensor& seed, c10::IntArrayRef size, double p, at::ScalarType dtype) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "bernoulli_mask: expected seed to be one int64 value on the CPU, got a ", seed.scalar_type(),
              " tensor of ", seed.numel(), " values on ", seed.device());
  TORCH_CHECK(p >= 0 && p <= 1, "bernoulli_mask: expected p in [0, 1], got ", p);
  at::Tensor out = at::empty(size, at::TensorOptions().dtype(dtype));
  // p * 2^32 rounded: P(1) is p to within 2^-33; p = 1 gives 2^32, above every word.
  const auto threshold = static_cast<uint64_t>(std::llround(p * 4294967296.0));
  const auto start = static_cast<uint64_t>(seed.item<int64_t>());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "lstm_ext_bernoulli_mask", [&] {
    fill_mask(out.mutable_data_ptr<scalar_t>(), out.numel(), start, threshold);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(lstm_ext, m) {
  m.def("bernoulli_mask(Tensor seed, int[] size, float p, ScalarType dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(lstm_ext, CPU, m) {
  m.impl("bernoulli_mask", &bernoulli_mask_cpu);
}

}  // namespace lstm_ext

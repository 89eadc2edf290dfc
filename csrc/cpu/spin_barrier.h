// spin_barrier.h -- where the CPU's shares of a small batch's units meet (WorkShare::sync): once per
// step, microseconds apart, so they spin rather than sleep (waking a sleeping thread costs about as
// much as a small step). Only the meeting is atomic: which share computes which element, and in what
// order, does not depend on who arrives first, so results stay bitwise repeatable.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "../step_kernels.h"

namespace lstm_ext {
namespace cpu {

class SpinBarrier final : public StepBarrier {
 public:
  explicit SpinBarrier(int64_t parties) : parties_(parties) {}

  // The last to arrive (bringing the arrivals to `parties`) opens the next generation; the others spin
  // until it does, then yield the core after a while in case the threads outnumber the cores.
  void arrive_and_wait(int64_t weight) const override {
    const uint64_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(weight, std::memory_order_acq_rel) + weight == parties_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.store(generation + 1, std::memory_order_release);
      return;
    }
    for (int64_t spins = 0; generation_.load(std::memory_order_acquire) == generation; ++spins) {
      if (spins < kSpinsBeforeYield) {
        pause();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static void pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  }
  // Some 10-100 us of pauses (a pause takes 10-140 cycles by CPU): a partner that takes longer has likely
  // lost its core (more threads than cores).
  static constexpr int64_t kSpinsBeforeYield = int64_t{1} << 11;
  const int64_t parties_;
  // On separate cache lines: the arrivals are written by every share, the generation mostly read.
  alignas(64) mutable std::atomic<int64_t> arrived_{0};
  alignas(64) mutable std::atomic<uint64_t> generation_{0};
};

}  // namespace cpu
}  // namespace lstm_ext

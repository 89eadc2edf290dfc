// cuda_emulation.h -- runs this project's CUDA kernels on the CPU with the host compiler, for the tests.
//
// Every CUDA thread of a block is a fiber (fiber_context.h) on the calling host thread. A fiber runs
// until it waits -- at __syncthreads(), a warp shuffle, or lstm_ext::cuda::grid_sync() -- and the
// scheduler then runs the next one; a barrier releases its waiters when the last thread arrives. One
// host thread and a fixed order (LaunchOrder) make every run the same. Blocks run one after another,
// except in a cooperative launch, where all blocks are co-resident fibers of one scheduler so that
// grid_sync() can wait for them all. Shared memory is allocated per block and filled with 0xFF bytes
// (NaN for floating point), so a read before any write shows.
//
// A barrier or warp operation that not every thread reaches is reported as a KernelError naming the
// kernel, block, thread and source line -- never a hang: a thread that returns while others of its
// block wait at a barrier (or reaches one after another has returned), threads of a block at different
// barriers, warp lanes at different operations or with a mask naming lanes that do not exist or have
// returned, and a state where no thread can continue (a deadlock). A kernel's own exception reaches the
// launch's caller unchanged. After an error every suspended thread is resumed into an exception that
// unwinds it, so nothing a kernel holds leaks.
//
// Kernel source: write it once for nvcc and the emulation with csrc/cuda/device_primitives.cuh (shared
// memory declarations, grid_sync); the CUDA names __syncthreads, __syncwarp and __shfl*_sync are
// defined here. Include this header after any torch headers and before the kernels.
#pragma once

#if defined(__CUDACC__)
#error "cuda_emulation.h runs CUDA kernels on the host; do not include it under nvcc"
#endif

#include <cxxabi.h>
#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "fiber_context.h"

#define LSTM_EXT_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory must be per block, which a `static` cannot be once blocks are co-resident.
#define __shared__ \
  static_assert(false, "declare shared memory with LSTM_EXT_SHARED / LSTM_EXT_DYNAMIC_SHARED (device_primitives.cuh)");

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The index variables of the emulated thread that is running (set by the scheduler at every switch).
inline thread_local dim3 gridDim, blockDim;
inline thread_local uint3 blockIdx, threadIdx;
constexpr int warpSize = 32;

namespace lstm_ext {
namespace emulated {

enum class LaunchOrder { kForward, kReverse };  // the order threads start in: blocks, then threads

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  std::size_t dynamic_shared_bytes = 0;   // the size of LSTM_EXT_DYNAMIC_SHARED's buffer, per block
  bool cooperative = false;               // all blocks co-resident: grid_sync() allowed
  LaunchOrder order = LaunchOrder::kForward;
  const char* kernel_name = nullptr;      // for errors; nullptr: the kernel's symbol, if it has one
  std::size_t fiber_stack_bytes = 0;      // 0: default_fiber_stack_bytes()
};

constexpr unsigned kMaxThreadsPerBlock = 1024;
constexpr std::size_t kMaxStaticSharedBytes = 48 * 1024;    // per block, as on every GPU
constexpr std::size_t kMaxDynamicSharedBytes = 227 * 1024;  // sm_90's largest opt-in
// A cooperative launch keeps a stack per waiting thread; this bounds the memory (and the mappings).
constexpr std::uint64_t kMaxCoResidentThreads = 16384;

// A misused barrier, warp operation or shared memory, or an invalid launch configuration.
class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// 64 KiB (256 KiB under AddressSanitizer, whose frames are larger), or $LSTM_EXT_EMULATION_STACK_KIB.
inline std::size_t default_fiber_stack_bytes() {
  static const std::size_t bytes = [] {
    const char* kib = std::getenv("LSTM_EXT_EMULATION_STACK_KIB");
    const long parsed = kib ? std::strtol(kib, nullptr, 10) : 0;
    return parsed > 0 ? static_cast<std::size_t>(parsed) * 1024 : std::size_t{LSTM_EXT_EMULATION_ASAN ? 256 : 64} * 1024;
  }();
  return bytes;
}

namespace detail {

// A barrier or warp operation in the kernel source.
struct Site {
  const char* what = "";
  std::source_location where;
};

inline bool same_site(const Site& a, const Site& b) {
  return a.where.line() == b.where.line() && a.where.column() == b.where.column() &&
         std::strcmp(a.what, b.what) == 0 && std::strcmp(a.where.file_name(), b.where.file_name()) == 0;
}

inline std::string describe(const Site& site) {
  const char* file = site.where.file_name();
  const char* slash = std::strrchr(file, '/');
  return std::string(site.what) + " at " + (slash ? slash + 1 : file) + ":" + std::to_string(site.where.line());
}

inline std::string describe(uint3 i) {
  return "(" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
}
inline std::string describe(dim3 d) { return describe(uint3{d.x, d.y, d.z}); }

// "0-15, 17, 20-31" for sorted ids.
inline std::string describe_ids(const std::vector<unsigned>& ids) {
  std::string text;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!text.empty()) text += ", ";
    text += std::to_string(ids[i]) + (j > i ? "-" + std::to_string(ids[j]) : "");
    i = j + 1;
  }
  return text;
}

inline std::string describe_lanes(unsigned lanes) {
  std::vector<unsigned> ids;
  for (unsigned lane = 0; lane < 32; ++lane)
    if ((lanes >> lane) & 1u) ids.push_back(lane);
  return describe_ids(ids);
}

inline std::string count(std::uint64_t n, const char* noun) {
  return std::to_string(n) + " " + noun + (n == 1 ? "" : "s");
}

inline std::string hex_mask(unsigned mask) {
  char text[16];
  std::snprintf(text, sizeof text, "0x%08x", mask);
  return text;
}

// Memory that reads as 0xFF bytes until written (NaN as float or double), aligned to 16 or more.
inline void* poisoned_allocation(std::size_t bytes, std::size_t alignment) {
  void* memory = ::operator new(bytes, std::align_val_t{alignment < 16 ? 16 : alignment});
  std::memset(memory, 0xFF, bytes);
  return memory;
}
inline void free_poisoned(void* memory, std::size_t alignment) {
  ::operator delete(memory, std::align_val_t{alignment < 16 ? 16 : alignment});
}

// A block's dynamic shared memory. Under AddressSanitizer a heap block of exactly the launch's bytes
// (ASan reports any access past it); otherwise the end of the buffer meets a PROT_NONE page, so an
// access more than 15 bytes past the end faults (with no bytes, any access does).
class DynamicSharedBuffer {
 public:
  DynamicSharedBuffer() = default;
  explicit DynamicSharedBuffer(std::size_t bytes) {
#if LSTM_EXT_EMULATION_ASAN
    data_ = static_cast<unsigned char*>(poisoned_allocation(bytes, 16));
#else
    const std::size_t page = fiber::page_bytes(), data_pages = fiber::round_up(bytes, page);
    mapped_ = data_pages + page;
    void* base = mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) fiber::throw_system_error("mapping dynamic shared memory", mapped_);
    mapping_ = static_cast<unsigned char*>(base);
    if (mprotect(mapping_ + data_pages, page, PROT_NONE) != 0) {
      munmap(mapping_, mapped_);
      fiber::throw_system_error("protecting dynamic shared memory's guard page", page);
    }
    data_ = mapping_ + data_pages - fiber::round_up(bytes, 16);
    std::memset(data_, 0xFF, bytes);
#endif
  }
  DynamicSharedBuffer(DynamicSharedBuffer&& other) noexcept { swap(other); }
  DynamicSharedBuffer& operator=(DynamicSharedBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  ~DynamicSharedBuffer() {
#if LSTM_EXT_EMULATION_ASAN
    if (data_) free_poisoned(data_, 16);
#else
    if (mapping_) munmap(mapping_, mapped_);
#endif
  }
  unsigned char* data() const { return data_; }

 private:
  void swap(DynamicSharedBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(mapping_, other.mapping_);
    std::swap(mapped_, other.mapped_);
  }
  unsigned char* data_ = nullptr;
  unsigned char* mapping_ = nullptr;
  std::size_t mapped_ = 0;
};

struct Block;

// Thrown inside a fiber to unwind it once its launch has failed; caught where the fiber began.
struct FiberCancelled {};

struct Fiber {
  enum class State { kNotStarted, kReady, kRunning, kWaiting, kFinished };
  enum class Wait { kNone, kBlockBarrier, kGridBarrier, kWarp };

  fiber::Context context;
  fiber::Stack stack;
  Block* block = nullptr;
  unsigned thread = 0;  // linear index in the block
  uint3 thread_index;
  State state = State::kNotStarted;
  Wait wait = Wait::kNone;
  Site wait_site;  // where it waits
};

// The one warp operation a warp has in flight: which lanes arrived, what each gave and reads.
struct Warp {
  unsigned lanes = 0;    // lanes that exist (a block's last warp may be partial)
  unsigned exited = 0;   // lanes that returned from the kernel
  unsigned arrived = 0;  // lanes waiting in the operation
  unsigned mask = 0;
  Site site;
  std::uint64_t value[32] = {};
  int source[32] = {};  // the lane each lane reads, -1 for none (__syncwarp)
  std::uint64_t result[32] = {};
};

struct StaticShared {
  const void* key;  // the declaration's address-unique tag
  void* data;
  std::size_t alignment;
};

struct Block {
  uint3 index;
  Fiber* fibers = nullptr;  // `threads` of them
  unsigned threads = 0;
  int first_returned = -1;  // the first thread that returned from the kernel
  unsigned barrier_arrived = 0;
  Site barrier_site;
  std::vector<Fiber*> barrier_waiters;
  std::vector<Warp> warps;
  std::vector<StaticShared> static_shared;
  std::size_t static_shared_bytes = 0;
  DynamicSharedBuffer dynamic_shared;
  bool has_dynamic_shared = false;

  void release_shared_memory() {
    for (const StaticShared& s : static_shared) free_poisoned(s.data, s.alignment);
    static_shared.clear();
    static_shared_bytes = 0;
    dynamic_shared = DynamicSharedBuffer();
    has_dynamic_shared = false;
  }
  ~Block() { release_shared_memory(); }
};

inline std::string symbol_name(const void* address) {
  Dl_info info{};
  if (address && dladdr(address, &info) && info.dli_sname) {
    int status = 0;
    char* demangled = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
    std::string name = status == 0 && demangled ? demangled : info.dli_sname;
    std::free(demangled);
    return name;
  }
  char text[32];
  std::snprintf(text, sizeof text, "%p", address);
  return std::string("at ") + text;
}

class Scheduler;
inline thread_local Scheduler* current_scheduler = nullptr;
inline thread_local Fiber* current_fiber = nullptr;

// One launch: its blocks and fibers, the queue of fibers ready to run, the grid barrier.
class Scheduler {
 public:
  Scheduler(const LaunchConfig& config, const void* kernel, void (*body)(void*), void* closure)
      : config_(config), kernel_(kernel), body_(body), closure_(closure) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  void run();

  // Called by the running fiber.
  void block_barrier(const Site& site, bool for_grid);
  std::uint64_t warp_exchange(const Site& site, unsigned mask, std::uint64_t value, int source_lane);
  void* static_shared(const void* key, std::size_t bytes, std::size_t alignment, const char* name);
  void* dynamic_shared();
  [[noreturn]] void fail_in_fiber(const std::string& message);

  // "emulated CUDA kernel K (grid (..), block (..)): ", the start of every error message.
  std::string prefix() const {
    if (kernel_label_.empty())
      kernel_label_ = config_.kernel_name ? config_.kernel_name : symbol_name(kernel_);
    return "emulated CUDA kernel " + kernel_label_ + " (grid " + describe(config_.grid) + ", block " +
           describe(config_.block) + "): ";
  }
  static std::string thread_name(const Fiber& f) {
    return "block " + describe(f.block->index) + " thread " + describe(f.thread_index);
  }

 private:
  void validate();
  void run_wave(std::uint64_t first_block, std::uint64_t block_count);
  void resume(Fiber& f);
  void on_return(Fiber& f);
  void suspend(Fiber& f, Fiber::Wait wait, const Site& site);
  void make_ready(Fiber& f);
  void fail(const std::string& message) {
    if (error_.empty()) error_ = message;
  }
  std::string deadlock_report() const;
  void cancel_wave();
  static void fiber_main(void* scheduler);
  uint3 block_index(std::uint64_t linear) const {
    const dim3 g = config_.grid;
    return {static_cast<unsigned>(linear % g.x), static_cast<unsigned>(linear / g.x % g.y),
            static_cast<unsigned>(linear / g.x / g.y)};
  }

  const LaunchConfig config_;
  const void* kernel_;
  void (*body_)(void*);
  void* closure_;
  mutable std::string kernel_label_;
  std::size_t stack_bytes_ = 0;
  unsigned threads_per_block_ = 0;
  std::uint64_t blocks_ = 0;

  fiber::Context host_;
  std::vector<Block> wave_blocks_;
  std::vector<Fiber> wave_fibers_;
  std::vector<Fiber*> ready_;
  std::size_t ready_head_ = 0;

  // The grid barrier (cooperative launches): blocks whose threads all arrived, and threads arrived.
  std::uint64_t grid_blocks_arrived_ = 0;
  std::uint64_t grid_threads_waiting_ = 0;
  Site grid_site_;
  std::vector<Fiber*> grid_waiters_;
  const Fiber* first_returned_in_grid_ = nullptr;

  std::string error_;
  std::exception_ptr kernel_exception_;
  bool cancelling_ = false;
};

inline void Scheduler::validate() {
  const dim3 g = config_.grid, b = config_.block;
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535)
    throw KernelError(prefix() + "invalid grid: every dimension must be at least 1, y and z at most 65535");
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.z > 64 ||
      std::uint64_t{b.x} * b.y * b.z > kMaxThreadsPerBlock)
    throw KernelError(prefix() + "invalid block: every dimension at least 1, z at most 64, at most " +
                      std::to_string(kMaxThreadsPerBlock) + " threads in all");
  if (config_.dynamic_shared_bytes > kMaxDynamicSharedBytes)
    throw KernelError(prefix() + "dynamic_shared_bytes must be at most " + std::to_string(kMaxDynamicSharedBytes) +
                      ", got " + std::to_string(config_.dynamic_shared_bytes));
  threads_per_block_ = b.x * b.y * b.z;
  blocks_ = std::uint64_t{g.x} * g.y * g.z;
  if (config_.cooperative && blocks_ * threads_per_block_ > kMaxCoResidentThreads)
    throw KernelError(prefix() + "a cooperative launch runs all blocks at once; the emulation holds at most " +
                      std::to_string(kMaxCoResidentThreads) + " threads, got " + std::to_string(blocks_) +
                      " blocks of " + std::to_string(threads_per_block_));
  stack_bytes_ = config_.fiber_stack_bytes ? config_.fiber_stack_bytes : default_fiber_stack_bytes();
  if (stack_bytes_ < 16 * 1024)
    throw KernelError(prefix() + "fiber_stack_bytes must be at least 16384, got " + std::to_string(stack_bytes_));
}

inline void Scheduler::run() {
  validate();
  if (current_fiber)
    throw KernelError(prefix() + "launched from inside an emulated kernel (dynamic parallelism is not emulated)");
  struct Installed {  // this launch is the host thread's current one until run() leaves
    Scheduler* outer;
    ~Installed() { current_scheduler = outer; }
  } installed{std::exchange(current_scheduler, this)};
  fiber::adopt_current_thread(host_);
  gridDim = config_.grid;
  blockDim = config_.block;
  if (config_.cooperative) {
    run_wave(0, blocks_);
  } else {
    for (std::uint64_t i = 0; i < blocks_; ++i) run_wave(config_.order == LaunchOrder::kForward ? i : blocks_ - 1 - i, 1);
  }
}

// Runs blocks [first_block, first_block + block_count) together, to the end or to the first error.
inline void Scheduler::run_wave(std::uint64_t first_block, std::uint64_t block_count) {
  const std::size_t threads = static_cast<std::size_t>(block_count) * threads_per_block_;
  wave_fibers_.resize(threads);  // reused by the next wave: a block's worth, not a grid's
  if (wave_blocks_.size() != block_count) wave_blocks_ = std::vector<Block>(block_count);
  const unsigned warps = (threads_per_block_ + 31) / 32;
  for (std::uint64_t b = 0; b < block_count; ++b) {
    Block& block = wave_blocks_[b];
    block.index = block_index(first_block + b);
    block.fibers = &wave_fibers_[b * threads_per_block_];
    block.threads = threads_per_block_;
    block.first_returned = -1;
    block.barrier_arrived = 0;
    block.barrier_waiters.clear();
    block.warps.assign(warps, Warp{});
    for (unsigned w = 0; w < warps; ++w) {
      const unsigned lanes = threads_per_block_ - 32 * w < 32 ? threads_per_block_ - 32 * w : 32;
      block.warps[w].lanes = lanes == 32 ? ~0u : (1u << lanes) - 1;
    }
    for (unsigned t = 0; t < threads_per_block_; ++t) {
      Fiber& f = block.fibers[t];
      f.block = &block;
      f.thread = t;
      f.thread_index = {t % config_.block.x, t / config_.block.x % config_.block.y,
                        t / config_.block.x / config_.block.y};
      f.state = Fiber::State::kNotStarted;
      f.wait = Fiber::Wait::kNone;
    }
  }
  ready_.clear();
  ready_head_ = 0;
  grid_blocks_arrived_ = grid_threads_waiting_ = 0;
  grid_waiters_.clear();
  first_returned_in_grid_ = nullptr;

  std::size_t started = 0, finished = 0;
  while (error_.empty() && !kernel_exception_) {
    Fiber* next = nullptr;
    if (ready_head_ < ready_.size()) {
      next = ready_[ready_head_++];
      if (ready_head_ == ready_.size()) {
        ready_.clear();
        ready_head_ = 0;
      }
    } else if (started < threads) {
      next = &wave_fibers_[config_.order == LaunchOrder::kForward ? started : threads - 1 - started];
      ++started;
    } else {
      break;
    }
    resume(*next);
    if (next->state == Fiber::State::kFinished) ++finished;
  }
  if (error_.empty() && !kernel_exception_ && finished < threads) error_ = deadlock_report();
  if (!error_.empty() || kernel_exception_) {
    cancel_wave();
    if (kernel_exception_) std::rethrow_exception(kernel_exception_);
    throw KernelError(error_);
  }
  for (Block& block : wave_blocks_) block.release_shared_memory();
}

inline void Scheduler::resume(Fiber& f) {
  threadIdx = f.thread_index;
  blockIdx = f.block->index;
  current_fiber = &f;
  if (f.state == Fiber::State::kNotStarted) {
    f.stack = fiber::StackPool::for_this_thread().take(stack_bytes_);
    fiber::prepare(f.context, f.stack, &Scheduler::fiber_main, this);
  }
  f.state = Fiber::State::kRunning;
  fiber::switch_to(host_, f.context);
  current_fiber = nullptr;
  if (f.state == Fiber::State::kFinished) on_return(f);
}

inline void Scheduler::fiber_main(void* scheduler) {
  auto* self = static_cast<Scheduler*>(scheduler);
  Fiber* f = current_fiber;
  fiber::entered_from(self->host_);
  try {
    self->body_(self->closure_);
  } catch (const FiberCancelled&) {
    // unwound after an error, which the scheduler already holds
  } catch (...) {
    if (!self->kernel_exception_) self->kernel_exception_ = std::current_exception();
  }
  f->state = Fiber::State::kFinished;
  fiber::exit_to(f->context, self->host_);
}

// A thread returned from the kernel: nobody of its block (or, in a grid barrier, of the grid) may be
// waiting for it. Its stack goes to the next fiber.
inline void Scheduler::on_return(Fiber& f) {
  fiber::retire(f.context);
  fiber::StackPool::for_this_thread().give(std::move(f.stack));
  Block& block = *f.block;
  if (block.first_returned < 0) block.first_returned = static_cast<int>(f.thread);
  if (!first_returned_in_grid_) first_returned_in_grid_ = &f;
  Warp& warp = block.warps[f.thread / 32];
  const unsigned lane_bit = 1u << (f.thread % 32);
  warp.exited |= lane_bit;
  if (!error_.empty() || kernel_exception_) return;
  if (block.barrier_arrived > 0) {
    fail(prefix() + thread_name(f) + " returned from the kernel while " + std::to_string(block.barrier_arrived) +
         " of the block's " + std::to_string(block.threads) + " threads wait at " + describe(block.barrier_site) +
         ": every thread of a block must reach each barrier");
  } else if (warp.arrived != 0 && (warp.mask & lane_bit)) {
    fail(prefix() + thread_name(f) + " (lane " + std::to_string(f.thread % 32) + " of warp " +
         std::to_string(f.thread / 32) + ") returned from the kernel while lanes " + describe_lanes(warp.arrived) +
         " wait for it at " + describe(warp.site) + " with mask " + hex_mask(warp.mask));
  } else if (grid_threads_waiting_ > 0) {
    fail(prefix() + thread_name(f) + " returned from the kernel while " + count(grid_threads_waiting_, "thread") +
         " of the grid wait at " + describe(grid_site_) + ": every thread of the grid must reach it");
  }
}

inline void Scheduler::suspend(Fiber& f, Fiber::Wait wait, const Site& site) {
  f.state = Fiber::State::kWaiting;
  f.wait = wait;
  f.wait_site = site;
  fiber::switch_to(f.context, host_);
  // resumed by the scheduler, which has set this thread's index variables again
  f.wait = Fiber::Wait::kNone;
  if (cancelling_) throw FiberCancelled{};
}

inline void Scheduler::make_ready(Fiber& f) {
  f.state = Fiber::State::kReady;
  ready_.push_back(&f);
}

inline void Scheduler::fail_in_fiber(const std::string& message) {
  fail(message);
  throw FiberCancelled{};
}

inline void Scheduler::block_barrier(const Site& site, bool for_grid) {
  Fiber& f = *current_fiber;
  Block& block = *f.block;
  if (for_grid && !config_.cooperative)
    fail_in_fiber(prefix() + thread_name(f) + " reached " + describe(site) +
                  ", but the kernel was not launched cooperatively (LaunchConfig::cooperative), so its blocks "
                  "need not be co-resident");
  if (block.first_returned >= 0)
    fail_in_fiber(prefix() + thread_name(f) + " reached " + describe(site) + " after thread " +
                  describe(block.fibers[block.first_returned].thread_index) +
                  " of its block returned from the kernel: every thread of a block must reach each barrier");
  if (for_grid && first_returned_in_grid_)
    fail_in_fiber(prefix() + thread_name(f) + " reached " + describe(site) + " after " +
                  thread_name(*first_returned_in_grid_) +
                  " returned from the kernel: every thread of the grid must reach it");
  if (block.barrier_arrived == 0) {
    block.barrier_site = site;
  } else if (!same_site(site, block.barrier_site)) {
    fail_in_fiber(prefix() + thread_name(f) + " reached " + describe(site) + " while " +
                  count(block.barrier_arrived, "thread") + " of its block (thread " +
                  describe(block.barrier_waiters.front()->thread_index) + " first) wait at " +
                  describe(block.barrier_site) + ": all threads of a block must reach the same barrier");
  }
  if (for_grid) ++grid_threads_waiting_;
  if (++block.barrier_arrived < block.threads) {
    block.barrier_waiters.push_back(&f);
    suspend(f, for_grid ? Fiber::Wait::kGridBarrier : Fiber::Wait::kBlockBarrier, site);
    return;
  }
  // The last thread of the block: release the block, or count the block in at the grid barrier.
  block.barrier_arrived = 0;
  if (!for_grid) {
    for (Fiber* waiter : block.barrier_waiters) make_ready(*waiter);
    block.barrier_waiters.clear();
    return;
  }
  if (grid_blocks_arrived_ == 0) {
    grid_site_ = site;
  } else if (!same_site(site, grid_site_)) {
    fail_in_fiber(prefix() + "block " + describe(block.index) + " reached " + describe(site) + " while " +
                  count(grid_blocks_arrived_, "block") + " wait at " + describe(grid_site_) +
                  ": all blocks must reach the same grid barrier");
  }
  grid_waiters_.insert(grid_waiters_.end(), block.barrier_waiters.begin(), block.barrier_waiters.end());
  block.barrier_waiters.clear();
  if (++grid_blocks_arrived_ < blocks_) {
    grid_waiters_.push_back(&f);
    suspend(f, Fiber::Wait::kGridBarrier, site);
    return;
  }
  grid_blocks_arrived_ = 0;
  grid_threads_waiting_ = 0;
  for (Fiber* waiter : grid_waiters_) make_ready(*waiter);
  grid_waiters_.clear();
}

// The lanes in `mask` meet; each then reads the value of the lane it named (source_lane; -1: none).
inline std::uint64_t Scheduler::warp_exchange(const Site& site, unsigned mask, std::uint64_t value, int source_lane) {
  Fiber& f = *current_fiber;
  Block& block = *f.block;
  const unsigned lane = f.thread % 32, warp_id = f.thread / 32;
  Warp& warp = block.warps[warp_id];
  const auto who = [&] {
    return prefix() + thread_name(f) + " (lane " + std::to_string(lane) + " of warp " + std::to_string(warp_id) + ")";
  };
  if (!((mask >> lane) & 1u))
    fail_in_fiber(who() + " called " + describe(site) + " with mask " + hex_mask(mask) +
                  ", which does not include the calling lane");
  if (mask & ~warp.lanes)
    fail_in_fiber(who() + " called " + describe(site) + " with mask " + hex_mask(mask) + ", which names lane(s) " +
                  describe_lanes(mask & ~warp.lanes) + " that do not exist: the block has " +
                  std::to_string(block.threads) + " threads, so warp " + std::to_string(warp_id) + " has lanes " +
                  describe_lanes(warp.lanes));
  if (mask & warp.exited)
    fail_in_fiber(who() + " called " + describe(site) + " with mask " + hex_mask(mask) + ", which names lane(s) " +
                  describe_lanes(mask & warp.exited) + " that returned from the kernel");
  if (warp.arrived == 0) {
    warp.mask = mask;
    warp.site = site;
  } else if (mask != warp.mask || !same_site(site, warp.site)) {
    fail_in_fiber(who() + " called " + describe(site) + " with mask " + hex_mask(mask) + " while lanes " +
                  describe_lanes(warp.arrived) + " wait at " + describe(warp.site) + " with mask " +
                  hex_mask(warp.mask) + ": the lanes of a mask must meet at the same warp operation");
  }
  warp.value[lane] = value;
  warp.source[lane] = source_lane;
  warp.arrived |= 1u << lane;
  if (warp.arrived != mask) {
    suspend(f, Fiber::Wait::kWarp, site);
    return warp.result[lane];
  }
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const int source = warp.source[l];
    if (source >= 0 && !((mask >> source) & 1u))
      fail_in_fiber(prefix() + thread_name(block.fibers[warp_id * 32 + l]) + " (lane " + std::to_string(l) +
                    " of warp " + std::to_string(warp_id) + ") reads lane " + std::to_string(source) + " at " +
                    describe(site) + ", which is not in the mask " + hex_mask(mask));
    warp.result[l] = source >= 0 ? warp.value[source] : 0;
    if (l != lane) make_ready(block.fibers[warp_id * 32 + l]);
  }
  warp.arrived = 0;
  return warp.result[lane];
}

inline void* Scheduler::static_shared(const void* key, std::size_t bytes, std::size_t alignment, const char* name) {
  Block& block = *current_fiber->block;
  for (const StaticShared& s : block.static_shared)
    if (s.key == key) return s.data;
  if (block.static_shared_bytes + bytes > kMaxStaticSharedBytes)
    fail_in_fiber(prefix() + "static shared memory " + name + " (" + std::to_string(bytes) + " bytes) takes the block's " +
                  "static shared memory past " + std::to_string(kMaxStaticSharedBytes) + " bytes");
  void* data = poisoned_allocation(bytes, alignment);
  block.static_shared.push_back({key, data, alignment});
  block.static_shared_bytes += bytes;
  return data;
}

inline void* Scheduler::dynamic_shared() {
  Block& block = *current_fiber->block;
  if (!block.has_dynamic_shared) {
    block.dynamic_shared = DynamicSharedBuffer(config_.dynamic_shared_bytes);
    block.has_dynamic_shared = true;
  }
  return block.dynamic_shared.data();
}

// Who waits where, by block: each group of waiting threads with its barrier or warp operation.
inline std::string Scheduler::deadlock_report() const {
  std::string report = "deadlock: no emulated thread can continue.";
  for (const Block& block : wave_blocks_) {
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;  // what they wait at -> threads
    for (unsigned t = 0; t < block.threads; ++t) {
      const Fiber& f = block.fibers[t];
      if (f.state != Fiber::State::kWaiting) continue;
      std::string at = describe(f.wait_site);
      if (f.wait == Fiber::Wait::kWarp) {
        const Warp& warp = block.warps[t / 32];
        at += " (warp " + std::to_string(t / 32) + ", for lanes " + describe_lanes(warp.mask & ~warp.arrived) + ")";
      }
      auto group = groups.begin();
      while (group != groups.end() && group->first != at) ++group;
      if (group == groups.end()) group = groups.insert(groups.end(), {at, {}});
      group->second.push_back(t);
    }
    if (groups.empty()) continue;
    report += " Block " + describe(block.index) + ":";
    for (std::size_t g = 0; g < groups.size(); ++g)
      report += std::string(g ? ";" : "") + " threads " + describe_ids(groups[g].second) + " wait at " + groups[g].first;
    report += ".";
  }
  return prefix() + report;
}

// After an error: every thread that waits (or was released but has not run yet) is resumed into a
// FiberCancelled that unwinds it, so its frames are destroyed and its stack is clean for the next fiber.
inline void Scheduler::cancel_wave() {
  cancelling_ = true;
  for (Fiber& f : wave_fibers_)
    if (f.state == Fiber::State::kWaiting || f.state == Fiber::State::kReady) resume(f);
  cancelling_ = false;
  for (Block& block : wave_blocks_) block.release_shared_memory();
  ready_.clear();
  ready_head_ = 0;
}

inline Scheduler& running(const char* what) {
  if (!current_scheduler || !current_fiber)
    throw KernelError(std::string(what) + " called outside an emulated kernel");
  return *current_scheduler;
}

inline void run_grid(const LaunchConfig& config, const void* kernel, void (*body)(void*), void* closure) {
  Scheduler scheduler(config, kernel, body, closure);
  scheduler.run();
}

template <typename T>
std::uint64_t to_lane_word(T value) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffles move values of at most 8 bytes");
  std::uint64_t word = 0;
  std::memcpy(&word, &value, sizeof(T));
  return word;
}

template <typename T>
T from_lane_word(std::uint64_t word) {
  T value;
  std::memcpy(&value, &word, sizeof(T));
  return value;
}

// A shuffle's source lane from the CUDA rules: `width` splits the warp into segments; a source past the
// end of the caller's segment yields the caller's own value.
template <typename T>
T shuffle(const char* what, const std::source_location& where, unsigned mask, T value, int width,
          unsigned (*source_of)(unsigned lane, unsigned segment_base, unsigned width, int operand), int operand) {
  Scheduler& scheduler = running(what);
  const Site site{what, where};
  if (width < 1 || width > 32 || (width & (width - 1)) != 0)
    scheduler.fail_in_fiber(scheduler.prefix() + Scheduler::thread_name(*current_fiber) + " called " +
                            describe(site) + " with width " + std::to_string(width) +
                            ", which is not a power of two in [1, 32]");
  const unsigned lane = current_fiber->thread % 32, w = static_cast<unsigned>(width);
  const unsigned source = source_of(lane, lane & ~(w - 1), w, operand);
  return from_lane_word<T>(scheduler.warp_exchange(site, mask, to_lane_word(value), static_cast<int>(source)));
}

}  // namespace detail

// Runs kernel(args...) on the CPU as config describes; throws KernelError for a misused barrier, warp
// operation or shared memory, and a kernel's own exception as it is.
template <typename... KernelArgs, typename... Args>
void launch(const LaunchConfig& config, void (*kernel)(KernelArgs...), Args&&... args) {
  static_assert(sizeof...(KernelArgs) == sizeof...(Args), "the kernel takes a different number of arguments");
  using Params = std::tuple<std::decay_t<KernelArgs>...>;
  Params params(std::forward<Args>(args)...);  // converted once, as a CUDA launch copies its arguments
  struct Closure {
    void (*kernel)(KernelArgs...);
    Params* params;
  } closure{kernel, &params};
  detail::run_grid(
      config, reinterpret_cast<const void*>(kernel),
      [](void* c) {
        auto* call = static_cast<Closure*>(c);
        std::apply(call->kernel, *call->params);
      },
      &closure);
}

// Runs kernel(args...) as a 1-D grid of `blocks` x `threads`, in the given order of blocks and threads.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), unsigned blocks, unsigned threads, LaunchOrder order, Args... args) {
  LaunchConfig config;
  config.grid = dim3(blocks);
  config.block = dim3(threads);
  config.order = order;
  launch(config, kernel, args...);
}

// The block's copy of a static shared array (LSTM_EXT_SHARED): allocated when the first thread of the
// block reaches the declaration; `key` is a tag unique to the declaration.
template <typename T, std::size_t N>
auto block_shared_array(const void* key, const char* name) -> T (&)[N] {
  static_assert(std::is_trivially_default_constructible_v<T> && std::is_trivially_destructible_v<T>,
                "shared memory holds trivial types");
  void* data = detail::running("shared memory").static_shared(key, sizeof(T[N]), alignof(T), name);
  return *std::launder(reinterpret_cast<T(*)[N]>(data));
}

// The block's dynamic shared memory (LSTM_EXT_DYNAMIC_SHARED), LaunchConfig::dynamic_shared_bytes long.
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::running("dynamic shared memory").dynamic_shared());
}

// lstm_ext::cuda::grid_sync() (device_primitives.cuh).
inline void grid_barrier(std::source_location where) {
  detail::running("grid_sync()").block_barrier({"grid_sync()", where}, true);
}

}  // namespace emulated
}  // namespace lstm_ext

// The CUDA intrinsics. The trailing std::source_location names the call site in error messages.
inline void __syncthreads(std::source_location where = std::source_location::current()) {
  lstm_ext::emulated::detail::running("__syncthreads()").block_barrier({"__syncthreads()", where}, false);
}

inline void __syncwarp(unsigned mask = 0xFFFFFFFFu, std::source_location where = std::source_location::current()) {
  lstm_ext::emulated::detail::running("__syncwarp()").warp_exchange({"__syncwarp()", where}, mask, 0, -1);
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = warpSize,
              std::source_location where = std::source_location::current()) {
  return lstm_ext::emulated::detail::shuffle(
      "__shfl_sync()", where, mask, value, width,
      [](unsigned, unsigned base, unsigned w, int src) { return base + (static_cast<unsigned>(src) & (w - 1)); },
      source_lane);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize,
                  std::source_location where = std::source_location::current()) {
  return lstm_ext::emulated::detail::shuffle(
      "__shfl_xor_sync()", where, mask, value, width,
      [](unsigned lane, unsigned base, unsigned w, int xor_mask) {
        const unsigned source = lane ^ static_cast<unsigned>(xor_mask);
        return source >= base + w ? lane : source;  // later segments are out of reach; earlier ones are not
      },
      lane_mask);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                   std::source_location where = std::source_location::current()) {
  return lstm_ext::emulated::detail::shuffle(
      "__shfl_down_sync()", where, mask, value, width,
      [](unsigned lane, unsigned base, unsigned w, int d) {
        return lane - base + static_cast<unsigned>(d) >= w ? lane : lane + static_cast<unsigned>(d);
      },
      static_cast<int>(delta));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T value, unsigned delta, int width = warpSize,
                 std::source_location where = std::source_location::current()) {
  return lstm_ext::emulated::detail::shuffle(
      "__shfl_up_sync()", where, mask, value, width,
      [](unsigned lane, unsigned base, unsigned, int d) {
        return lane - base < static_cast<unsigned>(d) ? lane : lane - static_cast<unsigned>(d);
      },
      static_cast<int>(delta));
}

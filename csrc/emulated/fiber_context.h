// fiber_context.h -- stackful fibers on one host thread, for the CUDA emulation (cuda_emulation.h):
// stacks mmap'ed with a guard page below them, a context switch (eight instructions each way of
// x86-64 assembly; ucontext on other machines or with -DLSTM_EXT_EMULATION_UCONTEXT) and the
// AddressSanitizer / ThreadSanitizer annotations that every stack switch needs, or the sanitizers
// lose track of which stack is live. Knows nothing of CUDA.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define LSTM_EXT_EMULATION_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LSTM_EXT_EMULATION_ASAN 1
#endif
#endif
#ifndef LSTM_EXT_EMULATION_ASAN
#define LSTM_EXT_EMULATION_ASAN 0
#endif

#if defined(__SANITIZE_THREAD__)
#define LSTM_EXT_EMULATION_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LSTM_EXT_EMULATION_TSAN 1
#endif
#endif
#ifndef LSTM_EXT_EMULATION_TSAN
#define LSTM_EXT_EMULATION_TSAN 0
#endif

#if LSTM_EXT_EMULATION_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if LSTM_EXT_EMULATION_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if defined(__x86_64__) && defined(__ELF__) && !defined(LSTM_EXT_EMULATION_UCONTEXT)
#define LSTM_EXT_EMULATION_ASM_SWITCH 1
#else
#define LSTM_EXT_EMULATION_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if LSTM_EXT_EMULATION_ASM_SWITCH
// lstm_ext_emulation_switch(save, load): pushes the callee-saved registers and the SSE/x87 control
// words (callee-saved too in the SysV ABI), stores the stack pointer to *save, loads `load` and pops the
// same frame from there. lstm_ext_emulation_fiber_start is where a new fiber's first switch "returns"
// to: it calls r13(r12) and marks the end of the call chain for unwinders. A COMDAT group so that every
// translation unit including this header may emit it; hidden so it never binds to another library.
extern "C" __attribute__((visibility("hidden"))) void lstm_ext_emulation_switch(void** save, void* load);
extern "C" __attribute__((visibility("hidden"))) void lstm_ext_emulation_fiber_start();
asm(R"(
  .pushsection .text.lstm_ext_emulation_switch,"axG",@progbits,lstm_ext_emulation_switch,comdat
  .weak lstm_ext_emulation_switch
  .hidden lstm_ext_emulation_switch
  .type lstm_ext_emulation_switch,@function
  .p2align 4
lstm_ext_emulation_switch:
  .cfi_startproc
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .cfi_endproc
  .size lstm_ext_emulation_switch,.-lstm_ext_emulation_switch

  .weak lstm_ext_emulation_fiber_start
  .hidden lstm_ext_emulation_fiber_start
  .type lstm_ext_emulation_fiber_start,@function
  .p2align 4
lstm_ext_emulation_fiber_start:
  .cfi_startproc
  .cfi_undefined rip
  movq %r12, %rdi
  callq *%r13
  ud2
  .cfi_endproc
  .size lstm_ext_emulation_fiber_start,.-lstm_ext_emulation_fiber_start
  .popsection
)");
#endif

namespace lstm_ext {
namespace emulated {
namespace fiber {

[[noreturn]] inline void throw_system_error(const char* what, std::size_t bytes) {
  throw std::runtime_error(std::string("CUDA emulation: ") + what + " of " + std::to_string(bytes) +
                           " bytes failed: " + std::strerror(errno));
}

inline std::size_t page_bytes() {
  static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return page;
}

inline std::size_t round_up(std::size_t bytes, std::size_t multiple) {
  return (bytes + multiple - 1) / multiple * multiple;
}

// A fiber's stack: `bytes` usable, rounded up to whole pages, above one PROT_NONE guard page, so an
// overflow faults instead of writing into the next stack. Move-only; unmaps itself.
class Stack {
 public:
  Stack() = default;
  explicit Stack(std::size_t usable_bytes) : bytes_(round_up(usable_bytes, page_bytes())) {
    const std::size_t mapped = bytes_ + page_bytes();
    void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) throw_system_error("mapping a fiber stack", mapped);
    if (mprotect(base, page_bytes(), PROT_NONE) != 0) {
      munmap(base, mapped);
      throw_system_error("protecting a fiber stack's guard page", page_bytes());
    }
    mapping_ = static_cast<char*>(base);
  }
  Stack(Stack&& other) noexcept : mapping_(std::exchange(other.mapping_, nullptr)), bytes_(other.bytes_) {}
  Stack& operator=(Stack&& other) noexcept {
    std::swap(mapping_, other.mapping_);
    std::swap(bytes_, other.bytes_);
    return *this;
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  ~Stack() {
    if (mapping_) {
      clear_shadow();
      munmap(mapping_, bytes_ + page_bytes());
    }
  }
  // A fiber left unfinished (or switched away from mid-frame) leaves its frames' redzones poisoned in
  // ASan's shadow; cleared before the memory is reused, by another fiber or, once unmapped, by anyone.
  void clear_shadow() const {
#if LSTM_EXT_EMULATION_ASAN
    if (mapping_) __asan_unpoison_memory_region(bottom(), bytes_);
#endif
  }

  explicit operator bool() const { return mapping_ != nullptr; }
  char* bottom() const { return mapping_ + page_bytes(); }  // lowest usable address
  std::size_t bytes() const { return bytes_; }

 private:
  char* mapping_ = nullptr;
  std::size_t bytes_ = 0;
};

// Stacks of one size kept for the next fiber of this host thread: a launch whose threads never wait
// runs every thread on the same stack, and repeated launches do not map and unmap.
class StackPool {
 public:
  static constexpr std::size_t kMaxKept = 1024;

  Stack take(std::size_t bytes) {
    bytes = round_up(bytes, page_bytes());
    if (bytes != bytes_) {
      free_.clear();
      bytes_ = bytes;
    }
    if (free_.empty()) return Stack(bytes);
    Stack stack = std::move(free_.back());
    free_.pop_back();
    return stack;
  }
  void give(Stack stack) {
    stack.clear_shadow();
    if (stack && stack.bytes() == bytes_ && free_.size() < kMaxKept) free_.push_back(std::move(stack));
  }

  static StackPool& for_this_thread() {
    static thread_local StackPool pool;
    return pool;
  }

 private:
  std::size_t bytes_ = 0;
  std::vector<Stack> free_;
};

// Where a context runs: its saved registers and, for the sanitizers, the bounds of its stack.
struct Context {
#if LSTM_EXT_EMULATION_ASM_SWITCH
  void* stack_pointer = nullptr;
#else
  ucontext_t registers;
  void (*entry)(void*) = nullptr;
  void* entry_arg = nullptr;
#endif
  const void* stack_bottom = nullptr;  // unknown (nullptr) for the host thread's own stack until a fiber learns it
  std::size_t stack_bytes = 0;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
};

#if !LSTM_EXT_EMULATION_ASM_SWITCH
inline void ucontext_entry(unsigned high, unsigned low) {
  auto* context = reinterpret_cast<Context*>((static_cast<std::uintptr_t>(high) << 32) | low);
  context->entry(context->entry_arg);
  std::abort();  // an entry never returns: it leaves with exit_to()
}
#endif

// Makes `context` start entry(arg) on `stack` at its first switch_to(). entry must end with exit_to().
inline void prepare(Context& context, const Stack& stack, void (*entry)(void*), void* arg) {
  context.stack_bottom = stack.bottom();
  context.stack_bytes = stack.bytes();
  context.asan_fake_stack = nullptr;
#if LSTM_EXT_EMULATION_TSAN
  context.tsan_fiber = __tsan_create_fiber(0);
#endif
#if LSTM_EXT_EMULATION_ASM_SWITCH
  // The frame lstm_ext_emulation_switch pops, lowest address first: control words, r15, r14, r13 =
  // entry, r12 = arg, rbx, rbp = 0 (ends frame-pointer walks), return address = the start routine.
  // The start routine runs with rsp = frame + 64, 16-byte aligned as a call site needs.
  const std::uintptr_t top = reinterpret_cast<std::uintptr_t>(stack.bottom() + stack.bytes()) & ~std::uintptr_t{15};
  auto* frame = reinterpret_cast<std::uint64_t*>(top - 16 - 8 * 8);
  const std::uint32_t control_words[2] = {0x1F80u, 0x037Fu};  // the ABI's initial MXCSR and x87 control word
  std::memcpy(&frame[0], control_words, sizeof control_words);
  frame[1] = frame[2] = frame[5] = frame[6] = 0;
  frame[3] = reinterpret_cast<std::uint64_t>(entry);
  frame[4] = reinterpret_cast<std::uint64_t>(arg);
  frame[7] = reinterpret_cast<std::uint64_t>(&lstm_ext_emulation_fiber_start);
  context.stack_pointer = frame;
#else
  context.entry = entry;
  context.entry_arg = arg;
  getcontext(&context.registers);
  context.registers.uc_stack.ss_sp = stack.bottom();
  context.registers.uc_stack.ss_size = stack.bytes();
  context.registers.uc_link = nullptr;
  const auto address = reinterpret_cast<std::uintptr_t>(&context);
  makecontext(&context.registers, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              static_cast<unsigned>(address >> 32), static_cast<unsigned>(address & 0xFFFFFFFFu));
#endif
}

inline void raw_switch(Context& from, Context& to) {
#if LSTM_EXT_EMULATION_ASM_SWITCH
  lstm_ext_emulation_switch(&from.stack_pointer, to.stack_pointer);
#else
  swapcontext(&from.registers, &to.registers);
#endif
}

// The host thread's context, the one that switches to fibers and back.
inline void adopt_current_thread(Context& host) {
  host.stack_bottom = nullptr;
  host.stack_bytes = 0;
#if LSTM_EXT_EMULATION_TSAN
  host.tsan_fiber = __tsan_get_current_fiber();
#endif
}

// Suspends `from` (the running context) and runs `to` until something switches back to `from`. Fibers
// only ever switch to the host context and the host only to fibers, so whoever resumes `from` is `to`:
// its stack bounds, reported by ASan on the way back in, are recorded there.
inline void switch_to(Context& from, Context& to) {
#if LSTM_EXT_EMULATION_ASAN
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack_bottom, to.stack_bytes);
#endif
#if LSTM_EXT_EMULATION_TSAN
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#endif
  raw_switch(from, to);
#if LSTM_EXT_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(from.asan_fake_stack, &to.stack_bottom, &to.stack_bytes);
#endif
}

// The first statement of a fiber's entry: tells ASan the switch from `host` has landed.
inline void entered_from(Context& host) {
#if LSTM_EXT_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &host.stack_bottom, &host.stack_bytes);
#else
  (void)host;
#endif
}

// The last statement of a fiber's entry: switches to `host` for good (ASan frees the fiber's fake stack).
[[noreturn]] inline void exit_to(Context& from, Context& host) {
#if LSTM_EXT_EMULATION_ASAN
  __sanitizer_start_switch_fiber(nullptr, host.stack_bottom, host.stack_bytes);
#endif
#if LSTM_EXT_EMULATION_TSAN
  __tsan_switch_to_fiber(host.tsan_fiber, 0);
#endif
  raw_switch(from, host);
  std::abort();  // never resumed
}

// Releases what prepare() set up once the fiber has exited or will never run again.
inline void retire(Context& context) {
#if LSTM_EXT_EMULATION_TSAN
  if (context.tsan_fiber) __tsan_destroy_fiber(context.tsan_fiber);
#endif
  context.tsan_fiber = nullptr;
}

}  // namespace fiber
}  // namespace emulated
}  // namespace lstm_ext

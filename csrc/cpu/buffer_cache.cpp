// buffer_cache.cpp -- see buffer_cache.h.
#include "buffer_cache.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>
#include <mutex>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace lstm_ext {
namespace cpu {
namespace {

#ifdef __linux__
constexpr size_t kHugePageBytes = size_t{2} << 20;
constexpr size_t kPageBytes = size_t{4} << 10;

// A mapping of whole pages (huge ones from kMinHugePageBytes up).
struct Mapping {
  void* data;
  size_t bytes;
};

// Requests from kMinCachedBytes up get a mapping of their own (huge pages from kMinHugePageBytes up),
// smaller ones (and any the kernel refuses) ATen's CPU allocator. A storage keeps its allocator, so a
// resize of such a tensor comes back here. Freed mappings are kept for the next requests (see the
// header), the oldest unmapped beyond kMaxCachedBytes.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kMinCachedBytes) {
      return c10::GetCPUAllocator()->allocate(nbytes);
    }
    const bool huge = nbytes >= kMinHugePageBytes;
    const size_t granule = huge ? kHugePageBytes : kPageBytes;
    const size_t bytes = (nbytes + granule - 1) / granule * granule;
    Mapping mapping = take_cached(bytes);
    if (mapping.data == nullptr) {
      mapping = huge ? map_huge_pages(bytes) : map_pages(bytes);
      if (mapping.data == nullptr) {
        return c10::GetCPUAllocator()->allocate(nbytes);
      }
    }
    return {mapping.data, new Mapping(mapping), &give_back, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Never destroyed: a tensor freed during exit, after static destructors ran, still gives its mapping back.
  static HugePageAllocator& instance() {
    static auto* allocator = new HugePageAllocator();
    return *allocator;
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_bytes_;
  }

  void empty_cache() {
    std::vector<Mapping> released;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      released.swap(cached_);
      cached_bytes_ = 0;
    }
    for (const Mapping& mapping : released) {
      munmap(mapping.data, mapping.bytes);
    }
  }

 private:
  // One huge page more than needed, then the unaligned ends unmapped: the kept range starts on a huge
  // page boundary and is whole huge pages, so that every page of it can be one. {nullptr, 0} if refused.
  static Mapping map_huge_pages(size_t bytes) {
    void* raw = mmap(nullptr, bytes + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
      return {nullptr, 0};
    }
    const auto raw_begin = reinterpret_cast<uintptr_t>(raw), raw_end = raw_begin + bytes + kHugePageBytes;
    const uintptr_t begin = (raw_begin + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes, end = begin + bytes;
    if (begin > raw_begin) {
      munmap(raw, begin - raw_begin);
    }
    if (raw_end > end) {
      munmap(reinterpret_cast<void*>(end), raw_end - end);
    }
    void* data = reinterpret_cast<void*>(begin);
    madvise(data, bytes, MADV_HUGEPAGE);  // a request: with THP off the pages stay 4 KiB ones
    return {data, bytes};
  }

  static Mapping map_pages(size_t bytes) {
    void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return data == MAP_FAILED ? Mapping{nullptr, 0} : Mapping{data, bytes};
  }

  // The smallest cached mapping of at least `bytes` and at most twice that (a much larger one is left for
  // a request of its own size), taken out of the cache; {nullptr, 0} if none.
  Mapping take_cached(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto best = cached_.end();
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {
      if (it->bytes >= bytes && it->bytes <= 2 * bytes && (best == cached_.end() || it->bytes < best->bytes)) {
        best = it;
      }
    }
    if (best == cached_.end()) {
      return {nullptr, 0};
    }
    const Mapping mapping = *best;
    cached_.erase(best);
    cached_bytes_ -= mapping.bytes;
    return mapping;
  }

  static void give_back(void* context) {
    const Mapping mapping = *static_cast<Mapping*>(context);
    delete static_cast<Mapping*>(context);
    instance().keep(mapping);
  }

  // Caches a freed mapping, newest last; unmaps the oldest ones while the cache holds more than
  // kMaxCachedBytes (a mapping larger than that alone is unmapped at once).
  void keep(const Mapping& mapping) {
    std::vector<Mapping> released;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      cached_.push_back(mapping);
      cached_bytes_ += mapping.bytes;
      while (cached_bytes_ > kMaxCachedBytes) {
        released.push_back(cached_.front());
        cached_bytes_ -= cached_.front().bytes;
        cached_.erase(cached_.begin());
      }
    }
    for (const Mapping& old : released) {
      munmap(old.data, old.bytes);
    }
  }

  std::mutex mutex_;
  std::vector<Mapping> cached_;  // freed mappings, oldest first
  size_t cached_bytes_ = 0;
};
#endif

}  // namespace

at::Tensor empty_huge_page_backed(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef __linux__
  if (options.device().is_cpu() && options.layout() == at::kStrided) {
    return at::detail::empty_generic(sizes, &HugePageAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                      c10::typeMetaToScalarType(options.dtype()), std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

size_t cached_huge_page_bytes() {
#ifdef __linux__
  return HugePageAllocator::instance().cached_bytes();
#else
  return 0;
#endif
}

void empty_huge_page_cache() {
#ifdef __linux__
  HugePageAllocator::instance().empty_cache();
#endif
}

}  // namespace cpu
}  // namespace lstm_ext

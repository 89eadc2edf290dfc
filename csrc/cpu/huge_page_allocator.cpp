// huge_page_allocator.cpp -- see huge_page_allocator.h.
#include "huge_page_allocator.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdint>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace lstm_ext {
namespace cpu {
namespace {

#ifdef __linux__
constexpr size_t kHugePageBytes = size_t{2} << 20;

// A mapping of whole huge pages, unmapped when the storage that holds it is freed.
struct Mapping {
  void* data;
  size_t bytes;
};

void unmap(void* context) {
  auto* mapping = static_cast<Mapping*>(context);
  munmap(mapping->data, mapping->bytes);
  delete mapping;
}

// Large requests get a mapping of their own, smaller ones (and any the kernel refuses) ATen's CPU
// allocator. A storage keeps its allocator, so a resize of such a tensor comes back here.
class HugePageAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kMinHugePageBytes) {
      return c10::GetCPUAllocator()->allocate(nbytes);
    }
    // One huge page more than needed, then the unaligned ends unmapped: the kept range starts on a huge
    // page boundary and is whole huge pages, so that every page of it can be one.
    const size_t bytes = (nbytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
    void* raw = mmap(nullptr, bytes + kHugePageBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
      return c10::GetCPUAllocator()->allocate(nbytes);
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
    return {data, new Mapping{data, bytes}, &unmap, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};
#endif

}  // namespace

at::Tensor empty_huge_page_backed(at::IntArrayRef sizes, const at::TensorOptions& options) {
#ifdef __linux__
  if (options.device().is_cpu() && options.layout() == at::kStrided) {
    static HugePageAllocator allocator;
    return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                      c10::typeMetaToScalarType(options.dtype()), std::nullopt);
  }
#endif
  return at::empty(sizes, options);
}

}  // namespace cpu
}  // namespace lstm_ext

// The CPU allocator that keeps the pages of freed large tensors for reuse (see cpu_allocator.py).
//
// Requests of at least `min_bytes` get page-aligned blocks of their own mapping; smaller ones go to
// the allocator that was installed before (glibc's heap already reuses those). A freed block joins
// the cache. A request takes, in this order:
//   1. the smallest cached block at least as large, its tail going back to the cache;
//   2. else the largest cached block, grown by mremap (its pages move, only the extension is new);
//   3. else fresh pages.
// Then cached blocks are unmapped, smallest first, until live + cached <= (1 + slack) x peak live, so
// the pages held never exceed the most the process has had in use at once by more than the slack.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pybind11/pybind11.h>
#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <unordered_map>

namespace {

constexpr size_t kPage = 4096;

struct State {
  std::mutex mutex;
  std::multimap<size_t, void*> cached_blocks;  // size -> start, smallest first
  std::unordered_map<void*, size_t> block_size;  // every live and cached block of ours
  std::atomic<size_t> min_bytes{size_t(1) << 20};  // read without the lock
  double slack = 0;  // a fraction of the peak
  size_t live = 0, cached = 0, peak_live = 0;
  int64_t reused = 0, grown = 0, fresh = 0, unmapped = 0;
  c10::Allocator* previous = nullptr;
  c10::DeleterFnPtr previous_deleter = nullptr;
};

State& state() {
  static State* s = new State();  // never destroyed: tensors may be freed during exit
  return *s;
}

void unmap_smallest(State& s) {
  auto it = s.cached_blocks.begin();
  TORCH_CHECK(munmap(it->second, it->first) == 0, "cpu_allocator: munmap failed");
  s.block_size.erase(it->second);
  s.cached -= it->first;
  s.unmapped++;
  s.cached_blocks.erase(it);
}

void release(void* ptr) {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mutex);
  auto found = s.block_size.find(ptr);
  if (found == s.block_size.end()) {  // a small block of the previous allocator (raw_deallocate)
    lock.unlock();
    s.previous_deleter(ptr);
    return;
  }
  s.cached_blocks.emplace(found->second, ptr);
  s.live -= found->second;
  s.cached += found->second;
}

void* take(State& s, size_t size) {
  auto fit = s.cached_blocks.lower_bound(size);
  if (fit != s.cached_blocks.end()) {
    void* ptr = fit->second;
    size_t have = fit->first;
    s.cached_blocks.erase(fit);
    s.cached -= have;
    if (have > size) {
      void* tail = static_cast<char*>(ptr) + size;
      s.cached_blocks.emplace(have - size, tail);
      s.block_size[tail] = have - size;
      s.cached += have - size;
    }
    s.reused++;
    return ptr;
  }
  if (!s.cached_blocks.empty()) {
    auto largest = std::prev(s.cached_blocks.end());
    void* old = largest->second;
    size_t have = largest->first;
    void* ptr = mremap(old, have, size, MREMAP_MAYMOVE);
    TORCH_CHECK(ptr != MAP_FAILED, "cpu_allocator: out of memory growing a block to ", size, " bytes");
    s.cached_blocks.erase(largest);
    s.block_size.erase(old);
    s.cached -= have;
    s.grown++;
    return ptr;
  }
  void* ptr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(ptr != MAP_FAILED, "cpu_allocator: out of memory allocating ", size, " bytes");
  s.fresh++;
  return ptr;
}

struct PageCachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) override {
    State& s = state();
    if (nbytes < s.min_bytes.load()) {
      return s.previous->allocate(nbytes);
    }
    size_t size = (nbytes + kPage - 1) / kPage * kPage;
    std::lock_guard<std::mutex> lock(s.mutex);
    void* ptr = take(s, size);
    s.block_size[ptr] = size;
    s.live += size;
    s.peak_live = std::max(s.peak_live, s.live);
    size_t limit = s.peak_live + size_t(s.slack * double(s.peak_live));
    while (s.live + s.cached > limit && !s.cached_blocks.empty()) {
      unmap_smallest(s);
    }
    return {ptr, ptr, &release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// A fork while another thread holds the lock would leave it held in the child (DataLoader workers).
void lock_for_fork() { state().mutex.lock(); }
void unlock_after_fork() { state().mutex.unlock(); }

bool install(int64_t min_bytes, double slack) {
  TORCH_CHECK(min_bytes >= 0 && slack >= 0, "cpu_allocator: min_bytes and slack must be >= 0");
  static PageCachingAllocator* allocator = nullptr;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.min_bytes.store(std::max<size_t>(size_t(min_bytes), 1));
  s.slack = slack;
  if (allocator != nullptr) {
    return false;
  }
  s.previous = c10::GetCPUAllocator();
  s.previous_deleter = s.previous->raw_deleter();
  TORCH_CHECK(s.previous_deleter != nullptr, "cpu_allocator: the CPU allocator in place has no raw deleter");
  allocator = new PageCachingAllocator();
  c10::SetCPUAllocator(allocator, /*priority=*/std::numeric_limits<uint8_t>::max());
  pthread_atfork(&lock_for_fork, &unlock_after_fork, &unlock_after_fork);
  return true;
}

void release_cached() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  while (!s.cached_blocks.empty()) {
    unmap_smallest(s);
  }
}

pybind11::dict stats() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  pybind11::dict out;
  out["live_bytes"] = s.live;
  out["cached_bytes"] = s.cached;
  out["peak_live_bytes"] = s.peak_live;
  out["slack"] = s.slack;
  out["cached_blocks"] = s.cached_blocks.size();
  out["reused"] = s.reused;
  out["grown"] = s.grown;
  out["fresh"] = s.fresh;
  out["unmapped"] = s.unmapped;
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("install", &install, "route CPU allocations of min_bytes or more through the page cache (once); "
        "slack: the pages held may exceed the peak in use by this fraction of it");
  m.def("release_cached", &release_cached, "unmap every cached block");
  m.def("stats", &stats, "live, cached and peak bytes, and how requests were served");
}

// threadpool.cc: a fixed set of worker threads woken per parallel_for.
//
// An encoder step makes hundreds of parallel_for calls (about 160 for the
// ConvNet at batch 256, 850 for ResNet-18 at batch 32), most a few
// microseconds after the last one ended. Waking a helper blocked on a
// condition variable and waiting for it to finish cost about 80 us a call
// on the 2-core test machine, so both sides first poll an atomic for a
// bounded time (kSpin) and only then block: about 6 us a call. An idle pool therefore
// burns at most kSpin of each core after its last call, then sleeps. With
// more workers than hardware threads a spinning thread would hold a core
// that the thread it waits for needs, so then nobody spins.
#include "threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace pv {
namespace {

std::atomic<int> g_threads{0};
thread_local bool t_in_pool = false;  // a nested parallel_for runs inline

// How long a helper polls for the next call, and the caller for the
// helpers' end, before blocking.
constexpr std::chrono::microseconds kSpin{50};

// Tells the core that this is a wait loop (frees the sibling hyperthread
// and saves power) without giving up the time slice.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Polls ready() for up to kSpin; true as soon as it holds. The clock is
// read every 16 polls: a pause is tens of cycles, a clock read more.
template <typename F>
bool spin_until(bool spin, const F &ready) {
  if (!spin) return ready();
  const auto deadline = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    for (int i = 0; i < 16; i++) {
      if (ready()) return true;
      cpu_relax();
    }
    if (std::chrono::steady_clock::now() >= deadline) return ready();
  }
}

// A call is announced by one 64-bit word, its generation above kHelperBits
// and its helper count below, so that a helper reads both at once: a
// helper the call does not count must not read anything else, since the
// caller may already be writing the next call's fields.
constexpr int kHelperBits = 20;
constexpr uint64_t kHelperMask = (uint64_t(1) << kHelperBits) - 1;

class Pool {
 public:
  // Runs fn over tasks with the caller as worker 0 and workers - 1 helpers.
  // Task indices come from one shared counter: which worker runs a task
  // never changes what the task computes.
  void run(int64_t tasks, int workers, const std::function<void(int64_t, int)> &fn) {
    std::lock_guard<std::mutex> serial(call_mu_);
    const int helpers = workers - 1;
    grow(helpers);
    spin_.store((int)threads_.size() < hw_threads_, std::memory_order_relaxed);
    fn_ = &fn;
    tasks_ = tasks;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(helpers, std::memory_order_relaxed);
    generation_++;
    announce((generation_ << kHelperBits) | (uint64_t)helpers);
    drain(0);
    await_helpers();
    if (error_) {  // every worker is done with fn; its first exception goes to the caller
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  void grow(int n) {
    while ((int)threads_.size() < n) {
      int id = (int)threads_.size() + 1;
      threads_.emplace_back([this, id] { loop(id); });
      threads_.back().detach();
    }
  }

  // Publishes a call. The seq_cst store and the seq_cst load of sleepers_
  // pair with the helper's increment of sleepers_ and its load of call_
  // (see next_call): either the helper sees the call before it blocks, or
  // the caller sees it asleep and wakes it.
  void announce(uint64_t word) {
    call_.store(word, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      { std::lock_guard<std::mutex> lock(mu_); }  // a sleeper is in wait() or sees word
      wake_.notify_all();
    }
  }

  // Waits for the call after seen: spins, then blocks on wake_.
  uint64_t next_call(uint64_t seen) {
    uint64_t word = seen;
    auto fresh = [&] { return (word = call_.load(std::memory_order_acquire)) != seen; };
    if (spin_until(spin_.load(std::memory_order_relaxed), fresh)) return word;
    std::unique_lock<std::mutex> lock(mu_);
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    wake_.wait(lock, fresh);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
    return word;
  }

  // A helper whose id is above a call's helper count sits the call out;
  // run() waits only for the helpers it counted, so none misses its call.
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      seen = next_call(seen);
      if (id > (int)(seen & kHelperMask)) continue;
      drain(id);
      if (pending_.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
          caller_asleep_.load(std::memory_order_seq_cst)) {
        { std::lock_guard<std::mutex> lock(mu_); }
        done_.notify_all();
      }
    }
  }

  // The caller's side of the same handshake as announce/next_call.
  void await_helpers() {
    auto done = [&] { return pending_.load(std::memory_order_acquire) == 0; };
    if (spin_until(spin_.load(std::memory_order_relaxed), done)) return;
    std::unique_lock<std::mutex> lock(mu_);
    caller_asleep_.store(true, std::memory_order_seq_cst);
    done_.wait(lock, done);
    caller_asleep_.store(false, std::memory_order_relaxed);
  }

  void drain(int worker) {
    t_in_pool = true;
    for (;;) {
      int64_t t = next_.fetch_add(1);
      if (t >= tasks_) break;
      // A task that throws (scratch memory that cannot be had) ends the
      // call: no further tasks start, and run() rethrows the first
      // exception once every worker has left fn, rather than one ending
      // a helper thread, and the process with it.
      try {
        (*fn_)(t, worker);
      } catch (...) {
        {
          std::lock_guard<std::mutex> lock(err_mu_);
          if (!error_) error_ = std::current_exception();
        }
        next_.store(tasks_);
      }
    }
    t_in_pool = false;
  }

  std::mutex call_mu_, mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  // Written by the caller before call_ is stored; read by counted helpers.
  const std::function<void(int64_t, int)> *fn_ = nullptr;
  int64_t tasks_ = 0;
  uint64_t generation_ = 0;  // the caller's own count, under call_mu_
  std::atomic<uint64_t> call_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0}, sleepers_{0};
  std::atomic<bool> caller_asleep_{false};
  std::mutex err_mu_;
  std::exception_ptr error_;  // the call's first exception, under err_mu_
  // Whether waits spin: the helpers and the caller fit the hardware threads.
  const int hw_threads_ = (int)std::max(1u, std::thread::hardware_concurrency());
  std::atomic<bool> spin_{false};
};

Pool &pool() {
  static Pool *p = new Pool();  // never destroyed: workers outlive main
  return *p;
}

}  // namespace

int cpu_threads() {
  int n = g_threads.load();
  if (n > 0) return n;
  unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? (int)hw : 1;
}

void set_cpu_threads(int n) { g_threads.store(n > 0 ? n : 0); }

bool in_parallel_task() { return t_in_pool; }

void parallel_for(int64_t tasks, const std::function<void(int64_t, int)> &fn) {
  if (tasks <= 0) return;
  int workers = cpu_threads();
  if (workers > tasks) workers = (int)tasks;
  if (workers > (int)kHelperMask) workers = (int)kHelperMask;
  if (workers <= 1 || t_in_pool) {
    for (int64_t t = 0; t < tasks; t++) fn(t, 0);
    return;
  }
  pool().run(tasks, workers, fn);
}

}  // namespace pv

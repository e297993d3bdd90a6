// threadpool.cc: a fixed set of worker threads woken per parallel_for.
#include "threadpool.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace pv {
namespace {

std::atomic<int> g_threads{0};
thread_local bool t_in_pool = false;  // a nested parallel_for runs inline

class Pool {
 public:
  // Runs fn over tasks with the caller as worker 0 and workers - 1 helpers.
  void run(int64_t tasks, int workers, const std::function<void(int64_t, int)> &fn) {
    std::lock_guard<std::mutex> serial(call_mu_);
    grow(workers - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = &fn;
      tasks_ = tasks;
      next_.store(0);
      helpers_ = workers - 1;
      pending_ = workers - 1;
      generation_++;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
  }

 private:
  void grow(int n) {
    while ((int)threads_.size() < n) {
      int id = (int)threads_.size() + 1;
      threads_.emplace_back([this, id] { loop(id); });
      threads_.back().detach();
    }
  }

  // A helper whose id is above this call's helper count sits the call out;
  // run() waits only for the helpers it counted, so none misses its call.
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id > helpers_) continue;
      }
      drain(id);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_all();
    }
  }

  void drain(int worker) {
    t_in_pool = true;
    for (;;) {
      int64_t t = next_.fetch_add(1);
      if (t >= tasks_) break;
      (*fn_)(t, worker);
    }
    t_in_pool = false;
  }

  std::mutex call_mu_, mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int64_t, int)> *fn_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
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

void parallel_for(int64_t tasks, const std::function<void(int64_t, int)> &fn) {
  if (tasks <= 0) return;
  int workers = cpu_threads();
  if (workers > tasks) workers = (int)tasks;
  if (workers <= 1 || t_in_pool) {
    for (int64_t t = 0; t < tasks; t++) fn(t, 0);
    return;
  }
  pool().run(tasks, workers, fn);
}

}  // namespace pv

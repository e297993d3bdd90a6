// test_threadpool.cc: stress test of the CPU backend's thread pool
// (csrc/threadpool.cc), run by ctest. Several host threads call
// parallel_for back to back, with uneven task counts, nested calls from
// inside tasks and occasional sleeps (so that workers go from polling to
// blocking and back), at a pool larger than the machine (no polling) and
// at one that fits. Every task must run exactly once, on a worker index
// within the pool, and a call nested in a pool-run call inline on worker 0.
//
// It lives in csrc/tests/ because cgo compiles every .cc file of csrc/
// into the Go package, and this one has a main.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>
#include <vector>

#include "threadpool.h"

namespace {

// Returns the number of violations seen by hosts x calls calls.
long stress(int threads, int hosts, int calls) {
  pv::set_cpu_threads(threads);
  std::atomic<long> bad{0};
  std::vector<std::thread> host;
  for (int h = 0; h < hosts; h++) {
    host.emplace_back([&, h] {
      for (int call = 0; call < calls; call++) {
        const int64_t tasks = 1 + (call * 5 + h) % 7;
        std::vector<std::atomic<int>> runs((size_t)tasks);
        for (auto &r : runs) r = 0;
        pv::parallel_for(tasks, [&](int64_t task, int worker) {
          if (worker < 0 || worker >= threads) bad++;
          runs[(size_t)task]++;
          if (call % 97 == 0) {
            // Nested in a call the pool runs (two tasks or more): inline,
            // as worker 0. (An outer call of one task runs inline itself
            // and leaves the pool free for the inner one.)
            std::atomic<int> inner_runs{0};
            pv::parallel_for(2, [&](int64_t, int inner) {
              if (tasks > 1 && inner != 0) bad++;
              inner_runs++;
            });
            if (inner_runs != 2) bad++;
          }
          if (call % 1009 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
        });
        for (auto &r : runs)
          if (r != 1) bad++;
        if (call % 3001 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  for (auto &t : host) t.join();
  return bad.load();
}

// A task that throws, on a helper (worker > 0) or on the caller (worker
// 0): the exception reaches the caller of parallel_for, after which the
// pool runs calls as before. Tasks sleep so that helpers take some.
// Returns the number of violations; *thrown counts the calls where a task
// threw.
long throwing(int threads, bool on_helper, int *thrown) {
  pv::set_cpu_threads(threads);
  long bad = 0;
  for (int call = 0; call < 40; call++) {
    const int64_t tasks = 4 + call % 9;
    std::atomic<bool> threw{false};
    bool caught = false;
    try {
      pv::parallel_for(tasks, [&](int64_t, int worker) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        if ((worker > 0) == on_helper && !threw.exchange(true))
          throw std::runtime_error("task failed");
      });
    } catch (const std::runtime_error &) {
      caught = true;
    }
    if (caught != threw.load()) bad++;
    *thrown += caught;
    std::atomic<int> runs{0};
    pv::parallel_for(tasks, [&](int64_t, int) { runs++; });
    if (runs != tasks) bad++;
  }
  return bad;
}

}  // namespace

int main() {
  const int hw = (int)std::max(1u, std::thread::hardware_concurrency());
  int failed = 0;
  for (int threads : {hw, 2 * hw + 1}) {
    const auto t0 = std::chrono::steady_clock::now();
    const long bad = stress(threads, 3, 20000);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s: %d threads, 3 host threads x 20000 calls: %ld violations (%.2f s)\n",
                bad ? "FAIL" : "ok", threads, bad, s);
    failed += bad != 0;
  }
  for (int threads : {2, 2 * hw + 1})
    for (bool on_helper : {true, false}) {
      int thrown = 0;
      long bad = throwing(threads, on_helper, &thrown);
      if (thrown < 10) bad++;  // most calls must have thrown for the check to mean anything
      std::printf("%s: %d threads, a task throwing on %s: %d of 40 calls threw, %ld violations\n",
                  bad ? "FAIL" : "ok", threads, on_helper ? "a helper" : "the caller", thrown, bad);
      failed += bad != 0;
    }
  std::printf("%d passed, %d failed\n", 6 - failed, failed);
  return failed ? 1 : 0;
}

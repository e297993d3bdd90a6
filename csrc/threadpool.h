// threadpool.h: the CPU backend's worker threads. One pool per process;
// parallel_for hands out task indices dynamically so uneven tasks balance.
#ifndef POLYVIEW_THREADPOOL_H
#define POLYVIEW_THREADPOOL_H

#include <cstdint>
#include <functional>

namespace pv {

// Threads an op may use: pv_cpu_set_threads, else the hardware's.
int cpu_threads();
void set_cpu_threads(int n);

// Runs fn(task, worker) for task in [0, tasks) on up to cpu_threads()
// workers, worker in [0, workers used). Returns when all tasks are done.
// If fn throws, tasks not yet started are skipped and parallel_for
// rethrows the first exception once no worker is inside fn. Calls from
// several host threads are serialised; a call from inside fn runs its
// tasks inline on that worker (worker 0).
void parallel_for(int64_t tasks, const std::function<void(int64_t task, int worker)> &fn);

// Whether the calling thread is running a parallel_for task, where a
// nested parallel_for runs inline.
bool in_parallel_task();

}  // namespace pv

#endif  // POLYVIEW_THREADPOOL_H

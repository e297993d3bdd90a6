// comm_nccl.cu: the CUDA backend's collectives over NCCL: sum
// all-reduce, all-gather and broadcast between GPU ranks, one GPU per
// rank (csrc/comm.cc has checked every argument).
//
// Each call returns once its result is in place, and never waits longer
// than the communicator's timeout. NCCL's blocking mode cannot promise
// that: a rank whose peer died waits in ncclCommInitRank, or in a kernel,
// for ever. So the communicator is non-blocking (ncclConfig_t.blocking =
// 0): NCCL calls return at once, possibly with ncclInProgress, and this
// file polls ncclCommGetAsyncError and a CUDA event against a deadline,
// calling ncclCommAbort when it passes or when NCCL reports an error.
// ncclCommAbort raises the flag NCCL's kernels poll, so the GPU work of a
// hung collective ends too. Not guarded: ncclCommAbort itself hanging
// (reported for some NCCL versions) would hang the call that aborts.
//
// Streams: a collective runs on the communicator's own stream, ordered by
// an event after the work queued so far on the device's stream; the host
// then waits on a second event, never on the device's stream.
//
// Threads: NCCL forbids concurrent calls on one communicator. op_mu makes
// collectives take turns, and nccl_mu guards each short NCCL call against
// comm_abort from another thread, which takes nccl_mu only, so an abort is
// never stuck behind a waiting collective.
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <thread>

#include "comm_nccl.h"
#include "common.cuh"

namespace pvcuda {
namespace {

static_assert(sizeof(ncclUniqueId) == PV_COMM_ID_BYTES, "PV_COMM_ID_BYTES must be NCCL's");

using Clock = std::chrono::steady_clock;

// One rank's communicator.
struct Comm {
  Context *ctx = nullptr;  // the device's context; the core keeps it open
  int rank = 0, size = 0;
  double timeout = 0;      // seconds: init, each collective, finalize
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;  // the device stream's work before a collective
  cudaEvent_t done = nullptr;   // the collective's end on stream
  std::mutex op_mu;             // one collective at a time
  std::mutex nccl_mu;           // guards nccl and every call on it
  ncclComm_t nccl = nullptr;    // NULL once aborted or destroyed
  // Set (release) after why is written, by the first abort only.
  std::atomic<bool> aborted{false};
  char why[400] = "";
};

Comm *as_comm(void *p) { return static_cast<Comm *>(p); }

ncclDataType_t nccl_type(pv_dtype t) {
  switch (t) {
    case PV_BF16: return ncclBfloat16;
    case PV_F64: return ncclFloat64;
    case PV_U8: return ncclUint8;
    case PV_I32: return ncclInt32;
    case PV_F32: break;
  }
  return ncclFloat32;
}

// Time since the call began, and the waits between polls: yield for the
// first 2 ms (a step's all-reduce takes milliseconds, and a sleep would
// add its own length to each), then sleep 50 us, then 1 ms after 100 ms,
// when a long wait costs no CPU.
class Poller {
 public:
  explicit Poller(double limit) : start_(Clock::now()), limit_(limit) {}
  bool expired() const { return elapsed() > limit_; }
  void pause() const {
    const double e = elapsed();
    if (e < 2e-3)
      std::this_thread::yield();
    else if (e < 0.1)
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }

 private:
  double elapsed() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  Clock::time_point start_;
  double limit_;
};

// Aborts c's NCCL communicator, recording why (the first reason wins);
// nccl_mu held. aborted is raised before ncclCommAbort, so a collective
// that sees its kernels end after an abort knows its result is void. In
// non-blocking mode ncclCommAbort may return ncclInProgress and free the
// communicator in the background: the handle is dropped either way.
void abort_locked(Comm *c, const char *why) {
  if (!c->aborted.load(std::memory_order_acquire)) {
    snprintf(c->why, sizeof c->why, "%s", why);
    c->aborted.store(true, std::memory_order_release);
  }
  if (!c->nccl) return;
  cudaSetDevice(c->ctx->device);
  ncclResult_t r = ncclCommAbort(c->nccl);
  c->nccl = nullptr;
  if (r != ncclSuccess && r != ncclInProgress)
    log_msg(PV_LOG_WARN, "nccl: rank %d of %d on GPU %d: ncclCommAbort: %s", c->rank, c->size,
            c->ctx->device, ncclGetErrorString(r));
}

// The error of a call on an aborted communicator.
pv_status aborted_error(Comm *c, const char *what) {
  return fail(PV_ERR_BACKEND, "NCCL %s on rank %d of %d: the communicator is aborted (%s)",
              what, c->rank, c->size, c->why);
}

// Aborts on an NCCL error (a call's result or the communicator's state)
// and says what NCCL said; nccl_mu held.
pv_status fail_nccl_locked(Comm *c, ncclResult_t r, const char *what) {
  char why[400];
  snprintf(why, sizeof why, "NCCL %s failed: %s: %s", what, ncclGetErrorString(r),
           ncclGetLastError(c->nccl));
  abort_locked(c, why);
  return fail(PV_ERR_BACKEND, "%s (rank %d of %d; communicator aborted)", why, c->rank,
              c->size);
}

// Aborts when the deadline has passed; nccl_mu held.
pv_status fail_timeout_locked(Comm *c, const char *what) {
  char why[400];
  snprintf(why, sizeof why, "NCCL %s did not complete within %g s", what, c->timeout);
  abort_locked(c, why);
  return fail(PV_ERR_BACKEND,
              "%s: another rank died or hangs (rank %d of %d; communicator aborted)", why,
              c->rank, c->size);
}

// Checks c's state once: PV_OK while it is healthy (*busy says whether
// an operation is still being set up), else an abort and an error.
pv_status check_state(Comm *c, const Poller &poll, const char *what, bool *busy) {
  std::lock_guard<std::mutex> lock(c->nccl_mu);
  if (!c->nccl) return aborted_error(c, what);
  ncclResult_t state = ncclSuccess;
  ncclResult_t r = ncclCommGetAsyncError(c->nccl, &state);
  if (r != ncclSuccess) state = r;
  if (state != ncclSuccess && state != ncclInProgress) return fail_nccl_locked(c, state, what);
  if (poll.expired()) return fail_timeout_locked(c, what);
  *busy = state == ncclInProgress;
  return PV_OK;
}

// Waits while NCCL sets up the last call in the background (state
// ncclInProgress: init, a collective's first connection, finalize).
pv_status wait_ready(Comm *c, const Poller &poll, const char *what) {
  for (;;) {
    bool busy = false;
    pv_status st = check_state(c, poll, what, &busy);
    if (st != PV_OK || !busy) return st;
    poll.pause();
  }
}

// Waits for the done event of the collective just queued, watching the
// communicator's state for an error from another rank meanwhile.
pv_status wait_done(Comm *c, const Poller &poll, const char *what) {
  for (;;) {
    cudaError_t err = cudaEventQuery(c->done);
    if (err == cudaSuccess) break;
    if (err != cudaErrorNotReady) {
      pv_status st = cuda_fail(err, __FILE__, __LINE__, "cudaEventQuery");
      std::lock_guard<std::mutex> lock(c->nccl_mu);
      abort_locked(c, "a CUDA error while waiting for a collective");
      return st;
    }
    bool busy = false;
    pv_status st = check_state(c, poll, what, &busy);
    if (st != PV_OK) return st;
    poll.pause();
  }
  // Kernels that an abort from another thread stopped end too.
  if (c->aborted.load(std::memory_order_acquire)) return aborted_error(c, what);
  return PV_OK;
}

// Runs one collective: enqueue(nccl) queues it on c->stream after the
// device stream's work; the call returns once it is complete.
template <typename F>
pv_status run(Comm *c, const char *what, int64_t count, F enqueue) {
  std::lock_guard<std::mutex> op(c->op_mu);
  if (c->aborted.load(std::memory_order_acquire)) return aborted_error(c, what);
  if (count == 0) return PV_OK;
  Poller poll(c->timeout);
  PV_CUDA(cudaSetDevice(c->ctx->device));
  PV_CUDA(cudaEventRecord(c->ready, c->ctx->stream));
  PV_CUDA(cudaStreamWaitEvent(c->stream, c->ready, 0));
  {
    std::lock_guard<std::mutex> lock(c->nccl_mu);
    if (!c->nccl) return aborted_error(c, what);
    ncclResult_t r = enqueue(c->nccl);
    if (r != ncclSuccess && r != ncclInProgress) return fail_nccl_locked(c, r, what);
  }
  // Only once the state leaves ncclInProgress are the kernels queued.
  pv_status st = wait_ready(c, poll, what);
  if (st != PV_OK) return st;
  PV_CUDA(cudaEventRecord(c->done, c->stream));
  return wait_done(c, poll, what);
}

// ---- the table's entries -------------------------------------------------------

// The id names no device: ctx is not used.
pv_status unique_id(void *, uint8_t *id) {
  ncclUniqueId uid;
  ncclResult_t r = ncclGetUniqueId(&uid);
  if (r != ncclSuccess)
    return PV_FAIL(PV_ERR_BACKEND, "ncclGetUniqueId: %s: %s", ncclGetErrorString(r),
                   ncclGetLastError(nullptr));
  std::memcpy(id, &uid, sizeof uid);
  return PV_OK;
}

// Frees c's streams and events (queued work finishes first, on its own)
// and c; its NCCL communicator is gone already.
void release(Comm *c) {
  cudaSetDevice(c->ctx->device);
  if (c->done) cudaEventDestroy(c->done);
  if (c->ready) cudaEventDestroy(c->ready);
  if (c->stream) cudaStreamDestroy(c->stream);
  delete c;
}

// Makes c's stream and events, then joins the group and waits, at most
// the timeout, for every rank to join.
pv_status start(Comm *c, const pv_comm_init_args *a) {
  PV_CUDA(cudaSetDevice(c->ctx->device));
  PV_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  PV_CUDA(cudaEventCreateWithFlags(&c->ready, cudaEventDisableTiming));
  PV_CUDA(cudaEventCreateWithFlags(&c->done, cudaEventDisableTiming));

  ncclUniqueId id;
  std::memcpy(&id, a->id, sizeof id);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  Poller poll(c->timeout);
  {
    std::lock_guard<std::mutex> lock(c->nccl_mu);
    ncclResult_t r = ncclCommInitRankConfig(&c->nccl, a->size, id, a->rank, &config);
    if (r != ncclSuccess && r != ncclInProgress) {
      pv_status st = PV_FAIL(PV_ERR_BACKEND, "ncclCommInitRankConfig (rank %d of %d): %s: %s",
                             a->rank, a->size, ncclGetErrorString(r), ncclGetLastError(nullptr));
      abort_locked(c, "init failed");
      return st;
    }
  }
  return wait_ready(c, poll, "init");
}

pv_status comm_init(void *p, const pv_comm_init_args *a, void **out) {
  *out = nullptr;
  Context *ctx = static_cast<Context *>(p);
  Comm *c = new (std::nothrow) Comm();
  if (!c) return PV_FAIL(PV_ERR_OUT_OF_MEMORY, "cuda: out of host memory");
  c->ctx = ctx;
  c->rank = a->rank;
  c->size = a->size;
  c->timeout = a->timeout_seconds;
  pv_status st = start(c, a);
  if (st != PV_OK) {
    release(c);
    return st;
  }
  log_msg(PV_LOG_DEBUG, "nccl: rank %d of %d joined on GPU %d (timeout %g s)", c->rank, c->size,
          ctx->device, c->timeout);
  *out = c;
  return PV_OK;
}

pv_status all_reduce(void *p, const pv_comm_args *a) {
  Comm *c = as_comm(p);
  return run(c, "all-reduce", a->count, [&](ncclComm_t n) {
    return ncclAllReduce(a->send_ptr, a->recv_ptr, (size_t)a->count, nccl_type(a->dtype),
                         ncclSum, n, c->stream);
  });
}

pv_status all_gather(void *p, const pv_comm_args *a) {
  Comm *c = as_comm(p);
  return run(c, "all-gather", a->count, [&](ncclComm_t n) {
    return ncclAllGather(a->send_ptr, a->recv_ptr, (size_t)a->count, nccl_type(a->dtype), n,
                         c->stream);
  });
}

pv_status broadcast(void *p, const pv_comm_args *a) {
  Comm *c = as_comm(p);
  return run(c, "broadcast", a->count, [&](ncclComm_t n) {
    return ncclBroadcast(a->send_ptr, a->recv_ptr, (size_t)a->count, nccl_type(a->dtype),
                         a->root, n, c->stream);
  });
}

pv_status comm_abort(void *p) {
  Comm *c = as_comm(p);
  std::lock_guard<std::mutex> lock(c->nccl_mu);
  abort_locked(c, "aborted by pv_comm_abort");
  return PV_OK;
}

// Ends c's NCCL communicator: finalize (it flushes the communicator's
// work, and ranks of one process meet there) within the timeout, then
// destroy; abort instead when finalize fails or does not end in time.
void finish(Comm *c) {
  std::lock_guard<std::mutex> lock(c->nccl_mu);
  if (!c->nccl) return;
  cudaSetDevice(c->ctx->device);
  Poller poll(c->timeout);
  ncclResult_t state = ncclCommFinalize(c->nccl);
  while (state == ncclInProgress && !poll.expired()) {
    poll.pause();
    ncclResult_t r = ncclCommGetAsyncError(c->nccl, &state);
    if (r != ncclSuccess) state = r;
  }
  if (state == ncclSuccess) {
    ncclResult_t r = ncclCommDestroy(c->nccl);
    c->nccl = nullptr;
    if (r != ncclSuccess && r != ncclInProgress)
      log_msg(PV_LOG_WARN, "nccl: rank %d of %d: ncclCommDestroy: %s", c->rank, c->size,
              ncclGetErrorString(r));
    return;
  }
  log_msg(PV_LOG_WARN, "nccl: rank %d of %d: finalize %s; aborting the communicator", c->rank,
          c->size,
          state == ncclInProgress ? "did not complete in the timeout" : ncclGetErrorString(state));
  abort_locked(c, "destroyed");
}

void comm_destroy(void *p) {
  Comm *c = as_comm(p);
  if (!c) return;
  {
    std::lock_guard<std::mutex> op(c->op_mu);  // a collective still waiting ends first
    finish(c);
  }
  release(c);
}

}  // namespace
}  // namespace pvcuda

void pv_cuda_register_comm(pv_backend *table) {
  using namespace pvcuda;
  table->comm_unique_id = unique_id;
  table->comm_init = [](void *ctx, const pv_comm_init_args *a, void **out) {
    return guarded("nccl init", [&] { return comm_init(ctx, a, out); });
  };
  table->comm_all_reduce = [](void *c, const pv_comm_args *a) {
    return guarded("nccl all-reduce", [&] { return all_reduce(c, a); });
  };
  table->comm_all_gather = [](void *c, const pv_comm_args *a) {
    return guarded("nccl all-gather", [&] { return all_gather(c, a); });
  };
  table->comm_broadcast = [](void *c, const pv_comm_args *a) {
    return guarded("nccl broadcast", [&] { return broadcast(c, a); });
  };
  table->comm_abort = [](void *c) { return guarded("nccl abort", [&] { return comm_abort(c); }); };
  table->comm_destroy = [](void *c) {
    try {
      comm_destroy(c);
    } catch (...) {
      log_msg(PV_LOG_ERROR, "nccl: unexpected C++ exception in destroy");
    }
  };
}

package bindings

/*
#include <stdlib.h>
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
)

// This file wraps the collectives of polyview.h (csrc/comm.cc): a
// communicator joins one GPU rank to a group over NCCL. Only the CUDA
// backend built with NCCL has them; on the CPU every call fails with
// StatusUnsupported (CPU ranks meet over the trainer's TCP group).

// CommIDBytes is the length of a communicator id (PV_COMM_ID_BYTES).
const CommIDBytes = C.PV_COMM_ID_BYTES

// Comm is one rank of a group of GPU ranks (pv_comm). Every rank makes the
// same calls in the same order with tensors of the same dtype and size. A
// call returns once its result is in place on the device, or with an
// error; a call that does not finish within the communicator's timeout
// (another rank died or hangs), or that NCCL fails, aborts the
// communicator, and every later call fails too. Abort may be called from
// any goroutine; the other methods are safe for concurrent use but run one
// at a time. Close it when done: the garbage collector does not (a
// destroy may wait for other ranks, up to the timeout).
type Comm struct {
	dev        *Device
	rank, size int

	mu       sync.Mutex
	idle     *sync.Cond // signalled when inflight drops to 0
	ptr      *C.pv_comm // nil once closed
	inflight int        // collectives running now
}

// CommUniqueID makes a new communicator id (pv_comm_unique_id). Rank 0
// calls it and hands the CommIDBytes bytes to the other ranks, which pass
// them to NewComm.
func (d *Device) CommUniqueID() ([]byte, error) {
	id := make([]byte, CommIDBytes)
	err := call("comm unique id", func() C.pv_status {
		return C.pv_comm_unique_id(d.ptr, (*C.uint8_t)(unsafe.Pointer(&id[0])))
	})
	if err != nil {
		return nil, err
	}
	return id, nil
}

// NewComm joins the group named by id as rank (in [0, size)) on the GPU d,
// which no other rank uses (pv_comm_init). It returns once all size ranks
// have joined, or with an error after timeout, which also bounds every
// collective of the communicator (its resolution is the nanosecond).
func (d *Device) NewComm(id []byte, rank, size int, timeout time.Duration) (*Comm, error) {
	op := fmt.Sprintf("comm init (rank %d of %d)", rank, size)
	if len(id) != CommIDBytes {
		return nil, &Error{Op: op, Code: StatusInvalidArgument,
			Msg: fmt.Sprintf("id has %d bytes, want %d (from CommUniqueID)", len(id), CommIDBytes)}
	}
	if timeout <= 0 {
		return nil, &Error{Op: op, Code: StatusInvalidArgument,
			Msg: fmt.Sprintf("timeout is %v, must be > 0", timeout)}
	}
	c := &Comm{dev: d, rank: rank, size: size}
	c.idle = sync.NewCond(&c.mu)
	err := call(op, func() C.pv_status {
		return C.pv_comm_init(d.ptr, (*C.uint8_t)(unsafe.Pointer(&id[0])), C.int(rank), C.int(size),
			C.double(timeout.Seconds()), &c.ptr)
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Rank is this rank's index in the group.
func (c *Comm) Rank() int { return c.rank }

// Size is the number of ranks in the group.
func (c *Comm) Size() int { return c.size }

// Device is the GPU the communicator runs on.
func (c *Comm) Device() *Device { return c.dev }

// AllReduceSum replaces t, on every rank, by the element-wise sum of all
// ranks' t (pv_comm_all_reduce_sum). t is Float32 or BFloat16 on the
// communicator's device.
func (c *Comm) AllReduceSum(t *Tensor) error {
	tp, err := t.handle("t")
	if err != nil {
		return &Error{Op: "all-reduce", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	err = c.run("all-reduce", func(p *C.pv_comm) C.pv_status {
		return C.pv_comm_all_reduce_sum(p, tp)
	})
	runtime.KeepAlive(t)
	return err
}

// AllGather writes every rank's local into out, in rank order: rank r's
// elements at [r n, (r+1) n) of out's row-major data, n = local.Numel()
// (pv_comm_all_gather). out has Size() times local's elements and its
// dtype.
func (c *Comm) AllGather(local, out *Tensor) error {
	lp, err := local.handle("local")
	if err != nil {
		return &Error{Op: "all-gather", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	outp, err := out.handle("out")
	if err != nil {
		return &Error{Op: "all-gather", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	err = c.run("all-gather", func(p *C.pv_comm) C.pv_status {
		return C.pv_comm_all_gather(p, lp, outp)
	})
	runtime.KeepAlive(local)
	runtime.KeepAlive(out)
	return err
}

// Broadcast copies root's t into t on every other rank (pv_comm_broadcast).
func (c *Comm) Broadcast(t *Tensor, root int) error {
	tp, err := t.handle("t")
	if err != nil {
		return &Error{Op: "broadcast", Code: StatusInvalidArgument, Msg: err.Error()}
	}
	err = c.run("broadcast", func(p *C.pv_comm) C.pv_status {
		return C.pv_comm_broadcast(p, tp, C.int(root))
	})
	runtime.KeepAlive(t)
	return err
}

// Abort aborts the communicator (pv_comm_abort): a collective waiting in
// another goroutine returns an error, and so does every later one. It may
// be called from any goroutine, any number of times; after Close it
// returns an error and does nothing.
func (c *Comm) Abort() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ptr == nil {
		return &Error{Op: "comm abort", Code: StatusInvalidArgument, Msg: "communicator is closed"}
	}
	p := c.ptr
	return call("comm abort", func() C.pv_status { return C.pv_comm_abort(p) })
}

// Close waits for the collectives in flight, then frees the communicator
// (pv_comm_destroy, which aborts it when a rank cannot finish cleanly
// within the timeout). Calling it twice is harmless.
func (c *Comm) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.inflight > 0 {
		c.idle.Wait()
	}
	if c.ptr != nil {
		C.pv_comm_destroy(c.ptr)
		c.ptr = nil
	}
}

// run makes one collective call, counted in flight so that Close waits
// for it while Abort, which needs the lock only briefly, can still reach
// the communicator.
func (c *Comm) run(op string, f func(*C.pv_comm) C.pv_status) error {
	c.mu.Lock()
	p := c.ptr
	if p != nil {
		c.inflight++
	}
	c.mu.Unlock()
	if p == nil {
		return &Error{Op: op, Code: StatusInvalidArgument, Msg: "communicator is closed"}
	}
	defer func() {
		c.mu.Lock()
		c.inflight--
		if c.inflight == 0 {
			c.idle.Broadcast()
		}
		c.mu.Unlock()
	}()
	return call(op, func() C.pv_status { return f(p) })
}

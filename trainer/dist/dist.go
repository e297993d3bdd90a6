// Package dist is data-parallel training's communication. The trainer
// calls one interface, Collective; three groups implement it:
//
//   - NewLocalGroup: ranks are goroutines of one process that meet in
//     shared memory (tests, and the reference the others are checked
//     against);
//   - Join: ranks are processes, on one machine or many, that meet over
//     TCP at rank 0 (CPU training, and the rendezvous of GPU ranks);
//   - JoinNCCL: GPU ranks; the NCCL unique id travels over the TCP group
//     and every collective then runs in NCCL on device memory.
//
// FromEnv reads the rank layout that torchrun or SLURM set, and Launch
// starts the local ranks of one machine.
package dist

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/polyview/polyview/bindings"
)

// Collective is one rank's handle on a group of ranks. Every rank must
// make the same calls in the same order. A call fails, rather than
// hanging, when another rank has failed, has gone, or does not arrive
// within the group's timeout; after a failure every later call fails too.
type Collective interface {
	Rank() int
	Size() int
	// AllGather writes every rank's local tensor into out, concatenated in
	// rank order: out has Size() times local's elements, local's dtype.
	AllGather(ctx context.Context, local, out *bindings.Tensor) error
	// AllReduceSum replaces t, on every rank, by the element-wise sum of
	// all ranks' t. Every rank gets the same bits.
	AllReduceSum(ctx context.Context, t *bindings.Tensor) error
	// Broadcast copies root's t into every rank's t.
	Broadcast(ctx context.Context, t *bindings.Tensor, root int) error
	// Fail marks this rank as failed: the other ranks' pending and later
	// calls return an error naming it and err.
	Fail(err error)
	// Traffic reports what this rank has sent so far.
	Traffic() Traffic
	Close() error
}

// Traffic counts the payload bytes one rank has sent.
type Traffic struct {
	Bytes int64 // payload bytes put on the wire (or, for NCCL, what its ring algorithms send)
	Calls int64 // collectives
	// Measured is false where Bytes is computed from the algorithm rather
	// than counted (NCCL), true where every byte was counted (TCP, local).
	Measured bool
}

// ErrTimeout is returned (wrapped) when a rank does not arrive in time.
var ErrTimeout = errors.New("collective timed out")

// opKind names a collective in frames and in errors.
type opKind uint8

const (
	opGather opKind = iota + 1
	opReduce
	opBroadcast
)

func (k opKind) String() string {
	switch k {
	case opGather:
		return "all-gather"
	case opReduce:
		return "all-reduce"
	case opBroadcast:
		return "broadcast"
	}
	return fmt.Sprintf("op %d", uint8(k))
}

// op describes one collective call; every rank's must agree.
type op struct {
	kind  opKind
	dtype bindings.DType
	root  int // broadcast
	bytes int // this rank's payload: equal on every rank
}

func (o op) String() string {
	s := fmt.Sprintf("%v of %d bytes of %v", o.kind, o.bytes, o.dtype)
	if o.kind == opBroadcast {
		s += fmt.Sprintf(" from rank %d", o.root)
	}
	return s
}

// combine computes a collective's result from every rank's payload, in
// rank order: the same bytes whichever rank computes it.
func combine(o op, slots [][]byte) ([]byte, error) {
	switch o.kind {
	case opGather:
		out := make([]byte, 0, len(slots)*o.bytes)
		for _, s := range slots {
			out = append(out, s...)
		}
		return out, nil
	case opBroadcast:
		return append([]byte(nil), slots[o.root]...), nil
	case opReduce:
		return reduceSum(o.dtype, slots)
	}
	return nil, fmt.Errorf("unknown collective %v", o.kind)
}

// reduceSum adds the slots element-wise, rank 0 first.
func reduceSum(dt bindings.DType, slots [][]byte) ([]byte, error) {
	out := append([]byte(nil), slots[0]...)
	le := binary.LittleEndian
	switch dt {
	case bindings.Float32:
		for _, s := range slots[1:] {
			for i := 0; i+4 <= len(out); i += 4 {
				a, b := math.Float32frombits(le.Uint32(out[i:])), math.Float32frombits(le.Uint32(s[i:]))
				le.PutUint32(out[i:], math.Float32bits(a+b))
			}
		}
	case bindings.Float64:
		for _, s := range slots[1:] {
			for i := 0; i+8 <= len(out); i += 8 {
				a, b := math.Float64frombits(le.Uint64(out[i:])), math.Float64frombits(le.Uint64(s[i:]))
				le.PutUint64(out[i:], math.Float64bits(a+b))
			}
		}
	default:
		return nil, fmt.Errorf("all-reduce of %v tensors: want float32 or float64", dt)
	}
	return out, nil
}

// exchanger is what a host group provides: deposit this rank's payload
// of a collective and get the combined result back.
type exchanger interface {
	// exchange returns the result and the bytes this rank sent for it.
	exchange(ctx context.Context, o op, payload []byte) ([]byte, int64, error)
}

// hostOps implements the tensor collectives of a group whose data moves
// through host memory (the local and TCP groups).
type hostOps struct {
	ex         exchanger
	rank, size int
	traffic    Traffic
}

func (h *hostOps) Rank() int { return h.rank }
func (h *hostOps) Size() int { return h.size }

func (h *hostOps) AllGather(ctx context.Context, local, out *bindings.Tensor) error {
	if out.DType() != local.DType() || out.Numel() != h.size*local.Numel() {
		return fmt.Errorf("all-gather: out is %v %v, want %v with %d x %d elements",
			out.DType(), out.Shape(), local.DType(), h.size, local.Numel())
	}
	b := make([]byte, local.Bytes())
	if err := local.ReadBytes(b); err != nil {
		return err
	}
	res, err := h.run(ctx, op{kind: opGather, dtype: local.DType(), bytes: len(b)}, b)
	if err != nil {
		return err
	}
	return out.WriteBytes(res)
}

func (h *hostOps) AllReduceSum(ctx context.Context, t *bindings.Tensor) error {
	b := make([]byte, t.Bytes())
	if err := t.ReadBytes(b); err != nil {
		return err
	}
	res, err := h.run(ctx, op{kind: opReduce, dtype: t.DType(), bytes: len(b)}, b)
	if err != nil {
		return err
	}
	return t.WriteBytes(res)
}

func (h *hostOps) Broadcast(ctx context.Context, t *bindings.Tensor, root int) error {
	if root < 0 || root >= h.size {
		return fmt.Errorf("broadcast from rank %d of %d", root, h.size)
	}
	// Only the root's bytes travel.
	var b []byte
	if h.rank == root {
		b = make([]byte, t.Bytes())
		if err := t.ReadBytes(b); err != nil {
			return err
		}
	}
	res, err := h.run(ctx, op{kind: opBroadcast, dtype: t.DType(), root: root, bytes: t.Bytes()}, b)
	if err != nil {
		return err
	}
	return t.WriteBytes(res)
}

func (h *hostOps) run(ctx context.Context, o op, payload []byte) ([]byte, error) {
	res, sent, err := h.ex.exchange(ctx, o, payload)
	h.traffic.Calls++
	h.traffic.Bytes += sent
	if err == nil && o.kind != opGather && len(res) != o.bytes {
		err = fmt.Errorf("%v: %d bytes came back", o, len(res))
	}
	return res, err
}

// Traffic reports the bytes counted by the transport.
func (h *hostOps) Traffic() Traffic { t := h.traffic; t.Measured = true; return t }

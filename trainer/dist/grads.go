package dist

import (
	"context"
	"fmt"

	"github.com/polyview/polyview/bindings"
)

// DefaultBucketBytes is the size of the gradient buckets: large enough
// that each all-reduce is bandwidth-bound, small enough that the first
// buckets are ready to send while the backward pass goes on.
const DefaultBucketBytes = 16 << 20

// GradReducer sums parameter gradients over the ranks in buckets. Small
// gradients are packed into one flat tensor per bucket (one collective
// instead of one per tensor); a gradient of half a bucket or more is
// reduced in place. Buckets follow the order given, which should be the
// order in which the backward pass finishes them (last layer first).
type GradReducer struct {
	c       Collective
	buckets []bucket
	owner   map[*bindings.Tensor]int // gradient -> bucket

	// An overlapped pass (Start, Ready, Wait).
	serial  *Serial
	ctx     context.Context
	missing []int          // per bucket, gradients not yet ready
	next    int            // first bucket not yet queued
	pending []<-chan error // queued buckets' results
}

type bucket struct {
	flat  *bindings.Tensor   // nil: one tensor reduced in place
	grads []*bindings.Tensor // in flat order
}

// NewGradReducer plans the buckets for grads, which keep their identity
// for the reducer's life (the trainer's parameter gradients).
func NewGradReducer(c Collective, grads []*bindings.Tensor, bucketBytes int) (*GradReducer, error) {
	if bucketBytes <= 0 {
		bucketBytes = DefaultBucketBytes
	}
	r := &GradReducer{c: c}
	var cur []*bindings.Tensor
	curBytes := 0
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		b := bucket{grads: cur}
		if len(cur) > 1 {
			numel := 0
			for _, t := range cur {
				numel += t.Numel()
			}
			flat, err := cur[0].Device().NewTensor(cur[0].DType(), numel)
			if err != nil {
				return err
			}
			b.flat = flat
		}
		r.buckets = append(r.buckets, b)
		cur, curBytes = nil, 0
		return nil
	}
	for _, g := range grads {
		if g.Bytes()*2 >= bucketBytes {
			r.buckets = append(r.buckets, bucket{grads: []*bindings.Tensor{g}})
			continue
		}
		if len(cur) > 0 && (g.DType() != cur[0].DType() || curBytes+g.Bytes() > bucketBytes) {
			if err := flush(); err != nil {
				r.Close()
				return nil, err
			}
		}
		cur = append(cur, g)
		curBytes += g.Bytes()
	}
	if err := flush(); err != nil {
		r.Close()
		return nil, err
	}
	r.owner = map[*bindings.Tensor]int{}
	for i, b := range r.buckets {
		for _, g := range b.grads {
			r.owner[g] = i
		}
	}
	return r, nil
}

// Start begins an overlapped reduction: as the backward pass reports
// gradients Ready, each bucket whose gradients are all written is
// reduced on serial, in bucket order, while the pass goes on. Wait ends
// it.
func (r *GradReducer) Start(ctx context.Context, serial *Serial) {
	r.serial, r.ctx, r.next, r.pending = serial, ctx, 0, r.pending[:0]
	r.missing = r.missing[:0]
	for _, b := range r.buckets {
		r.missing = append(r.missing, len(b.grads))
	}
}

// Ready reports that g's gradient is final for this step. Gradients the
// reducer does not hold are ignored.
func (r *GradReducer) Ready(g *bindings.Tensor) {
	i, ok := r.owner[g]
	if !ok || r.serial == nil || r.missing[i] == 0 {
		return
	}
	r.missing[i]--
	r.queueReady()
}

// queueReady queues the buckets, in order, up to the first incomplete one.
func (r *GradReducer) queueReady() {
	for r.next < len(r.buckets) && r.missing[r.next] == 0 {
		b := r.buckets[r.next]
		r.pending = append(r.pending, r.serial.Go(func() error { return r.reduce(r.ctx, b) }))
		r.next++
	}
}

// Wait queues whatever is left (a gradient never reported is taken as
// final now) and waits for every bucket; it returns the first error.
func (r *GradReducer) Wait() error {
	if r.serial == nil {
		return nil
	}
	clear(r.missing)
	r.queueReady()
	var first error
	for i, res := range r.pending {
		if err := <-res; err != nil && first == nil {
			first = fmt.Errorf("gradient bucket %d of %d: %w", i+1, len(r.buckets), err)
		}
	}
	r.serial = nil
	return first
}

// Buckets is the number of collectives one Reduce makes.
func (r *GradReducer) Buckets() int { return len(r.buckets) }

// Reduce replaces every gradient by its sum over the ranks.
func (r *GradReducer) Reduce(ctx context.Context) error {
	if r.c.Size() == 1 {
		return nil
	}
	for i, b := range r.buckets {
		if err := r.reduce(ctx, b); err != nil {
			return fmt.Errorf("gradient bucket %d of %d: %w", i+1, len(r.buckets), err)
		}
	}
	return nil
}

func (r *GradReducer) reduce(ctx context.Context, b bucket) error {
	if b.flat == nil {
		return r.c.AllReduceSum(ctx, b.grads[0])
	}
	off := 0
	for _, g := range b.grads {
		if err := b.flat.CopyFrom(off, g, 0, g.Numel()); err != nil {
			return err
		}
		off += g.Numel()
	}
	if err := r.c.AllReduceSum(ctx, b.flat); err != nil {
		return err
	}
	off = 0
	for _, g := range b.grads {
		if err := g.CopyFrom(0, b.flat, off, g.Numel()); err != nil {
			return err
		}
		off += g.Numel()
	}
	return nil
}

// Close frees the bucket tensors.
func (r *GradReducer) Close() {
	for _, b := range r.buckets {
		if b.flat != nil {
			b.flat.Close()
		}
	}
	r.buckets = nil
}

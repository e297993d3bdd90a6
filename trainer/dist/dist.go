// Package dist is data-parallel training's communication: one Collective
// interface that the trainer calls, an in-process implementation (ranks
// are goroutines; used by tests and single-machine CPU runs), and the
// poly-view loss with global negatives built on it.
//
// What is here is the CPU-testable core of issue 8. Not yet written: the
// NCCL implementation (GPU ranks), the TCP exchange of the NCCL id, the
// launcher, synchronised batch norm and the trainer's data-parallel loop.
package dist

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Collective is one rank's view of a group of ranks. Every rank must make
// the same calls in the same order. A call fails, rather than hanging,
// when another rank has failed or does not arrive within the group's
// timeout.
type Collective interface {
	Rank() int
	Size() int
	// AllGather returns the ranks' local slices concatenated in rank
	// order. Slices may differ in length.
	AllGather(ctx context.Context, local []float32) ([]float32, error)
	// AllReduceSum replaces buf, on every rank, by the element-wise sum of
	// all ranks' bufs (same length everywhere), summed in rank order so
	// that every rank gets bit-identical results.
	AllReduceSum(ctx context.Context, buf []float32) error
	// Fail marks this rank as failed: every pending and later call of
	// every rank returns an error naming it.
	Fail(err error)
}

// ErrTimeout is returned (wrapped) when a rank does not arrive in time.
var ErrTimeout = errors.New("collective timed out")

// NewLocalGroup returns size in-process ranks that meet through shared
// memory; a call waits at most timeout for the others.
func NewLocalGroup(size int, timeout time.Duration) ([]Collective, error) {
	if size < 1 {
		return nil, fmt.Errorf("local group of %d ranks", size)
	}
	g := &localGroup{size: size, timeout: timeout, slots: make([][]float32, size)}
	g.cond = sync.NewCond(&g.mu)
	out := make([]Collective, size)
	for r := range out {
		out[r] = &localRank{g: g, rank: r}
	}
	return out, nil
}

// localGroup runs one collective at a time: ranks deposit their slices,
// the last to arrive publishes the result, and each rank leaves with it.
type localGroup struct {
	mu      sync.Mutex
	cond    *sync.Cond
	size    int
	timeout time.Duration
	round   uint64      // collectives completed
	arrived int         // ranks deposited in the current round
	slots   [][]float32 // deposits of the current round, by rank
	result  []float32   // the last completed round's result
	left    int         // ranks still to take the last result
	failed  error
}

type localRank struct {
	g    *localGroup
	rank int
}

func (r *localRank) Rank() int { return r.rank }
func (r *localRank) Size() int { return r.g.size }

func (r *localRank) Fail(err error) {
	g := r.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failed == nil {
		g.failed = fmt.Errorf("rank %d failed: %w", r.rank, err)
	}
	g.cond.Broadcast()
}

func (r *localRank) AllGather(ctx context.Context, local []float32) ([]float32, error) {
	return r.g.collect(ctx, r.rank, local, func(slots [][]float32) ([]float32, error) {
		var out []float32
		for _, s := range slots {
			out = append(out, s...)
		}
		return out, nil
	})
}

func (r *localRank) AllReduceSum(ctx context.Context, buf []float32) error {
	res, err := r.g.collect(ctx, r.rank, buf, func(slots [][]float32) ([]float32, error) {
		sum := make([]float32, len(slots[0]))
		for k, s := range slots {
			if len(s) != len(sum) {
				return nil, fmt.Errorf("all-reduce: rank %d has %d values, rank 0 %d", k,
					len(s), len(sum))
			}
			for i, v := range s {
				sum[i] += v
			}
		}
		return sum, nil
	})
	if err == nil {
		copy(buf, res)
	}
	return err
}

// collect deposits local, waits for every rank, and returns combine's
// result of the round (computed once, by the last rank to arrive).
func (g *localGroup) collect(ctx context.Context, rank int, local []float32,
	combine func([][]float32) ([]float32, error)) ([]float32, error) {
	deadline := time.Now().Add(g.timeout)
	stop := context.AfterFunc(ctx, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer stop()
	timer := time.AfterFunc(g.timeout, func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	})
	defer timer.Stop()

	g.mu.Lock()
	defer g.mu.Unlock()
	// Wait until the previous round's result has been taken by everyone.
	for g.left > 0 && g.failed == nil {
		if err := g.waitErr(ctx, deadline, rank); err != nil {
			return nil, err
		}
		g.cond.Wait()
	}
	if g.failed != nil {
		return nil, g.failed
	}
	round := g.round
	g.slots[rank] = append([]float32(nil), local...)
	g.arrived++
	if g.arrived == g.size {
		res, err := combine(g.slots)
		if err != nil {
			g.failed = err
			g.cond.Broadcast()
			return nil, err
		}
		g.result, g.arrived, g.left = res, 0, g.size
		g.round++
		g.cond.Broadcast()
	}
	for g.round == round && g.failed == nil {
		if err := g.waitErr(ctx, deadline, rank); err != nil {
			// Leave the round: the others will see the failure.
			g.failed = err
			g.cond.Broadcast()
			return nil, err
		}
		g.cond.Wait()
	}
	if g.failed != nil && g.round == round {
		return nil, g.failed
	}
	out := append([]float32(nil), g.result...)
	g.left--
	if g.left == 0 {
		g.cond.Broadcast()
	}
	return out, nil
}

func (g *localGroup) waitErr(ctx context.Context, deadline time.Time, rank int) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rank %d: %w", rank, err)
	}
	if time.Now().After(deadline) {
		return fmt.Errorf("rank %d waited %v for the other ranks: %w", rank, g.timeout,
			ErrTimeout)
	}
	return nil
}

package dist

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// NewLocalGroup returns size ranks of one process that meet in shared
// memory; a call waits at most timeout for the others. Rank r is out[r];
// each must be used by one goroutine at a time.
func NewLocalGroup(size int, timeout time.Duration) ([]Collective, error) {
	if size < 1 {
		return nil, fmt.Errorf("local group of %d ranks", size)
	}
	g := &localGroup{size: size, timeout: timeout, slots: make([][]byte, size),
		ops: make([]op, size), in: make([]bool, size)}
	g.cond = sync.NewCond(&g.mu)
	out := make([]Collective, size)
	for r := range out {
		lr := &localRank{g: g}
		lr.hostOps = hostOps{ex: lr, rank: r, size: size}
		out[r] = lr
	}
	return out, nil
}

// localGroup runs one collective at a time: ranks deposit their payloads,
// the last to arrive checks that the calls agree and publishes the
// result, and each rank leaves with it.
type localGroup struct {
	mu      sync.Mutex
	cond    *sync.Cond
	size    int
	timeout time.Duration
	round   uint64   // collectives completed
	arrived int      // ranks deposited in the current round
	slots   [][]byte // deposits of the current round, by rank
	ops     []op     // the calls of the current round, by rank
	in      []bool   // which ranks have deposited in the current round
	result  []byte   // the last completed round's result
	left    int      // ranks still to take the last result
	failed  error
}

type localRank struct {
	hostOps
	g *localGroup
}

func (r *localRank) Close() error { return nil }

func (r *localRank) Fail(err error) {
	g := r.g
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failed == nil {
		g.failed = fmt.Errorf("rank %d failed: %w", r.rank, err)
	}
	g.cond.Broadcast()
}

// exchange deposits payload, waits for every rank, and returns the
// round's result (computed once, by the last rank to arrive).
func (r *localRank) exchange(ctx context.Context, o op, payload []byte) ([]byte, int64, error) {
	g, rank := r.g, r.rank
	deadline := time.Now().Add(g.timeout)
	wake := func() {
		g.mu.Lock()
		g.cond.Broadcast()
		g.mu.Unlock()
	}
	defer context.AfterFunc(ctx, wake)()
	timer := time.AfterFunc(g.timeout, wake)
	defer timer.Stop()

	g.mu.Lock()
	defer g.mu.Unlock()
	// Wait until the previous round's result has been taken by everyone.
	for g.left > 0 && g.failed == nil {
		if err := g.waitErr(ctx, deadline, rank, o); err != nil {
			return nil, 0, err
		}
		g.cond.Wait()
	}
	if g.failed != nil {
		return nil, 0, g.failed
	}
	round := g.round
	g.slots[rank], g.ops[rank], g.in[rank] = payload, o, true
	g.arrived++
	if g.arrived == g.size {
		res, err := g.finish()
		if err != nil {
			g.failed = err
			g.cond.Broadcast()
			return nil, 0, err
		}
		g.result, g.arrived, g.left = res, 0, g.size
		clear(g.in)
		g.round++
		g.cond.Broadcast()
	}
	for g.round == round && g.failed == nil {
		if err := g.waitErr(ctx, deadline, rank, o); err != nil {
			// Leave the round: the others see the failure.
			g.failed = err
			g.cond.Broadcast()
			return nil, 0, err
		}
		g.cond.Wait()
	}
	if g.failed != nil && g.round == round {
		return nil, 0, g.failed
	}
	out := append([]byte(nil), g.result...)
	g.left--
	if g.left == 0 {
		g.cond.Broadcast()
	}
	return out, int64(len(payload)), nil
}

// finish checks that every rank made the same call and combines.
func (g *localGroup) finish() ([]byte, error) {
	for k, o := range g.ops {
		if o != g.ops[0] {
			return nil, fmt.Errorf("collective #%d: rank 0 called %v, rank %d %v: the "+
				"ranks diverged", g.round, g.ops[0], k, o)
		}
	}
	return combine(g.ops[0], g.slots)
}

func (g *localGroup) waitErr(ctx context.Context, deadline time.Time, rank int, o op) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rank %d: %w", rank, err)
	}
	if time.Now().After(deadline) {
		var late []int
		for k, in := range g.in {
			if !in {
				late = append(late, k)
			}
		}
		who := fmt.Sprintf("rank %d waited %v in %v #%d for the other ranks", rank,
			g.timeout, o.kind, g.round)
		if g.arrived > 0 && len(late) == 1 {
			who = fmt.Sprintf("rank %d did not complete %v #%d within %v (it hangs, or is "+
				"far behind)", late[0], o.kind, g.round, g.timeout)
		} else if g.arrived > 0 {
			who = fmt.Sprintf("ranks %v did not complete %v #%d within %v", late, o.kind,
				g.round, g.timeout)
		}
		return fmt.Errorf("%s: %w", who, ErrTimeout)
	}
	return nil
}

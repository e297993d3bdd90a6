package model

import (
	"fmt"

	"github.com/polyview/polyview/bindings"
)

// SyncBN makes batch normalisation use the statistics of every
// data-parallel rank's batch, so that W ranks of n images normalise as
// one rank of W n images would. Between the backend's local passes,
// Reduce sums a small per-channel tensor over the ranks in place.
type SyncBN struct {
	Reduce func(*bindings.Tensor) error
	Ranks  int // every rank holds the same number of rows
}

// SetSyncBN makes every BN layer synchronised (nil: per-rank statistics).
// Evaluation uses the running statistics and never synchronises.
func (m *Model) SetSyncBN(s *SyncBN) {
	visit := func(l Layer) {
		if bn, ok := l.(*BatchNorm); ok {
			bn.sync = s
		}
	}
	walk(m.Encoder, visit)
	if m.Head != nil {
		walk(m.Head, visit)
	}
}

// SetGradHook makes Backward call f with each leaf layer's parameters
// as soon as their gradients are written, last layer first (nil: no
// calls): the trainer starts reducing gradients while the backward pass
// goes on.
func (m *Model) SetGradHook(f func([]*Param)) {
	visit := func(l Layer) {
		if s, ok := l.(*Sequential); ok {
			s.onGrads = f
		}
	}
	walk(m.Encoder, visit)
	if m.Head != nil {
		walk(m.Head, visit)
	}
}

// walk calls f on l and every layer inside it.
func walk(l Layer, f func(Layer)) {
	f(l)
	switch v := l.(type) {
	case *Sequential:
		for _, c := range v.Layers {
			walk(c, f)
		}
	case *Residual:
		walk(v.Branch, f)
		if v.Shortcut != nil {
			walk(v.Shortcut, f)
		}
	}
}

// forwardSync: local shifted sums, all ranks' sum, normalise with it.
func (b *BatchNorm) forwardSync(x *bindings.Tensor) error {
	c := b.Gamma.Value.Numel()
	if err := ensure(b.dev, b.dt, &b.stats, 2, c); err != nil {
		return err
	}
	if err := bindings.BatchNormStats(x, b.RunningMean.Value, b.stats); err != nil {
		return err
	}
	if err := b.sync.Reduce(b.stats); err != nil {
		return fmt.Errorf("synchronising statistics: %w", err)
	}
	count := x.Numel() / c * b.sync.Ranks
	return b.op.ForwardStats(x, b.Gamma.Value, b.Beta.Value, b.stats, count,
		b.RunningMean.Value, b.RunningVar.Value, b.saveMean, b.saveInvStd, b.y)
}

// backwardSync: the local sums of dy and dy xhat are this rank's scale
// and shift gradients (the trainer sums those over the ranks with the
// other parameters); their sum over all ranks gives dx.
func (b *BatchNorm) backwardSync(dy *bindings.Tensor) error {
	c := b.Gamma.Value.Numel()
	err := bindings.BatchNormBackwardStats(b.x, b.saveMean, b.saveInvStd, dy, b.stats)
	if err != nil {
		return err
	}
	if err := b.Beta.Grad.CopyFrom(0, b.stats, 0, c); err != nil {
		return err
	}
	if err := b.Gamma.Grad.CopyFrom(0, b.stats, c, c); err != nil {
		return err
	}
	if err := b.sync.Reduce(b.stats); err != nil {
		return fmt.Errorf("synchronising gradient sums: %w", err)
	}
	count := b.x.Numel() / c * b.sync.Ranks
	return b.op.BackwardInput(b.x, b.Gamma.Value, b.saveMean, b.saveInvStd, dy, b.stats,
		count, b.dx)
}

package dist

import (
	"context"
	"fmt"

	"github.com/polyview/polyview/bindings"
)

// GlobalLoss evaluates loss with global negatives: each rank holds the
// projections of its own images, h [n_r, M, d] (host float32, sample-
// major), and every rank's anchors are contrasted with every rank's
// views. The embeddings are all-gathered, each rank evaluates the loss of
// the global batch, and keeps the rows of dL/dh it owns, so those rows
// carry the contributions of every rank's anchors. It returns the global
// loss (the same on every rank) and this rank's dL/dh [n_r, M, d].
//
// Every rank computes the whole loss; that costs the loss's O(R^2 d) on
// each rank instead of a 1/W share, and trades it for a single
// all-gather and no reduction of gradients. Splitting the anchors across
// ranks and reducing dZ is the known next step at large W.
func GlobalLoss(ctx context.Context, c Collective, dev *bindings.Device, loss bindings.Loss,
	h []float32, n, m, d int) (float64, []float32, error) {
	if len(h) != n*m*d {
		return 0, nil, fmt.Errorf("global loss: %d values for [%d, %d, %d]", len(h), n, m, d)
	}
	// Ranks may hold different numbers of images: gather the counts first.
	counts, err := c.AllGather(ctx, []float32{float32(n)})
	if err != nil {
		return 0, nil, err
	}
	first, total := 0, 0
	for r, v := range counts {
		if r < c.Rank() {
			first += int(v)
		}
		total += int(v)
	}
	all, err := c.AllGather(ctx, h)
	if err != nil {
		return 0, nil, err
	}
	ht, err := dev.FromFloat32(all, total, m, d)
	if err != nil {
		return 0, nil, err
	}
	defer ht.Close()
	gt, err := dev.NewTensor(bindings.Float32, total, m, d)
	if err != nil {
		return 0, nil, err
	}
	defer gt.Close()
	value, err := loss.ForwardBackward(ht, gt)
	if err != nil {
		return 0, nil, fmt.Errorf("rank %d: %w", c.Rank(), err)
	}
	grad, err := gt.Float32()
	if err != nil {
		return 0, nil, err
	}
	return value, grad[first*m*d : (first+n)*m*d], nil
}

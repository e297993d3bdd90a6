package dist

import (
	"context"
	"fmt"
	"slices"

	"github.com/polyview/polyview/bindings"
)

// GlobalLoss evaluates a poly-view loss with global negatives. Each rank
// holds the projections of its own n images, h [n, M, d]; the ranks
// all-gather them into the global batch [W n, M, d] (rank r's images
// are rows r n ... r n + n - 1, the rows a one-rank run with the
// concatenated batch would have), every rank evaluates the loss of the
// global batch, and keeps the rows of dL/dh it owns. Those rows therefore
// carry the contributions of every rank's anchors, and summing parameter
// gradients over the ranks gives exactly the one-rank gradient.
//
// Every rank computes the whole loss: O((W n M)^2 d) work each, traded
// for one all-gather and no second collective. The loss is a small part
// of a step until W n M reaches the tens of thousands; splitting the
// anchors across ranks and reducing dZ is the step beyond that.
type GlobalLoss struct {
	Loss bindings.Loss
	C    Collective

	all, grad *bindings.Tensor // the gathered batch and its gradient, reused
}

// ForwardBackward returns the global loss (the same on every rank) and
// writes this rank's rows of dL/dh into dh (h's shape and dtype). Every
// rank must pass the same n.
func (g *GlobalLoss) ForwardBackward(ctx context.Context, h, dh *bindings.Tensor) (float64, error) {
	shape := h.Shape()
	if len(shape) != 3 || !slices.Equal(dh.Shape(), shape) {
		return 0, fmt.Errorf("global loss: h %v and dh %v: want equal [n, M, d]", shape,
			dh.Shape())
	}
	w := g.C.Size()
	if w == 1 {
		return g.Loss.ForwardBackward(h, dh)
	}
	gshape := []int{w * shape[0], shape[1], shape[2]}
	if err := ensure(h.Device(), h.DType(), &g.all, gshape); err != nil {
		return 0, err
	}
	if err := ensure(h.Device(), dh.DType(), &g.grad, gshape); err != nil {
		return 0, err
	}
	if err := g.C.AllGather(ctx, h, g.all); err != nil {
		return 0, fmt.Errorf("global loss: gathering embeddings: %w", err)
	}
	value, err := g.Loss.ForwardBackward(g.all, g.grad)
	if err != nil {
		return 0, fmt.Errorf("global loss on rank %d: %w", g.C.Rank(), err)
	}
	n := h.Numel()
	return value, dh.CopyFrom(0, g.grad, g.C.Rank()*n, n)
}

// Close frees the buffers.
func (g *GlobalLoss) Close() {
	for _, t := range []*bindings.Tensor{g.all, g.grad} {
		if t != nil {
			t.Close()
		}
	}
	g.all, g.grad = nil, nil
}

// ensure makes *t a tensor of the given dtype and shape on dev, reusing
// it when it already is one.
func ensure(dev *bindings.Device, dt bindings.DType, t **bindings.Tensor, shape []int) error {
	if *t != nil && (*t).DType() == dt && slices.Equal((*t).Shape(), shape) {
		return nil
	}
	if *t != nil {
		(*t).Close()
	}
	var err error
	*t, err = dev.NewTensor(dt, shape...)
	return err
}

package trainer

import (
	"fmt"
	"math"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
)

// multiSizeStep is trainStep for recipes of several output sizes (multi-
// crop's global and local views). The encoder runs once per size group;
// the head outputs are gathered into one [N, M, d] for the loss, whose
// gradient is split back per group. The layers keep the activations of
// their last forward only, so the groups are back-propagated last first
// and every earlier group is forwarded again before its backward (the
// cost of one more forward of all but the last group; BN running
// statistics see those groups twice). Parameter gradients are summed over
// the groups.
func (r *run) multiSizeStep(b *datasets.Batch) (float64, error) {
	n, m, d := len(b.Samples), r.cfg.M, r.model.OutDim
	groups := bindings.Groups(r.recipes)
	views := make([]*bindings.Tensor, len(groups))
	defer func() {
		for _, v := range views {
			if v != nil {
				v.Close()
			}
		}
	}()
	h := make([]float32, n*m*d)
	for gi, g := range groups {
		first, count := g[0], g[1]
		v, err := augmentSamples(r.dev, b.Samples, r.recipes[first:first+count], first,
			r.cfg.Seed, uint64(b.Epoch))
		if err != nil {
			return 0, fmt.Errorf("views %d..%d: %w", first, first+count-1, err)
		}
		views[gi] = v
		if err := r.forwardGroup(v, count, first, h, n, m, d); err != nil {
			return 0, err
		}
	}

	ht, err := r.dev.FromFloat32(h, n, m, d)
	if err != nil {
		return 0, err
	}
	defer ht.Close()
	dh, err := r.dev.NewTensor(bindings.Float32, n, m, d)
	if err != nil {
		return 0, err
	}
	defer dh.Close()
	loss, err := r.lossStep(ht, dh)
	if err != nil || math.IsNaN(loss) || math.IsInf(loss, 0) {
		return loss, err
	}
	dhHost, err := dh.Float32()
	if err != nil {
		return 0, err
	}

	params := r.model.Params()
	var acc []*bindings.Tensor // the summed gradients, once the first group is done
	for gi := len(groups) - 1; gi >= 0; gi-- {
		first, count := groups[gi][0], groups[gi][1]
		if gi != len(groups)-1 {
			if err := r.forwardGroup(views[gi], count, first, nil, n, m, d); err != nil {
				return 0, err
			}
		}
		if err := r.backwardGroup(dhHost, first, count, n, m, d); err != nil {
			return 0, err
		}
		if acc == nil {
			// Keep this group's gradients; the next backward writes into spares.
			if err := r.ensureSpareGrads(); err != nil {
				return 0, err
			}
			acc = make([]*bindings.Tensor, len(params))
			for i, p := range params {
				acc[i], p.Grad, r.spareGrads[i] = p.Grad, r.spareGrads[i], nil
			}
			continue
		}
		for i, p := range params {
			if err := bindings.Add(acc[i], p.Grad, acc[i]); err != nil {
				return 0, err
			}
		}
	}
	for i, p := range params {
		r.spareGrads[i], p.Grad = p.Grad, acc[i]
	}
	// p.Grad is again the tensor it was before the step (the reducer's).
	if err := r.reduceGrads(); err != nil {
		return 0, err
	}
	return loss, r.opt.Step(r.sched.LR(int(r.step)))
}

// forwardGroup runs views [n*count, H, W, 3] through the model and, when h
// is not nil, copies the head outputs into views first.. of h [n][m][d].
func (r *run) forwardGroup(views *bindings.Tensor, count, first int, h []float32,
	n, m, d int) error {
	out, err := r.model.ForwardViews(views, count)
	if err != nil || h == nil {
		return err
	}
	z, err := out.Float32()
	if err != nil {
		return err
	}
	for i := 0; i < n; i++ {
		copy(h[(i*m+first)*d:(i*m+first+count)*d], z[i*count*d:(i+1)*count*d])
	}
	return nil
}

// backwardGroup back-propagates the rows of views first.. of dh [n][m][d].
func (r *run) backwardGroup(dh []float32, first, count, n, m, d int) error {
	part := make([]float32, n*count*d)
	for i := 0; i < n; i++ {
		copy(part[i*count*d:(i+1)*count*d], dh[(i*m+first)*d:(i*m+first+count)*d])
	}
	t, err := r.dev.FromFloat32(part, n, count, d)
	if err != nil {
		return err
	}
	defer t.Close()
	return r.model.Backward(t)
}

// ensureSpareGrads allocates one spare gradient tensor per parameter.
func (r *run) ensureSpareGrads() error {
	params := r.model.Params()
	if len(r.spareGrads) == len(params) && r.spareGrads[0] != nil {
		return nil
	}
	r.spareGrads = make([]*bindings.Tensor, len(params))
	for i, p := range params {
		t, err := r.dev.NewTensor(p.Grad.DType(), p.Grad.Shape()...)
		if err != nil {
			return err
		}
		r.spareGrads[i] = t
	}
	return nil
}

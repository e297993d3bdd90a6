package trainer

import (
	"fmt"
	"math"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/datasets"
	"github.com/polyview/polyview/trainer/model"
)

// multiSizeStep is trainStep for recipes of several output sizes (multi-
// crop's global and local views). The encoder runs once per size group:
// the last group through the model, every other group through a replica
// of it (same weights and running statistics, its own activations and
// gradients), so each group keeps its activations for the backward pass
// and BN's running statistics see every view once. The head outputs are
// gathered into one [N, M, d] for the loss, whose gradient is split back
// per group; the replicas' parameter gradients are then added to the
// model's.
func (r *run) multiSizeStep(b *datasets.Batch) (float64, error) {
	n, m, d := len(b.Samples), r.cfg.M, r.model.OutDim
	groups := bindings.Groups(r.recipes)
	if err := r.ensureReplicas(len(groups) - 1); err != nil {
		return 0, err
	}
	models := append(append([]*model.Model(nil), r.replicas...), r.model)
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
			r.cfg.Seed, uint64(b.Epoch), r.model.ActDType())
		if err != nil {
			return 0, fmt.Errorf("views %d..%d: %w", first, first+count-1, err)
		}
		views[gi] = v
		if err := forwardGroup(models[gi], v, count, first, h, n, m, d); err != nil {
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
	for gi, g := range groups {
		if err := r.backwardGroup(models[gi], dhHost, g[0], g[1], n, m, d); err != nil {
			return 0, err
		}
	}
	params := r.model.Params()
	for _, rep := range r.replicas {
		for i, p := range rep.Params() {
			if err := bindings.Add(params[i].Grad, p.Grad, params[i].Grad); err != nil {
				return 0, err
			}
		}
	}
	if err := r.reduceGrads(); err != nil {
		return 0, err
	}
	return loss, r.opt.Step(r.sched.LR(int(r.step)))
}

// forwardGroup runs views [n*count, H, W, 3] through mm and copies the
// head outputs into views first.. of h [n][m][d].
func forwardGroup(mm *model.Model, views *bindings.Tensor, count, first int, h []float32,
	n, m, d int) error {
	out, err := mm.ForwardViews(views, count)
	if err != nil {
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

// backwardGroup back-propagates through mm the rows of views first.. of
// dh [n][m][d].
func (r *run) backwardGroup(mm *model.Model, dh []float32, first, count, n, m, d int) error {
	part := make([]float32, n*count*d)
	for i := 0; i < n; i++ {
		copy(part[i*count*d:(i+1)*count*d], dh[(i*m+first)*d:(i*m+first+count)*d])
	}
	from := r.dev.FromFloat32
	if mm.ActDType() == bindings.BFloat16 {
		from = r.dev.FromBFloat16 // the head's output gradient, in its dtype
	}
	t, err := from(part, n, count, d)
	if err != nil {
		return err
	}
	defer t.Close()
	return mm.Backward(t)
}

// ensureReplicas makes k replicas of the model, once.
func (r *run) ensureReplicas(k int) error {
	for len(r.replicas) < k {
		rep, err := r.model.Replica()
		if err != nil {
			return err
		}
		r.replicas = append(r.replicas, rep)
	}
	return nil
}

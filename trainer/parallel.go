package trainer

import (
	"context"
	"fmt"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/dist"
	"github.com/polyview/polyview/trainer/model"
)

// Data-parallel training. Every rank runs the same loop on its share of
// each global batch (N / W images; the loader hands rank r the
// positions r, r + W, ... of the epoch's order, so the ranks' shares of
// batch b together are exactly the one-rank batch b, and views are keyed
// by image index, so they are the same views too). Per step:
//
//  1. the ranks agree to go on (a stop request or a short batch on any
//     rank stops or skips the step on all);
//  2. forward; synchronised BN sums per-channel statistics over ranks;
//  3. the projections are all-gathered and every rank evaluates the
//     loss of the global batch, keeping the gradient rows it owns
//     (dist.GlobalLoss);
//  4. backward, then the parameter gradients are summed over the ranks
//     in buckets (dist.GradReducer);
//  5. every rank takes the same optimizer step on the same gradients, so
//     the replicas stay identical without sending parameters.
//
// Rank 0 alone writes the output folder and runs the kNN monitor.
// collectiveCtx is the context of every collective: a signal must not
// cut one short on one rank only; the ranks agree to stop at a step
// boundary instead, and each collective has the group's timeout.
var collectiveCtx = context.Background()

// rank0 reports whether this process writes the run's outputs.
func (r *run) rank0() bool { return r.cfg.Dist == nil || r.cfg.Dist.Rank() == 0 }

// world is the number of data-parallel ranks.
func (r *run) world() int { return r.cfg.worldSize() }

// rank is this process's data-parallel rank.
func (r *run) rank() int {
	if r.cfg.Dist == nil {
		return 0
	}
	return r.cfg.Dist.Rank()
}

// localN is the number of images this rank takes from each global batch.
func (r *run) localN() int { return r.cfg.N / r.world() }

// setupDist readies the collectives once device, model and optimizer
// exist, and makes every rank start from rank 0's state.
func (r *run) setupDist() error {
	if r.cfg.Dist == nil || r.cfg.Dist.Size() == 1 {
		return nil
	}
	r.group = r.cfg.Dist
	if tcp, ok := r.group.(*dist.TCPGroup); ok && r.dev.IsCUDA() {
		if !r.dev.HasOps("comm") {
			return fmt.Errorf("data-parallel on %s: this build of the CUDA backend has no "+
				"NCCL collectives (rebuild with NCCL found by CMake)", r.dev.Name())
		}
		g, err := dist.JoinNCCL(collectiveCtx, tcp, r.dev, r.distTimeout())
		if err != nil {
			return err
		}
		r.group, r.ownGroup = g, g
		r.log.Info("NCCL communicator ready", "rank", g.Rank(), "world", g.Size())
	}
	// Collectives issued during the backward pass (gradient buckets as
	// they become ready, synchronised BN) go through one queue, in program
	// order, which is the same on every rank.
	r.serial = dist.NewSerial()
	if r.cfg.SyncBN {
		r.model.SetSyncBN(&model.SyncBN{Ranks: r.world(), Reduce: func(t *bindings.Tensor) error {
			return r.serial.Do(func() error { return r.group.AllReduceSum(collectiveCtx, t) })
		}})
	}
	r.gloss = &dist.GlobalLoss{Loss: r.loss, C: r.group}
	// Buckets in the order the backward pass finishes the gradients.
	params := r.model.Params()
	grads := make([]*bindings.Tensor, len(params))
	for i, p := range params {
		grads[len(params)-1-i] = p.Grad
	}
	var err error
	if r.reducer, err = dist.NewGradReducer(r.group, grads, 0); err != nil {
		return err
	}
	r.model.SetGradHook(func(ps []*model.Param) {
		for _, p := range ps {
			r.reducer.Ready(p.Grad)
		}
	})
	if err := r.agreeOnState(); err != nil {
		return err
	}
	r.sentMark, r.stepMark = r.group.Traffic(), r.step // metrics count steps' traffic only
	return nil
}

// distTimeout is the group's collective timeout, for NCCL.
func (r *run) distTimeout() time.Duration {
	if tg, ok := r.cfg.Dist.(interface{ Timeout() time.Duration }); ok {
		return tg.Timeout()
	}
	return 10 * time.Minute
}

// agreeOnState checks that every rank stands at the same point of the
// run (a resumed rank that found another checkpoint would silently train
// something else) and copies rank 0's weights, buffers and optimizer
// state to all.
func (r *run) agreeOnState() error {
	mine := []float32{float32(r.step), float32(r.epoch), float32(r.batchInEp)}
	local, err := r.dev.FromFloat32(mine, len(mine))
	if err != nil {
		return err
	}
	defer local.Close()
	all, err := r.dev.NewTensor(bindings.Float32, r.world()*len(mine))
	if err != nil {
		return err
	}
	defer all.Close()
	if err := r.group.AllGather(collectiveCtx, local, all); err != nil {
		return fmt.Errorf("data-parallel start: %w", err)
	}
	v, err := all.Float32()
	if err != nil {
		return err
	}
	for k := 1; k < r.world(); k++ {
		if v[3*k] != v[0] || v[3*k+1] != v[1] || v[3*k+2] != v[2] {
			return fmt.Errorf("rank %d starts at step %v (epoch %v, batch %v) but rank 0 at "+
				"step %v (epoch %v, batch %v): to resume, every rank must see rank 0's -out "+
				"folder (a shared filesystem)", k, v[3*k], v[3*k+1], v[3*k+2], v[0], v[1], v[2])
		}
	}
	for _, ps := range [][]*model.Param{r.model.Params(), r.model.Buffers(), r.opt.State()} {
		for _, p := range ps {
			if err := r.group.Broadcast(collectiveCtx, p.Value, 0); err != nil {
				return fmt.Errorf("data-parallel start: broadcasting %s: %w", p.Name, err)
			}
		}
	}
	return nil
}

// agree is every step's check: whether any rank wants to stop, whether
// any rank's batch came out short (a bad sample left out) and whether any
// rank's epoch has ended. One all-reduce of three flags.
func (r *run) agree(stop, short, end bool) (anyStop, anyShort, anyEnd bool, err error) {
	flags := []float32{0, 0, 0}
	for i, f := range []bool{stop, short, end} {
		if f {
			flags[i] = 1
		}
	}
	if r.flags == nil {
		if r.flags, err = r.dev.NewTensor(bindings.Float32, len(flags)); err != nil {
			return false, false, false, err
		}
	}
	if err := r.flags.WriteFloat32(flags); err != nil {
		return false, false, false, err
	}
	if err := r.group.AllReduceSum(collectiveCtx, r.flags); err != nil {
		return false, false, false, err
	}
	if flags, err = r.flags.Float32(); err != nil {
		return false, false, false, err
	}
	return flags[0] > 0, flags[1] > 0, flags[2] > 0, nil
}

// lossStep evaluates the loss of the global batch and this rank's rows
// of its gradient.
func (r *run) lossStep(h, dh *bindings.Tensor) (float64, error) {
	if r.gloss == nil {
		return r.loss.ForwardBackward(h, dh)
	}
	return r.gloss.ForwardBackward(collectiveCtx, h, dh)
}

// backward runs the model's backward pass from dh and sums the parameter
// gradients over the ranks, each bucket as soon as the pass has written
// it, overlapping communication with the rest of the pass.
func (r *run) backward(dh *bindings.Tensor) error {
	if r.reducer == nil {
		end := r.dev.Range("backward")
		defer end()
		return r.model.Backward(dh)
	}
	r.reducer.Start(collectiveCtx, r.serial)
	end := r.dev.Range("backward+allreduce")
	err := r.model.Backward(dh)
	// Even after an error, the queued buckets must finish before the
	// gradients are touched again.
	if werr := r.reducer.Wait(); err == nil {
		err = werr
	}
	end()
	return err
}

// reduceGrads sums the parameter gradients over the ranks, after the
// backward pass (multi-size steps accumulate several passes first).
func (r *run) reduceGrads() error {
	if r.reducer == nil {
		return nil
	}
	end := r.dev.Range("allreduce")
	defer end()
	return r.reducer.Reduce(collectiveCtx)
}

// closeDist frees the data-parallel buffers (not the caller's group).
func (r *run) closeDist() {
	if r.gloss != nil {
		r.gloss.Close()
	}
	if r.reducer != nil {
		r.reducer.Close()
	}
	if r.flags != nil {
		r.flags.Close()
	}
	if r.serial != nil {
		r.serial.Close()
	}
	if r.ownGroup != nil {
		r.ownGroup.Close()
	}
}

// ranksSummary describes the data-parallel layout for the start-up table.
func (r *run) ranksSummary() string {
	if r.group == nil {
		return "1 (no data parallelism)"
	}
	transport := "TCP"
	if _, ok := r.group.(*dist.NCCLGroup); ok {
		transport = "NCCL"
	} else if _, ok := r.group.(*dist.TCPGroup); !ok {
		transport = "in-process"
	}
	bn := "synchronised BN"
	if !r.cfg.SyncBN {
		bn = "per-rank BN"
	}
	return fmt.Sprintf("%d over %s, %d images each, %s, %d gradient buckets", r.world(),
		transport, r.localN(), bn, r.reducer.Buckets())
}

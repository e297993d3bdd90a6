package bindings

/*
#include "polyview.h"
*/
import "C"

import "runtime"

// This file wraps synchronised batch norm (polyview.h, csrc/nn_syncbn.cc):
// batch statistics over the rows of every data-parallel rank. A training
// step on each rank, with allReduce summing a tensor over the ranks:
//
//	BatchNormStats(x, runMean, stats)         // local sums about runMean
//	allReduce(stats)                           // global sums
//	bn.ForwardStats(x, gamma, beta, stats, count, runMean, runVar,
//		saveMean, saveInvStd, y)
//	...
//	BatchNormBackwardStats(x, saveMean, saveInvStd, dy, stats) // local dbeta, dgamma
//	allReduce(stats)                           // dbeta = stats[0], dgamma = stats[1]
//	bn.BackwardInput(x, gamma, saveMean, saveInvStd, dy, stats, count, dx)
//
// count is the number of rows (elements per channel) over every rank.
// stats tensors are [2, C] in the parameters' dtype.

// BatchNormStats writes stats [2, C]: stats[0, c] = sum over the rows of x
// [..., C] of x - shift[c], stats[1, c] = the sum of (x - shift[c])^2
// (pv_batchnorm_stats). shift is the running mean that ForwardStats will
// find on entry.
func BatchNormStats(x, shift, stats *Tensor) error {
	const op = "batchnorm stats"
	h, dev, err := tensorArgs(op, []string{"x", "shift", "stats"}, required(3), x, shift, stats)
	if err != nil {
		return err
	}
	err = call(op, func() C.pv_status { return C.pv_batchnorm_stats(dev.ptr, h[0], h[1], h[2]) })
	runtime.KeepAlive(ts(x, shift, stats))
	return err
}

// ForwardStats normalises x with the batch statistics of every rank, from
// stats, BatchNormStats' sums all-reduced over the ranks, and count, the
// rows of all ranks together (>= 2) (pv_batchnorm_forward_stats). It
// writes saveMean and saveInvStd, y (which may be x), and updates runMean
// and runVar as Forward does in training. b.Training must be true.
func (b BatchNorm) ForwardStats(x, gamma, beta, stats *Tensor, count int,
	runMean, runVar, saveMean, saveInvStd, y *Tensor) error {
	const op = "batchnorm forward stats"
	names := []string{"x", "gamma", "beta", "stats", "running mean", "running var",
		"save mean", "save invstd", "y"}
	h, dev, err := tensorArgs(op, names, required(9),
		x, gamma, beta, stats, runMean, runVar, saveMean, saveInvStd, y)
	if err != nil {
		return err
	}
	d := b.desc()
	err = call(op, func() C.pv_status {
		return C.pv_batchnorm_forward_stats(dev.ptr, &d, h[0], h[1], h[2], h[3],
			C.int64_t(count), h[4], h[5], h[6], h[7], h[8])
	})
	runtime.KeepAlive(ts(x, gamma, beta, stats, runMean, runVar, saveMean, saveInvStd, y))
	return err
}

// BatchNormBackwardStats writes stats [2, C]: stats[0, c] = the sum of dy
// and stats[1, c] = the sum of dy (x - saveMean) saveInvStd over this
// rank's rows, its dbeta and dgamma (pv_batchnorm_backward_stats).
func BatchNormBackwardStats(x, saveMean, saveInvStd, dy, stats *Tensor) error {
	const op = "batchnorm backward stats"
	names := []string{"x", "save mean", "save invstd", "dy", "stats"}
	h, dev, err := tensorArgs(op, names, required(5), x, saveMean, saveInvStd, dy, stats)
	if err != nil {
		return err
	}
	err = call(op, func() C.pv_status {
		return C.pv_batchnorm_backward_stats(dev.ptr, h[0], h[1], h[2], h[3], h[4])
	})
	runtime.KeepAlive(ts(x, saveMean, saveInvStd, dy, stats))
	return err
}

// BackwardInput writes dx = gamma invstd (dy - stats[0] / count - xhat
// stats[1] / count), xhat = (x - saveMean) saveInvStd, from stats,
// BatchNormBackwardStats' sums all-reduced over the ranks
// (pv_batchnorm_backward_input). dx may be dy. b's fields play no part:
// the method pairs with ForwardStats as Backward does with Forward.
func (b BatchNorm) BackwardInput(x, gamma, saveMean, saveInvStd, dy, stats *Tensor, count int,
	dx *Tensor) error {
	const op = "batchnorm backward input"
	names := []string{"x", "gamma", "save mean", "save invstd", "dy", "stats", "dx"}
	h, dev, err := tensorArgs(op, names, required(7), x, gamma, saveMean, saveInvStd, dy, stats,
		dx)
	if err != nil {
		return err
	}
	err = call(op, func() C.pv_status {
		return C.pv_batchnorm_backward_input(dev.ptr, h[0], h[1], h[2], h[3], h[4], h[5],
			C.int64_t(count), h[6])
	})
	runtime.KeepAlive(ts(x, gamma, saveMean, saveInvStd, dy, stats, dx))
	return err
}

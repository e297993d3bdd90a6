package bindings

/*
#include "polyview.h"
*/
import "C"

import (
	"fmt"
	"runtime"
)

// This file wraps the encoder ops of polyview.h (csrc/nn.cc): NHWC
// activations, convolution weights [K, R, S, C], linear weights
// [out, in]. Every op runs on the device of its first tensor; the C layer
// checks shapes, dtypes and devices and its message names the argument.
// Gradients are written, not accumulated. On the CPU all tensors of one
// call are Float32, or all Float64 for gradient checks.

// tensorArgs resolves the C handles of tensors, named by names; a nil tensor
// where optional[i] is true becomes NULL.
func tensorArgs(op string, names []string, optional []bool,
	tensors ...*Tensor) ([]*C.pv_tensor, *Device, error) {
	out := make([]*C.pv_tensor, len(tensors))
	var dev *Device
	for i, t := range tensors {
		if t == nil && optional[i] {
			continue
		}
		p, err := t.handle(names[i])
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", op, err)
		}
		out[i] = p
		if dev == nil {
			dev = t.dev
		}
	}
	return out, dev, nil
}

// required marks every argument as required.
func required(n int) []bool { return make([]bool, n) }

// Conv2D is a 2-D convolution without bias: y [N, P, Q, K] = x [N, H, W, C]
// convolved with w [K, R, S, C], with P = (H + 2 Pad - R) / Stride + 1.
type Conv2D struct {
	Stride int // >= 1
	Pad    int // zero pixels on every side
}

func (c Conv2D) desc() C.pv_conv2d_desc {
	return C.pv_conv2d_desc{stride: C.int64_t(c.Stride), pad: C.int64_t(c.Pad)}
}

// Forward writes the convolution of x with w into y (pv_conv2d_forward).
func (c Conv2D) Forward(x, w, y *Tensor) error {
	h, dev, err := tensorArgs("conv2d forward", []string{"x", "w", "y"}, required(3), x, w, y)
	if err != nil {
		return err
	}
	d := c.desc()
	err = call("conv2d forward", func() C.pv_status {
		return C.pv_conv2d_forward(dev.ptr, &d, h[0], h[1], h[2])
	})
	runtime.KeepAlive(ts(x, w, y))
	return err
}

// Backward writes dx (x's shape) and dw (w's shape) from dy (y's shape)
// (pv_conv2d_backward). Either output may be nil to skip it.
func (c Conv2D) Backward(x, w, dy, dx, dw *Tensor) error {
	h, dev, err := tensorArgs("conv2d backward", []string{"x", "w", "dy", "dx", "dw"},
		[]bool{false, false, false, true, true}, x, w, dy, dx, dw)
	if err != nil {
		return err
	}
	d := c.desc()
	err = call("conv2d backward", func() C.pv_status {
		return C.pv_conv2d_backward(dev.ptr, &d, h[0], h[1], h[2], h[3], h[4])
	})
	runtime.KeepAlive(ts(x, w, dy, dx, dw))
	return err
}

// BatchNorm normalises over every axis but the last (channels): batch
// statistics with running averages updated in training, the running
// statistics in evaluation (pv_batchnorm_desc).
type BatchNorm struct {
	Training bool
	Momentum float64 // weight of the new batch in the running averages, e.g. 0.1
	Eps      float64 // added to the variance, e.g. 1e-5
}

func (b BatchNorm) desc() C.pv_batchnorm_desc {
	d := C.pv_batchnorm_desc{momentum: C.double(b.Momentum), eps: C.double(b.Eps)}
	if b.Training {
		d.training = 1
	}
	return d
}

// Forward writes y = gamma (x - mean) invstd + beta (pv_batchnorm_forward).
// gamma, beta and the four statistics are [C]; saveMean and saveInvStd
// receive the statistics used, for Backward. y may be x.
func (b BatchNorm) Forward(x, gamma, beta, runMean, runVar, saveMean, saveInvStd, y *Tensor) error {
	names := []string{"x", "gamma", "beta", "running mean", "running var", "save mean",
		"save invstd", "y"}
	h, dev, err := tensorArgs("batchnorm forward", names, required(8),
		x, gamma, beta, runMean, runVar, saveMean, saveInvStd, y)
	if err != nil {
		return err
	}
	d := b.desc()
	err = call("batchnorm forward", func() C.pv_status {
		return C.pv_batchnorm_forward(dev.ptr, &d, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
	})
	runtime.KeepAlive(ts(x, gamma, beta, runMean, runVar, saveMean, saveInvStd, y))
	return err
}

// Backward writes dx, dgamma and dbeta from dy, with the statistics that
// Forward saved (pv_batchnorm_backward). Training must match Forward's.
func (b BatchNorm) Backward(x, gamma, saveMean, saveInvStd, dy, dx, dgamma, dbeta *Tensor) error {
	names := []string{"x", "gamma", "save mean", "save invstd", "dy", "dx", "dgamma", "dbeta"}
	h, dev, err := tensorArgs("batchnorm backward", names, required(8),
		x, gamma, saveMean, saveInvStd, dy, dx, dgamma, dbeta)
	if err != nil {
		return err
	}
	d := b.desc()
	err = call("batchnorm backward", func() C.pv_status {
		return C.pv_batchnorm_backward(dev.ptr, &d, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
	})
	runtime.KeepAlive(ts(x, gamma, saveMean, saveInvStd, dy, dx, dgamma, dbeta))
	return err
}

// ReLUForward writes y = max(x, 0); y may be x (pv_relu_forward).
func ReLUForward(x, y *Tensor) error {
	h, dev, err := tensorArgs("relu forward", []string{"x", "y"}, required(2), x, y)
	if err != nil {
		return err
	}
	err = call("relu forward", func() C.pv_status { return C.pv_relu_forward(dev.ptr, h[0], h[1]) })
	runtime.KeepAlive(ts(x, y))
	return err
}

// ReLUBackward writes dx = dy where the forward output y > 0, else 0; dx
// may be dy (pv_relu_backward).
func ReLUBackward(y, dy, dx *Tensor) error {
	h, dev, err := tensorArgs("relu backward", []string{"y", "dy", "dx"}, required(3), y, dy, dx)
	if err != nil {
		return err
	}
	err = call("relu backward", func() C.pv_status {
		return C.pv_relu_backward(dev.ptr, h[0], h[1], h[2])
	})
	runtime.KeepAlive(ts(y, dy, dx))
	return err
}

// MaxPool is max pooling over Kernel x Kernel windows every Stride pixels,
// with Pad pixels on each side that never win.
type MaxPool struct {
	Kernel, Stride, Pad int
}

func (m MaxPool) desc() C.pv_maxpool_desc {
	return C.pv_maxpool_desc{kernel: C.int64_t(m.Kernel), stride: C.int64_t(m.Stride),
		pad: C.int64_t(m.Pad)}
}

// Forward writes y [N, P, Q, C], each window's maximum of x (pv_maxpool_forward).
func (m MaxPool) Forward(x, y *Tensor) error {
	h, dev, err := tensorArgs("maxpool forward", []string{"x", "y"}, required(2), x, y)
	if err != nil {
		return err
	}
	d := m.desc()
	err = call("maxpool forward", func() C.pv_status {
		return C.pv_maxpool_forward(dev.ptr, &d, h[0], h[1])
	})
	runtime.KeepAlive(ts(x, y))
	return err
}

// Backward writes dx: dy routed to each window's first maximum of x
// (pv_maxpool_backward).
func (m MaxPool) Backward(x, y, dy, dx *Tensor) error {
	h, dev, err := tensorArgs("maxpool backward", []string{"x", "y", "dy", "dx"}, required(4),
		x, y, dy, dx)
	if err != nil {
		return err
	}
	d := m.desc()
	err = call("maxpool backward", func() C.pv_status {
		return C.pv_maxpool_backward(dev.ptr, &d, h[0], h[1], h[2], h[3])
	})
	runtime.KeepAlive(ts(x, y, dy, dx))
	return err
}

// GlobalAvgPoolForward writes y [N, C], the mean of x [N, H, W, C] over H
// and W (pv_global_avgpool_forward).
func GlobalAvgPoolForward(x, y *Tensor) error {
	h, dev, err := tensorArgs("global avgpool forward", []string{"x", "y"}, required(2), x, y)
	if err != nil {
		return err
	}
	err = call("global avgpool forward", func() C.pv_status {
		return C.pv_global_avgpool_forward(dev.ptr, h[0], h[1])
	})
	runtime.KeepAlive(ts(x, y))
	return err
}

// GlobalAvgPoolBackward writes dx [N, H, W, C] = dy [N, C] / (H W)
// (pv_global_avgpool_backward).
func GlobalAvgPoolBackward(dy, dx *Tensor) error {
	h, dev, err := tensorArgs("global avgpool backward", []string{"dy", "dx"}, required(2), dy, dx)
	if err != nil {
		return err
	}
	err = call("global avgpool backward", func() C.pv_status {
		return C.pv_global_avgpool_backward(dev.ptr, h[0], h[1])
	})
	runtime.KeepAlive(ts(dy, dx))
	return err
}

// Add writes y = a + b for tensors of one shape; y may be a or b (pv_add).
func Add(a, b, y *Tensor) error {
	h, dev, err := tensorArgs("add", []string{"a", "b", "y"}, required(3), a, b, y)
	if err != nil {
		return err
	}
	err = call("add", func() C.pv_status { return C.pv_add(dev.ptr, h[0], h[1], h[2]) })
	runtime.KeepAlive(ts(a, b, y))
	return err
}

// LinearForward writes y [..., out] = x [..., in] w^T + b, w [out, in], b
// [out] or nil (pv_linear_forward).
func LinearForward(x, w, b, y *Tensor) error {
	h, dev, err := tensorArgs("linear forward", []string{"x", "w", "b", "y"},
		[]bool{false, false, true, false}, x, w, b, y)
	if err != nil {
		return err
	}
	err = call("linear forward", func() C.pv_status {
		return C.pv_linear_forward(dev.ptr, h[0], h[1], h[2], h[3])
	})
	runtime.KeepAlive(ts(x, w, b, y))
	return err
}

// LinearBackward writes dx (nil to skip), dw and db (nil to skip) from dy
// (pv_linear_backward).
func LinearBackward(x, w, dy, dx, dw, db *Tensor) error {
	h, dev, err := tensorArgs("linear backward", []string{"x", "w", "dy", "dx", "dw", "db"},
		[]bool{false, false, false, true, false, true}, x, w, dy, dx, dw, db)
	if err != nil {
		return err
	}
	err = call("linear backward", func() C.pv_status {
		return C.pv_linear_backward(dev.ptr, h[0], h[1], h[2], h[3], h[4], h[5])
	})
	runtime.KeepAlive(ts(x, w, dy, dx, dw, db))
	return err
}

// CPUFMAPeak measures the float32 multiply-add peak in GFLOP/s of
// CPUThreads() threads running at once (about 0.2 s), the yardstick for
// GEMM efficiency.
func CPUFMAPeak() (float64, error) {
	var g C.double
	err := call("cpu fma peak", func() C.pv_status { return C.pv_cpu_fma_peak(&g) })
	return float64(g), err
}

// ts keeps its arguments reachable until the call that uses it.
func ts(t ...*Tensor) []*Tensor { return t }

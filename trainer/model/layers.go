package model

import (
	"fmt"

	"github.com/polyview/polyview/bindings"
)

// env is what a layer needs to allocate: the device, the dtype of its
// parameters, gradients and statistics (dt) and that of its activations
// (act: dt, or bf16 on the GPU in mixed precision).
type env struct {
	dev *bindings.Device
	dt  bindings.DType
	act bindings.DType
}

func (e env) param(name string, noDecay bool, shape ...int) (*Param, error) {
	v, err := e.dev.NewTensor(e.dt, shape...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	g, err := e.dev.NewTensor(e.dt, shape...)
	if err != nil {
		v.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Param{Name: name, Value: v, Grad: g, NoDecay: noDecay}, nil
}

func (e env) buffer(name string, shape ...int) (*Param, error) {
	v, err := e.dev.NewTensor(e.dt, shape...)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &Param{Name: name, Value: v}, nil
}

// Conv is a 2-D convolution without bias; weight [K, R, S, C].
type Conv struct {
	env
	name string
	op   bindings.Conv2D
	W    *Param
	// SkipInputGrad makes Backward compute only the weight gradient and
	// return nil: for a network's first layer.
	SkipInputGrad bool
	x, y, dx      *bindings.Tensor
}

func newConv(e env, name string, in, out, kernel, stride, pad int) (*Conv, error) {
	w, err := e.param(name+".weight", false, out, kernel, kernel, in)
	if err != nil {
		return nil, err
	}
	return &Conv{env: e, name: name, op: bindings.Conv2D{Stride: stride, Pad: pad}, W: w}, nil
}

// Forward convolves x [N, H, W, C] into [N, P, Q, K].
func (c *Conv) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	s, ws := x.Shape(), c.W.Value.Shape()
	if len(s) != 4 {
		return nil, fmt.Errorf("%s forward: input shape %v, want [N, H, W, C]", c.name, s)
	}
	p := (s[1]+2*c.op.Pad-ws[1])/c.op.Stride + 1
	q := (s[2]+2*c.op.Pad-ws[2])/c.op.Stride + 1
	if err := ensure(c.dev, c.act, &c.y, s[0], p, q, ws[0]); err != nil {
		return nil, wrap(c.name, "forward", err)
	}
	c.x = x
	return c.y, wrap(c.name, "forward", c.op.Forward(x, c.W.Value, c.y))
}

// Backward writes the weight gradient and returns dL/dx (nil when skipped).
func (c *Conv) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if c.SkipInputGrad {
		return nil, wrap(c.name, "backward", c.op.Backward(c.x, c.W.Value, dy, nil, c.W.Grad))
	}
	if err := ensure(c.dev, c.act, &c.dx, c.x.Shape()...); err != nil {
		return nil, wrap(c.name, "backward", err)
	}
	return c.dx, wrap(c.name, "backward", c.op.Backward(c.x, c.W.Value, dy, c.dx, c.W.Grad))
}

// Params returns the weight.
func (c *Conv) Params() []*Param { return []*Param{c.W} }

// Buffers returns nothing: a convolution has no running state.
func (c *Conv) Buffers() []*Param { return nil }

// SetTraining does nothing: a convolution is the same in both modes.
func (c *Conv) SetTraining(bool) {}

// Close frees the layer's tensors.
func (c *Conv) Close() { closeParams(c.Params()); closeAll(c.y, c.dx) }

// BatchNorm normalises over every axis but the last, with a learnt scale
// (weight) and shift (bias) and running statistics for evaluation.
type BatchNorm struct {
	env
	name                    string
	op                      bindings.BatchNorm
	Gamma, Beta             *Param
	RunningMean, RunningVar *Param
	saveMean, saveInvStd    *bindings.Tensor
	x, y, dx                *bindings.Tensor
	sync                    *SyncBN          // nil: this rank's statistics
	synced                  bool             // the last forward synchronised
	stats                   *bindings.Tensor // [2, C] sums of the synchronised passes
}

func newBatchNorm(e env, name string, c int, momentum, eps float64) (*BatchNorm, error) {
	b := &BatchNorm{env: e, name: name,
		op: bindings.BatchNorm{Training: true, Momentum: momentum, Eps: eps}}
	var err error
	if b.Gamma, err = e.param(name+".weight", true, c); err != nil {
		return nil, err
	}
	if b.Beta, err = e.param(name+".bias", true, c); err != nil {
		return nil, err
	}
	if b.RunningMean, err = e.buffer(name+".running_mean", c); err != nil {
		return nil, err
	}
	if b.RunningVar, err = e.buffer(name+".running_var", c); err != nil {
		return nil, err
	}
	if b.saveMean, err = e.dev.NewTensor(e.dt, c); err != nil {
		return nil, err
	}
	b.saveInvStd, err = e.dev.NewTensor(e.dt, c)
	return b, err
}

// Forward normalises x [..., C].
func (b *BatchNorm) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	if err := ensure(b.dev, b.act, &b.y, x.Shape()...); err != nil {
		return nil, wrap(b.name, "forward", err)
	}
	b.x = x
	b.synced = b.sync != nil && b.op.Training
	if b.synced {
		return b.y, wrap(b.name, "forward", b.forwardSync(x))
	}
	return b.y, wrap(b.name, "forward", b.op.Forward(x, b.Gamma.Value, b.Beta.Value,
		b.RunningMean.Value, b.RunningVar.Value, b.saveMean, b.saveInvStd, b.y))
}

// Backward writes the scale and shift gradients and returns dL/dx.
func (b *BatchNorm) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if err := ensure(b.dev, b.act, &b.dx, b.x.Shape()...); err != nil {
		return nil, wrap(b.name, "backward", err)
	}
	if b.synced {
		return b.dx, wrap(b.name, "backward", b.backwardSync(dy))
	}
	return b.dx, wrap(b.name, "backward", b.op.Backward(b.x, b.Gamma.Value, b.saveMean,
		b.saveInvStd, dy, b.dx, b.Gamma.Grad, b.Beta.Grad))
}

// Params returns the scale and the shift.
func (b *BatchNorm) Params() []*Param { return []*Param{b.Gamma, b.Beta} }

// Buffers returns the running mean and variance.
func (b *BatchNorm) Buffers() []*Param { return []*Param{b.RunningMean, b.RunningVar} }

// SetTraining chooses batch (true) or running (false) statistics.
func (b *BatchNorm) SetTraining(training bool) { b.op.Training = training }

// Close frees the layer's tensors.
func (b *BatchNorm) Close() {
	closeParams(append(b.Params(), b.Buffers()...))
	closeAll(b.saveMean, b.saveInvStd, b.y, b.dx, b.stats)
}

// ReLU is max(x, 0). In place, it writes its output over its input and
// its input gradient over the incoming gradient instead of into buffers of
// its own: that is right after a layer whose backward pass does not read
// that layer's output (batch norm, a residual sum), where the builders use
// it, and it saves a pass that writes an activation's worth of fresh
// memory (a ResNet-18 step on the CPU spent 1.4% in ReLU's forward).
type ReLU struct {
	env
	name      string
	InPlace   bool
	out       *bindings.Tensor // the last output: y, or the input in place
	y, dx     *bindings.Tensor
	stateless // no parameters
}

// Forward returns max(x, 0).
func (r *ReLU) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	r.out = x
	if !r.InPlace {
		if err := ensure(r.dev, r.act, &r.y, x.Shape()...); err != nil {
			return nil, wrap(r.name, "forward", err)
		}
		r.out = r.y
	}
	return r.out, wrap(r.name, "forward", bindings.ReLUForward(x, r.out))
}

// Backward masks dy with the forward output's sign.
func (r *ReLU) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if r.out == nil {
		return nil, fmt.Errorf("%s: backward before forward", r.name)
	}
	dx := dy
	if !r.InPlace {
		if err := ensure(r.dev, r.act, &r.dx, dy.Shape()...); err != nil {
			return nil, wrap(r.name, "backward", err)
		}
		dx = r.dx
	}
	return dx, wrap(r.name, "backward", bindings.ReLUBackward(r.out, dy, dx))
}

// Close frees the layer's tensors.
func (r *ReLU) Close() { closeAll(r.y, r.dx) }

// stateless supplies the methods of a layer without parameters.
type stateless struct{}

// Params returns nothing.
func (stateless) Params() []*Param { return nil }

// Buffers returns nothing.
func (stateless) Buffers() []*Param { return nil }

// SetTraining does nothing.
func (stateless) SetTraining(bool) {}

// MaxPool is max pooling (the ImageNet stem's 3x3 stride-2 pool).
type MaxPool struct {
	env
	name     string
	op       bindings.MaxPool
	x, y, dx *bindings.Tensor
	stateless
}

// Forward pools x [N, H, W, C].
func (m *MaxPool) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	s := x.Shape()
	if len(s) != 4 {
		return nil, fmt.Errorf("%s forward: input shape %v, want [N, H, W, C]", m.name, s)
	}
	p := (s[1]+2*m.op.Pad-m.op.Kernel)/m.op.Stride + 1
	q := (s[2]+2*m.op.Pad-m.op.Kernel)/m.op.Stride + 1
	if err := ensure(m.dev, m.act, &m.y, s[0], p, q, s[3]); err != nil {
		return nil, wrap(m.name, "forward", err)
	}
	m.x = x
	return m.y, wrap(m.name, "forward", m.op.Forward(x, m.y))
}

// Backward routes dy to each window's maximum.
func (m *MaxPool) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if err := ensure(m.dev, m.act, &m.dx, m.x.Shape()...); err != nil {
		return nil, wrap(m.name, "backward", err)
	}
	return m.dx, wrap(m.name, "backward", m.op.Backward(m.x, m.y, dy, m.dx))
}

// Close frees the layer's tensors.
func (m *MaxPool) Close() { closeAll(m.y, m.dx) }

// GlobalAvgPool averages [N, H, W, C] over H and W into [N, C].
type GlobalAvgPool struct {
	env
	name   string
	xshape []int
	y, dx  *bindings.Tensor
	stateless
}

// Forward averages over the spatial axes.
func (g *GlobalAvgPool) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	s := x.Shape()
	if len(s) != 4 {
		return nil, fmt.Errorf("%s forward: input shape %v, want [N, H, W, C]", g.name, s)
	}
	if err := ensure(g.dev, g.act, &g.y, s[0], s[3]); err != nil {
		return nil, wrap(g.name, "forward", err)
	}
	g.xshape = s
	return g.y, wrap(g.name, "forward", bindings.GlobalAvgPoolForward(x, g.y))
}

// Backward spreads dy evenly over the pixels.
func (g *GlobalAvgPool) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if err := ensure(g.dev, g.act, &g.dx, g.xshape...); err != nil {
		return nil, wrap(g.name, "backward", err)
	}
	return g.dx, wrap(g.name, "backward", bindings.GlobalAvgPoolBackward(dy, g.dx))
}

// Close frees the layer's tensors.
func (g *GlobalAvgPool) Close() { closeAll(g.y, g.dx) }

// Linear is y = x W^T + b with W [out, in] and an optional bias.
type Linear struct {
	env
	name     string
	W, B     *Param // B nil without bias
	x, y, dx *bindings.Tensor
	// OutShape, when set, shapes the output (its product must equal the
	// rows of x times out): how the head writes [N, M, d] for the loss.
	OutShape []int
}

func newLinear(e env, name string, in, out int, bias bool) (*Linear, error) {
	l := &Linear{env: e, name: name}
	var err error
	if l.W, err = e.param(name+".weight", false, out, in); err != nil {
		return nil, err
	}
	if bias {
		l.B, err = e.param(name+".bias", true, out)
	}
	return l, err
}

// Forward maps x [..., in] to [..., out] (or OutShape).
func (l *Linear) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	shape := x.Shape()
	shape[len(shape)-1] = l.W.Value.Shape()[0]
	if l.OutShape != nil {
		shape = l.OutShape
	}
	if err := ensure(l.dev, l.act, &l.y, shape...); err != nil {
		return nil, wrap(l.name, "forward", err)
	}
	l.x = x
	return l.y, wrap(l.name, "forward", bindings.LinearForward(x, l.W.Value, l.bias(), l.y))
}

func (l *Linear) bias() *bindings.Tensor {
	if l.B == nil {
		return nil
	}
	return l.B.Value
}

// Backward writes the weight and bias gradients and returns dL/dx.
func (l *Linear) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	if err := ensure(l.dev, l.act, &l.dx, l.x.Shape()...); err != nil {
		return nil, wrap(l.name, "backward", err)
	}
	var db *bindings.Tensor
	if l.B != nil {
		db = l.B.Grad
	}
	return l.dx, wrap(l.name, "backward",
		bindings.LinearBackward(l.x, l.W.Value, dy, l.dx, l.W.Grad, db))
}

// Params returns the weight and, if present, the bias.
func (l *Linear) Params() []*Param {
	if l.B == nil {
		return []*Param{l.W}
	}
	return []*Param{l.W, l.B}
}

// Buffers returns nothing.
func (l *Linear) Buffers() []*Param { return nil }

// SetTraining does nothing: a linear layer is the same in both modes.
func (l *Linear) SetTraining(bool) {}

// Close frees the layer's tensors.
func (l *Linear) Close() { closeParams(l.Params()); closeAll(l.y, l.dx) }

// Package model builds the encoders (a small ConvNet, ResNet-18, -34 and
// -50) and the projection head from layers with explicit forward and
// backward passes over the backend's ops; there is no general autograd.
//
// Tensors are NHWC. A layer owns its output and input-gradient tensors and
// reuses them from step to step: what Forward or Backward returns is valid
// until the next call of the same method, and a layer keeps a reference
// to its input, which must stay unchanged until Backward.
package model

import (
	"fmt"
	"slices"

	"github.com/polyview/polyview/bindings"
)

// Param is a named tensor of a model: a trainable parameter with its
// gradient, or a buffer (BN running statistics) with Grad nil.
type Param struct {
	// Name follows PyTorch's state-dict names, e.g. "layer1.0.conv1.weight".
	Name  string
	Value *bindings.Tensor
	Grad  *bindings.Tensor
	// NoDecay marks BN scales and shifts and biases: optimizers exclude
	// them from weight decay and from LARS's trust-ratio adaptation.
	NoDecay bool
	// borrowed marks a replica's view of another model's tensor: Close
	// leaves Value to its owner.
	borrowed bool
}

// Layer is one step of a network. Backward takes dL/dy for the output of
// the last Forward, writes the gradients of the layer's parameters (they
// are overwritten, not accumulated) and returns dL/dx, or nil for a layer
// told to skip its input gradient (a network's first convolution).
type Layer interface {
	Forward(x *bindings.Tensor) (*bindings.Tensor, error)
	Backward(dy *bindings.Tensor) (*bindings.Tensor, error)
	// Params lists the trainable parameters, Buffers the running state.
	Params() []*Param
	Buffers() []*Param
	// SetTraining switches BN between batch and running statistics.
	SetTraining(training bool)
	// Close frees every tensor the layer owns.
	Close()
}

// ensure makes *t a tensor of the given dtype and shape on dev, keeping
// the current one when it already fits.
func ensure(dev *bindings.Device, dt bindings.DType, t **bindings.Tensor, shape ...int) error {
	if *t != nil && (*t).DType() == dt && slices.Equal((*t).Shape(), shape) {
		return nil
	}
	if *t != nil {
		(*t).Close()
	}
	n, err := dev.NewTensor(dt, shape...)
	if err != nil {
		*t = nil
		return err
	}
	*t = n
	return nil
}

func closeAll(ts ...*bindings.Tensor) {
	for _, t := range ts {
		if t != nil {
			t.Close()
		}
	}
}

func closeParams(ps []*Param) {
	for _, p := range ps {
		if p == nil {
			continue
		}
		if !p.borrowed {
			closeAll(p.Value)
		}
		closeAll(p.Grad)
	}
}

// Sequential runs layers in order; Backward runs them in reverse and stops
// at a layer that returns no input gradient.
type Sequential struct {
	Layers []Layer
	// onGrads, when set, hears each leaf layer's parameters as soon as its
	// backward pass has written their gradients (Model.SetGradHook).
	onGrads func([]*Param)
}

// Forward runs every layer.
func (s *Sequential) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	for _, l := range s.Layers {
		var err error
		if x, err = l.Forward(x); err != nil {
			return nil, err
		}
	}
	return x, nil
}

// Backward runs every layer's backward pass in reverse.
func (s *Sequential) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	for i := len(s.Layers) - 1; i >= 0 && dy != nil; i-- {
		var err error
		if dy, err = s.Layers[i].Backward(dy); err != nil {
			return nil, err
		}
		if s.onGrads != nil {
			switch s.Layers[i].(type) {
			case *Sequential, *Residual: // their inner Sequentials report
			default:
				if ps := s.Layers[i].Params(); len(ps) > 0 {
					s.onGrads(ps)
				}
			}
		}
	}
	return dy, nil
}

// Params lists the layers' parameters in order.
func (s *Sequential) Params() []*Param {
	var out []*Param
	for _, l := range s.Layers {
		out = append(out, l.Params()...)
	}
	return out
}

// Buffers lists the layers' buffers in order.
func (s *Sequential) Buffers() []*Param {
	var out []*Param
	for _, l := range s.Layers {
		out = append(out, l.Buffers()...)
	}
	return out
}

// SetTraining sets every layer's mode.
func (s *Sequential) SetTraining(training bool) {
	for _, l := range s.Layers {
		l.SetTraining(training)
	}
}

// Close closes every layer (nil entries, left by a failed build, are
// skipped).
func (s *Sequential) Close() {
	for _, l := range s.Layers {
		if l != nil && !isNilLinear(l) {
			l.Close()
		}
	}
}

func isNilLinear(l Layer) bool {
	p, ok := l.(*Linear)
	return ok && p == nil
}

// wrap names the layer and the step in an error.
func wrap(name, step string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s %s: %w", name, step, err)
}

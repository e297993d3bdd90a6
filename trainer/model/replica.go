package model

import "fmt"

// Replica returns a model that computes with m's parameter values and BN
// running statistics (the same tensors: an optimizer step on m is seen by
// the replica, and a training forward of either updates the one set of
// running statistics) but owns its activations and its parameter
// gradients. Multi-crop steps run each size group through its own
// replica, so every group keeps its activations for the backward pass
// without a second forward. Close the replica before m; closing it frees
// only what it owns. Params lists the replica's own gradients in m's
// order, so gradients add up index by index.
func (m *Model) Replica() (*Model, error) {
	r := &Model{Config: m.Config, RepDim: m.RepDim, OutDim: m.OutDim}
	enc, err := replicate(m.Encoder)
	if err != nil {
		return nil, err
	}
	r.Encoder = enc.(*Sequential)
	r.stem = r.Encoder.Layers[0].(*Conv)
	if m.Head != nil {
		head, err := replicate(m.Head)
		if err != nil {
			r.Close()
			return nil, err
		}
		r.Head = head.(*Sequential)
		r.last, _ = r.Head.Layers[len(r.Head.Layers)-1].(*Linear)
	}
	return r, nil
}

// borrow returns a parameter with p's value and a gradient of its own.
func borrow(e env, p *Param) (*Param, error) {
	if p == nil {
		return nil, nil
	}
	g, err := e.dev.NewTensor(p.Grad.DType(), p.Grad.Shape()...)
	if err != nil {
		return nil, fmt.Errorf("replica of %s: %w", p.Name, err)
	}
	return &Param{Name: p.Name, Value: p.Value, Grad: g, NoDecay: p.NoDecay, borrowed: true}, nil
}

// shareBuffer returns p itself marked as not owned by the replica.
func shareBuffer(p *Param) *Param {
	q := *p
	q.borrowed = true
	return &q
}

// replicate copies a layer's configuration, borrowing its parameters and
// sharing its buffers; activations start empty.
func replicate(l Layer) (Layer, error) {
	var err error
	switch v := l.(type) {
	case *Sequential:
		s := &Sequential{Layers: make([]Layer, len(v.Layers))}
		for i, c := range v.Layers {
			if s.Layers[i], err = replicate(c); err != nil {
				s.Close()
				return nil, err
			}
		}
		return s, nil
	case *Residual:
		r := &Residual{env: v.env, name: v.name, InPlace: v.InPlace,
			relu: &ReLU{env: v.relu.env, name: v.relu.name, InPlace: v.relu.InPlace}}
		b, err := replicate(v.Branch)
		if err != nil {
			return nil, err
		}
		r.Branch = b.(*Sequential)
		if v.Shortcut != nil {
			s, err := replicate(v.Shortcut)
			if err != nil {
				r.Branch.Close()
				return nil, err
			}
			r.Shortcut = s.(*Sequential)
		}
		return r, nil
	case *Conv:
		c := &Conv{env: v.env, name: v.name, op: v.op, SkipInputGrad: v.SkipInputGrad}
		c.W, err = borrow(v.env, v.W)
		return c, err
	case *BatchNorm:
		b := &BatchNorm{env: v.env, name: v.name, op: v.op, sync: v.sync,
			RunningMean: shareBuffer(v.RunningMean), RunningVar: shareBuffer(v.RunningVar)}
		if b.Gamma, err = borrow(v.env, v.Gamma); err == nil {
			if b.Beta, err = borrow(v.env, v.Beta); err == nil {
				c := v.Gamma.Value.Numel()
				if b.saveMean, err = v.dev.NewTensor(v.dt, c); err == nil {
					b.saveInvStd, err = v.dev.NewTensor(v.dt, c)
				}
			}
		}
		if err != nil {
			b.Close()
			return nil, err
		}
		return b, nil
	case *Linear:
		li := &Linear{env: v.env, name: v.name}
		if li.W, err = borrow(v.env, v.W); err == nil {
			li.B, err = borrow(v.env, v.B)
		}
		if err != nil {
			li.Close()
			return nil, err
		}
		return li, nil
	case *ReLU:
		return &ReLU{env: v.env, name: v.name, InPlace: v.InPlace}, nil
	case *MaxPool:
		return &MaxPool{env: v.env, name: v.name, op: v.op}, nil
	case *GlobalAvgPool:
		return &GlobalAvgPool{env: v.env, name: v.name}, nil
	}
	return nil, fmt.Errorf("replica: layer type %T", l)
}

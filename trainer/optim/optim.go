// Package optim updates a model's parameters: SGD with momentum (and
// Nesterov), LARS and AdamW through the backend's optimizer op (one
// update per parameter tensor, fused on the GPU), and the learning-rate
// schedule (linear warmup, then cosine decay).
package optim

import (
	"fmt"
	"strings"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/model"
)

// Config chooses an optimizer and its hyper-parameters. Zero values take
// the defaults noted.
type Config struct {
	// Name is "sgd", "lars" or "adamw".
	Name string `json:"name"`
	// Momentum for SGD and LARS (0 means 0.9).
	Momentum float64 `json:"momentum,omitempty"`
	Nesterov bool    `json:"nesterov,omitempty"`
	// WeightDecay applies to every parameter but those marked NoDecay (BN
	// scales and shifts, biases).
	WeightDecay float64 `json:"weight_decay"`
	// Eta is LARS's trust coefficient (0 means 0.001).
	Eta float64 `json:"eta,omitempty"`
	// Beta1, Beta2 and Eps for AdamW (0 means 0.9, 0.999, 1e-8).
	Beta1 float64 `json:"beta1,omitempty"`
	Beta2 float64 `json:"beta2,omitempty"`
	Eps   float64 `json:"eps,omitempty"`
}

// Optimizer holds one state tensor per parameter (two for AdamW) and
// counts its steps.
type Optimizer struct {
	cfg    Config
	kind   bindings.Optimizer
	params []*model.Param
	state  [][2]*bindings.Tensor
	steps  int
}

// New creates an optimizer over params with zeroed state on each
// parameter's device.
func New(cfg Config, params []*model.Param) (*Optimizer, error) {
	o := &Optimizer{cfg: cfg, params: params}
	switch strings.ToLower(cfg.Name) {
	case "sgd":
		o.kind = bindings.SGD
	case "lars":
		o.kind = bindings.LARS
	case "adamw":
		o.kind = bindings.AdamW
	default:
		return nil, fmt.Errorf("optimizer %q: want sgd, lars or adamw", cfg.Name)
	}
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.cfg.Momentum, 0.9)
	def(&o.cfg.Eta, 0.001)
	def(&o.cfg.Beta1, 0.9)
	def(&o.cfg.Beta2, 0.999)
	def(&o.cfg.Eps, 1e-8)
	slots := 1
	if o.kind == bindings.AdamW {
		slots = 2
	}
	for _, p := range params {
		var st [2]*bindings.Tensor
		for s := 0; s < slots; s++ {
			t, err := zeros(p.Value)
			if err != nil {
				o.Close()
				return nil, fmt.Errorf("%s state of %s: %w", o.kind, p.Name, err)
			}
			st[s] = t
		}
		o.state = append(o.state, st)
	}
	return o, nil
}

func zeros(like *bindings.Tensor) (*bindings.Tensor, error) {
	t, err := like.Device().NewTensor(like.DType(), like.Shape()...)
	if err != nil {
		return nil, err
	}
	if err := t.WriteBytes(make([]byte, t.Bytes())); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Step applies one update at learning rate lr to every parameter from its
// Grad.
func (o *Optimizer) Step(lr float64) error {
	o.steps++
	for i, p := range o.params {
		s := bindings.OptimizerStep{
			Kind: o.kind, LR: lr, Momentum: o.cfg.Momentum, Nesterov: o.cfg.Nesterov,
			WeightDecay: o.cfg.WeightDecay, Eta: o.cfg.Eta, Beta1: o.cfg.Beta1,
			Beta2: o.cfg.Beta2, Eps: o.cfg.Eps, Step: o.steps, Exclude: p.NoDecay,
		}
		if err := s.Apply(p.Value, p.Grad, o.state[i][0], o.state[i][1]); err != nil {
			return fmt.Errorf("step %d, %s: %w", o.steps, p.Name, err)
		}
	}
	return nil
}

// Steps is the number of steps taken (AdamW's bias-correction counter).
func (o *Optimizer) Steps() int { return o.steps }

// SetSteps restores the step counter, for resuming from a checkpoint.
func (o *Optimizer) SetSteps(n int) { o.steps = n }

// State lists the optimizer's tensors for checkpoints, named after their
// parameter: "<param>.momentum" (SGD, LARS), "<param>.exp_avg" and
// "<param>.exp_avg_sq" (AdamW).
func (o *Optimizer) State() []*model.Param {
	var out []*model.Param
	for i, p := range o.params {
		if o.kind == bindings.AdamW {
			out = append(out, &model.Param{Name: p.Name + ".exp_avg", Value: o.state[i][0]},
				&model.Param{Name: p.Name + ".exp_avg_sq", Value: o.state[i][1]})
			continue
		}
		out = append(out, &model.Param{Name: p.Name + ".momentum", Value: o.state[i][0]})
	}
	return out
}

// Close frees the state tensors.
func (o *Optimizer) Close() {
	for _, st := range o.state {
		for _, t := range st {
			if t != nil {
				t.Close()
			}
		}
	}
	o.state = nil
}

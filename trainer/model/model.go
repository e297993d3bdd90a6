package model

import (
	"fmt"
	"math"
	"strings"

	"github.com/polyview/polyview/bindings"
)

// Config describes an encoder and its projection head.
type Config struct {
	// Arch is "convnet", "resnet18", "resnet34" or "resnet50".
	Arch string `json:"arch"`
	// Stem is the ResNet's first stage: "cifar" (3x3 convolution, no max
	// pool) or "imagenet" (7x7 stride-2 convolution, 3x3 stride-2 max pool).
	Stem string `json:"stem,omitempty"`
	// InChannels of the input views; 0 means 3.
	InChannels int `json:"in_channels,omitempty"`
	// Width is the ConvNet's first width (then 2x, 4x, 8x); 0 means 32.
	Width int `json:"width,omitempty"`
	// HeadDims are the projection head's output widths, one per linear
	// layer (2 or 3 of them, e.g. [512, 128]); empty means no head.
	HeadDims []int `json:"head_dims,omitempty"`
	// ZeroInitResidual starts the last BN scale of every residual branch at
	// zero, so each block begins as the identity.
	ZeroInitResidual bool `json:"zero_init_residual,omitempty"`
	// BNMomentum (0 means 0.1) and BNEps (0 means 1e-5) as in PyTorch.
	BNMomentum float64 `json:"bn_momentum,omitempty"`
	BNEps      float64 `json:"bn_eps,omitempty"`
	// DType of activations and parameters: Float32 (the zero value), or
	// Float64 on the CPU for reference checks.
	DType bindings.DType `json:"-"`
	// BF16Activations is mixed precision on the GPU: activations and their
	// gradients in bf16 (tensor-core convolutions and products with fp32
	// accumulation), parameters, their gradients and BN statistics in fp32
	// (the optimizer's master weights). The CPU backend computes in fp32
	// or fp64 only.
	BF16Activations bool `json:"-"`
	// Seed keys the initialisation.
	Seed uint64 `json:"seed"`
}

func (c *Config) defaults() error {
	if c.InChannels == 0 {
		c.InChannels = 3
	}
	if c.Width == 0 {
		c.Width = 32
	}
	if c.BNMomentum == 0 {
		c.BNMomentum = 0.1
	}
	if c.BNEps == 0 {
		c.BNEps = 1e-5
	}
	c.Arch = strings.ToLower(c.Arch)
	if strings.HasPrefix(c.Arch, "resnet") && c.Stem == "" {
		c.Stem = "cifar"
	}
	if n := len(c.HeadDims); n == 1 || n > 3 {
		return fmt.Errorf("head_dims %v: want 2 or 3 widths (or none)", c.HeadDims)
	}
	for _, d := range c.HeadDims {
		if d < 1 {
			return fmt.Errorf("head_dims %v: widths must be >= 1", c.HeadDims)
		}
	}
	return nil
}

// Model is an encoder followed by an optional projection head.
type Model struct {
	Config  Config
	Encoder *Sequential
	Head    *Sequential // nil without a head
	// RepDim is the width of the representation (the encoder's output),
	// OutDim that of the model's output (RepDim without a head).
	RepDim, OutDim int
	stem           *Conv
	last           *Linear // the head's output layer
	rep            *bindings.Tensor
}

// New builds and initialises the model of cfg on dev.
func New(dev *bindings.Device, cfg Config) (*Model, error) {
	if err := cfg.defaults(); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if cfg.DType != bindings.Float32 && cfg.DType != bindings.Float64 {
		return nil, fmt.Errorf("model: dtype %v, want float32 or float64", cfg.DType)
	}
	act := cfg.DType
	if cfg.BF16Activations {
		if cfg.DType != bindings.Float32 || !dev.IsCUDA() {
			return nil, fmt.Errorf("model: bf16 activations need float32 parameters on a "+
				"CUDA device, not %v on %s (the CPU backend computes in fp32 or fp64)",
				cfg.DType, dev.Name())
		}
		act = bindings.BFloat16
	}
	b := &builder{env: env{dev: dev, dt: cfg.DType, act: act}, cfg: cfg}
	var layers []Layer
	var rep int
	var err error
	switch cfg.Arch {
	case "convnet":
		layers, rep, err = b.convnet()
	case "resnet18", "resnet34", "resnet50":
		var depth int
		fmt.Sscanf(cfg.Arch, "resnet%d", &depth)
		layers, rep, err = b.resnet(depth)
	default:
		return nil, fmt.Errorf("model: arch %q: want convnet, resnet18, resnet34 or resnet50",
			cfg.Arch)
	}
	m := &Model{Config: cfg, Encoder: &Sequential{Layers: layers}, RepDim: rep, OutDim: rep}
	if err == nil && len(cfg.HeadDims) > 0 {
		var head []Layer
		head, m.last, err = b.head(rep, cfg.HeadDims)
		m.Head = &Sequential{Layers: head}
		m.OutDim = cfg.HeadDims[len(cfg.HeadDims)-1]
	}
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("model %s: %w", cfg.Arch, err)
	}
	m.stem = layers[0].(*Conv)
	m.stem.SkipInputGrad = true
	return m, nil
}

// Forward maps views x [B, H, W, C] to the output [B, OutDim].
func (m *Model) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	return m.forward(x, nil)
}

// ForwardViews is Forward for B = N M views stored image-major (row
// i M + a is view a of image i), returning [N, M, OutDim]: the shape the
// poly-view loss takes. It needs a head.
func (m *Model) ForwardViews(x *bindings.Tensor, views int) (*bindings.Tensor, error) {
	b := x.Shape()[0]
	if m.Head == nil || views < 1 || b%views != 0 {
		return nil, fmt.Errorf("model forward: %d views of a batch of %d (head: %v)", views, b,
			m.Head != nil)
	}
	return m.forward(x, []int{b / views, views, m.OutDim})
}

func (m *Model) forward(x *bindings.Tensor, outShape []int) (*bindings.Tensor, error) {
	rep, err := m.Encoder.Forward(x)
	if err != nil {
		return nil, fmt.Errorf("model forward: %w", err)
	}
	m.rep = rep
	if m.Head == nil {
		return rep, nil
	}
	m.last.OutShape = outShape
	z, err := m.Head.Forward(rep)
	if err != nil {
		return nil, fmt.Errorf("model forward: %w", err)
	}
	return z, nil
}

// ActDType is the dtype of the activations: of the views Forward takes,
// of its outputs, and of the gradients Backward takes.
func (m *Model) ActDType() bindings.DType { return m.stem.act }

// Representation is the encoder's output [B, RepDim] of the last Forward:
// the features that evaluation (kNN, linear probe) uses. It is
// overwritten by the next Forward.
func (m *Model) Representation() *bindings.Tensor { return m.rep }

// Backward takes dL/d(output) of the last Forward and writes every
// parameter's gradient (overwriting it). The input's gradient is not
// computed.
func (m *Model) Backward(dz *bindings.Tensor) error {
	d := dz
	if m.Head != nil {
		var err error
		if d, err = m.Head.Backward(dz); err != nil {
			return fmt.Errorf("model backward: %w", err)
		}
	}
	if _, err := m.Encoder.Backward(d); err != nil {
		return fmt.Errorf("model backward: %w", err)
	}
	return nil
}

// Params lists the trainable parameters, encoder first.
func (m *Model) Params() []*Param {
	out := m.Encoder.Params()
	if m.Head != nil {
		out = append(out, m.Head.Params()...)
	}
	return out
}

// Buffers lists the BN running statistics, encoder first.
func (m *Model) Buffers() []*Param {
	out := m.Encoder.Buffers()
	if m.Head != nil {
		out = append(out, m.Head.Buffers()...)
	}
	return out
}

// NumParams counts the trainable scalars.
func (m *Model) NumParams() int {
	n := 0
	for _, p := range m.Params() {
		n += p.Value.Numel()
	}
	return n
}

// SetTraining switches every BN between batch statistics (training) and
// running statistics (evaluation).
func (m *Model) SetTraining(training bool) {
	m.Encoder.SetTraining(training)
	if m.Head != nil {
		m.Head.SetTraining(training)
	}
}

// Close frees every tensor of the model; call it before closing the
// model's device.
func (m *Model) Close() {
	m.Encoder.Close()
	if m.Head != nil {
		m.Head.Close()
	}
}

func sqrtf(n int) float64 { return math.Sqrt(float64(n)) }

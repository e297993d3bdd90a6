package model

import (
	"fmt"

	"github.com/polyview/polyview/bindings"
)

// builder creates and initialises layers, keeping the first error so that
// a network reads as a list of layers.
type builder struct {
	env
	cfg Config
	err error
}

func (b *builder) conv(name string, in, out, kernel, stride, pad int) Layer {
	if b.err != nil {
		return nil
	}
	c, err := newConv(b.env, name, in, out, kernel, stride, pad)
	if err == nil {
		err = kaimingNormal(c.W, b.cfg.Seed)
	}
	if b.err = err; err != nil {
		return nil
	}
	return c
}

func (b *builder) bn(name string, c int, zero bool) Layer {
	if b.err != nil {
		return nil
	}
	l, err := newBatchNorm(b.env, name, c, b.cfg.BNMomentum, b.cfg.BNEps)
	if err == nil {
		gamma := 1.0
		if zero {
			gamma = 0
		}
		for _, e := range []error{fill(l.Gamma.Value, gamma), fill(l.Beta.Value, 0),
			fill(l.RunningMean.Value, 0), fill(l.RunningVar.Value, 1)} {
			if err == nil {
				err = e
			}
		}
	}
	if b.err = err; err != nil {
		return nil
	}
	return l
}

// relu is in place: every ReLU the builders make follows batch norm or a
// residual sum.
func (b *builder) relu(name string) Layer { return &ReLU{env: b.env, name: name, InPlace: true} }

func (b *builder) linear(name string, in, out int, bias bool) *Linear {
	if b.err != nil {
		return nil
	}
	l, err := newLinear(b.env, name, in, out, bias)
	if err == nil {
		err = uniform(l.W, b.cfg.Seed, 1/sqrtf(in))
	}
	if err == nil && bias {
		err = uniform(l.B, b.cfg.Seed, 1/sqrtf(in))
	}
	b.err = err
	return l // nil on error; the caller checks b.err before using it
}

// Residual is a residual block: relu(branch(x) + shortcut(x)), with an
// identity shortcut when Shortcut is nil. InPlace sums into the branch's
// output going forward and into the branch's input gradient going back,
// rather than into buffers of its own: right when the branch's last layer
// does not read its output in its backward pass (batch norm, as the
// builders make it) and nothing reads its first layer's input gradient
// after returning it.
type Residual struct {
	env
	name     string
	Branch   *Sequential
	Shortcut *Sequential
	InPlace  bool
	relu     *ReLU
	sum, dx  *bindings.Tensor
}

// Forward runs both paths and joins them.
func (r *Residual) Forward(x *bindings.Tensor) (*bindings.Tensor, error) {
	h, err := r.Branch.Forward(x)
	if err != nil {
		return nil, err
	}
	s := x
	if r.Shortcut != nil {
		if s, err = r.Shortcut.Forward(x); err != nil {
			return nil, err
		}
	}
	sum := h
	if !r.InPlace {
		if err := ensure(r.dev, r.act, &r.sum, h.Shape()...); err != nil {
			return nil, wrap(r.name, "forward", err)
		}
		sum = r.sum
	}
	if err := bindings.Add(h, s, sum); err != nil {
		return nil, wrap(r.name, "forward", err)
	}
	return r.relu.Forward(sum)
}

// Backward sends the gradient down both paths and sums what comes back.
func (r *Residual) Backward(dy *bindings.Tensor) (*bindings.Tensor, error) {
	d, err := r.relu.Backward(dy)
	if err != nil {
		return nil, err
	}
	dh, err := r.Branch.Backward(d)
	if err != nil {
		return nil, err
	}
	ds := d
	if r.Shortcut != nil {
		if ds, err = r.Shortcut.Backward(d); err != nil {
			return nil, err
		}
	}
	dx := dh
	if !r.InPlace {
		if err := ensure(r.dev, r.act, &r.dx, dh.Shape()...); err != nil {
			return nil, wrap(r.name, "backward", err)
		}
		dx = r.dx
	}
	return dx, wrap(r.name, "backward", bindings.Add(dh, ds, dx))
}

// Params lists the branch's then the shortcut's parameters.
func (r *Residual) Params() []*Param {
	out := r.Branch.Params()
	if r.Shortcut != nil {
		out = append(out, r.Shortcut.Params()...)
	}
	return out
}

// Buffers lists the branch's then the shortcut's buffers.
func (r *Residual) Buffers() []*Param {
	out := r.Branch.Buffers()
	if r.Shortcut != nil {
		out = append(out, r.Shortcut.Buffers()...)
	}
	return out
}

// SetTraining sets both paths' mode.
func (r *Residual) SetTraining(training bool) {
	r.Branch.SetTraining(training)
	if r.Shortcut != nil {
		r.Shortcut.SetTraining(training)
	}
}

// Close frees both paths and the join's tensors.
func (r *Residual) Close() {
	r.Branch.Close()
	if r.Shortcut != nil {
		r.Shortcut.Close()
	}
	r.relu.Close()
	closeAll(r.sum, r.dx)
}

// block builds torchvision's BasicBlock (two 3x3 convolutions) or, with
// bottleneck, its Bottleneck (1x1, 3x3 with the stride, 1x1 to 4x the
// width: ResNet v1.5). A projection shortcut (1x1 convolution and BN,
// "downsample") appears when the shape changes.
func (b *builder) block(name string, in, width, stride int, bottleneck bool) (Layer, int) {
	zero := b.cfg.ZeroInitResidual
	var br []Layer
	out := width
	if bottleneck {
		out = 4 * width
		br = []Layer{
			b.conv(name+".conv1", in, width, 1, 1, 0), b.bn(name+".bn1", width, false),
			b.relu(name + ".relu1"),
			b.conv(name+".conv2", width, width, 3, stride, 1), b.bn(name+".bn2", width, false),
			b.relu(name + ".relu2"),
			b.conv(name+".conv3", width, out, 1, 1, 0), b.bn(name+".bn3", out, zero),
		}
	} else {
		br = []Layer{
			b.conv(name+".conv1", in, width, 3, stride, 1), b.bn(name+".bn1", width, false),
			b.relu(name + ".relu1"),
			b.conv(name+".conv2", width, width, 3, 1, 1), b.bn(name+".bn2", width, zero),
		}
	}
	r := &Residual{env: b.env, name: name, Branch: &Sequential{Layers: br}, InPlace: true,
		relu: &ReLU{env: b.env, name: name + ".relu", InPlace: true}}
	if stride != 1 || in != out {
		r.Shortcut = &Sequential{Layers: []Layer{
			b.conv(name+".downsample.0", in, out, 1, stride, 0),
			b.bn(name+".downsample.1", out, false),
		}}
	}
	return r, out
}

// resnet builds the encoder of ResNet-18, -34 or -50 up to the global
// average pool; it returns the layers and the representation width.
func (b *builder) resnet(depth int) ([]Layer, int, error) {
	blocks := map[int][]int{18: {2, 2, 2, 2}, 34: {3, 4, 6, 3}, 50: {3, 4, 6, 3}}[depth]
	bottleneck := depth == 50
	c := b.cfg.InChannels
	var layers []Layer
	switch b.cfg.Stem {
	case "cifar":
		layers = append(layers, b.conv("conv1", c, 64, 3, 1, 1))
	case "imagenet":
		layers = append(layers, b.conv("conv1", c, 64, 7, 2, 3))
	default:
		return nil, 0, fmt.Errorf("stem %q: want cifar or imagenet", b.cfg.Stem)
	}
	layers = append(layers, b.bn("bn1", 64, false), b.relu("relu"))
	if b.cfg.Stem == "imagenet" {
		layers = append(layers, &MaxPool{env: b.env, name: "maxpool",
			op: bindings.MaxPool{Kernel: 3, Stride: 2, Pad: 1}})
	}
	in := 64
	for stage, n := range blocks {
		width := 64 << stage
		for i := 0; i < n; i++ {
			stride := 1
			if i == 0 && stage > 0 {
				stride = 2
			}
			var l Layer
			l, in = b.block(fmt.Sprintf("layer%d.%d", stage+1, i), in, width, stride, bottleneck)
			layers = append(layers, l)
		}
	}
	layers = append(layers, &GlobalAvgPool{env: b.env, name: "avgpool"})
	return layers, in, b.err
}

// convnet builds the small encoder for 28x28 and 32x32 inputs: four 3x3
// convolutions with BN and ReLU, widths w, 2w, 4w, 8w, the last three with
// stride 2, then the global average pool. About 15 M multiply-adds per
// 32x32 view at w = 32.
func (b *builder) convnet() ([]Layer, int, error) {
	w := b.cfg.Width
	in := b.cfg.InChannels
	var layers []Layer
	for i, out := range []int{w, 2 * w, 4 * w, 8 * w} {
		stride := 2
		if i == 0 {
			stride = 1
		}
		n := fmt.Sprintf("%d", i+1)
		layers = append(layers, b.conv("conv"+n, in, out, 3, stride, 1),
			b.bn("bn"+n, out, false), b.relu("relu"+n))
		in = out
	}
	layers = append(layers, &GlobalAvgPool{env: b.env, name: "avgpool"})
	return layers, in, b.err
}

// head builds the projection head: for every width but the last a linear
// layer without bias, BN and ReLU; then a linear layer with bias. Names
// follow an nn.Sequential called "head".
func (b *builder) head(in int, dims []int) ([]Layer, *Linear, error) {
	var layers []Layer
	for i, d := range dims[:len(dims)-1] {
		k := 3 * i
		layers = append(layers, b.linear(fmt.Sprintf("head.%d", k), in, d, false),
			b.bn(fmt.Sprintf("head.%d", k+1), d, false), b.relu(fmt.Sprintf("head.%d", k+2)))
		in = d
	}
	last := b.linear(fmt.Sprintf("head.%d", 3*(len(dims)-1)), in, dims[len(dims)-1], true)
	return append(layers, last), last, b.err
}

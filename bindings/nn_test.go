package bindings

import (
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// The encoder ops' gradients against central finite differences, in
// float64. With step 1e-5 the truncation error of a central difference is
// about h^2 |f'''| ~ 1e-10 and the rounding error about 1e-16 / h ~ 1e-11
// relative to the loss, so 1e-6 (relative to the gradient's scale) fails
// only on a real mistake.

const fdStep, fdTol = 1e-5, 1e-6

var (
	nnDev     *Device
	nnDevOnce sync.Once
	nnDevErr  error
)

// nnDevice is one CPU device for all of this file's tests, never closed:
// the tests leave their many small tensors to the garbage collector, and
// a tensor must not outlive its device.
func nnDevice(t testing.TB) *Device {
	t.Helper()
	nnDevOnce.Do(func() { nnDev, nnDevErr = Open("cpu", nil) })
	if nnDevErr != nil {
		t.Fatal(nnDevErr)
	}
	return nnDev
}

// fdCase is one op under test: inputs with shapes, the forward pass that
// returns the output and the backward pass that returns one gradient per
// input listed in wrt.
type fdCase struct {
	name     string
	shapes   [][]int
	wrt      []int
	forward  func(in []*Tensor) (*Tensor, error)
	backward func(in []*Tensor, out, dy *Tensor) ([]*Tensor, error)
	// fill overrides the inputs' random values (e.g. keep ReLU away from 0).
	fill func(i int, v []float64)
}

func numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

func randSlice(r *rand.Rand, n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = r.NormFloat64()
	}
	return v
}

func mustF64(t testing.TB, dev *Device, v []float64, shape ...int) *Tensor {
	t.Helper()
	x, err := dev.FromFloat64(v, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func mustNew(t testing.TB, dev *Device, dt DType, shape ...int) *Tensor {
	t.Helper()
	x, err := dev.NewTensor(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func readF64(t testing.TB, x *Tensor) []float64 {
	t.Helper()
	v, err := x.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func runFD(t *testing.T, dev *Device, c fdCase) {
	r := rand.New(rand.NewPCG(7, uint64(len(c.name))))
	vals := make([][]float64, len(c.shapes))
	for i, s := range c.shapes {
		vals[i] = randSlice(r, numel(s))
		if c.fill != nil {
			c.fill(i, vals[i])
		}
	}
	tensors := func() []*Tensor {
		out := make([]*Tensor, len(vals))
		for i, v := range vals {
			out[i] = mustF64(t, dev, v, c.shapes[i]...)
		}
		return out
	}
	in := tensors()
	out, err := c.forward(in)
	if err != nil {
		t.Fatalf("%s forward: %v", c.name, err)
	}
	proj := randSlice(r, out.Numel())
	dy := mustF64(t, dev, proj, out.Shape()...)
	grads, err := c.backward(in, out, dy)
	if err != nil {
		t.Fatalf("%s backward: %v", c.name, err)
	}
	loss := func() float64 {
		o, err := c.forward(tensors())
		if err != nil {
			t.Fatal(err)
		}
		s := 0.0
		for i, v := range readF64(t, o) {
			s += v * proj[i]
		}
		return s
	}
	for gi, idx := range c.wrt {
		g := readF64(t, grads[gi])
		scale := 0.0
		for _, v := range g {
			scale = math.Max(scale, math.Abs(v))
		}
		// Up to 24 coordinates, spread over the tensor.
		n := len(vals[idx])
		for k := 0; k < 24 && k < n; k++ {
			j := k * n / min(24, n)
			orig := vals[idx][j]
			vals[idx][j] = orig + fdStep
			lp := loss()
			vals[idx][j] = orig - fdStep
			lm := loss()
			vals[idx][j] = orig
			fd := (lp - lm) / (2 * fdStep)
			if math.Abs(fd-g[j]) > fdTol*math.Max(scale, 1) {
				t.Errorf("%s: d/d input%d[%d]: backward %.12g, finite difference %.12g",
					c.name, idx, j, g[j], fd)
			}
		}
	}
}

func convCase(name string, x, w []int, stride, pad int) fdCase {
	conv := Conv2D{Stride: stride, Pad: pad}
	p := (x[1]+2*pad-w[1])/stride + 1
	q := (x[2]+2*pad-w[2])/stride + 1
	return fdCase{
		name: name, shapes: [][]int{x, w}, wrt: []int{0, 1},
		forward: func(in []*Tensor) (*Tensor, error) {
			y, err := in[0].Device().NewTensor(Float64, x[0], p, q, w[0])
			if err != nil {
				return nil, err
			}
			return y, conv.Forward(in[0], in[1], y)
		},
		backward: func(in []*Tensor, _, dy *Tensor) ([]*Tensor, error) {
			dev := in[0].Device()
			dx, _ := dev.NewTensor(Float64, x...)
			dw, _ := dev.NewTensor(Float64, w...)
			return []*Tensor{dx, dw}, conv.Backward(in[0], in[1], dy, dx, dw)
		},
	}
}

// bnCase checks batch norm in training or evaluation on x of any rank;
// inputs are x, gamma, beta, and in evaluation the running statistics.
func bnCase(name string, x []int, training bool) fdCase {
	c := x[len(x)-1]
	bn := BatchNorm{Training: training, Momentum: 0.1, Eps: 1e-5}
	return fdCase{
		name: name, shapes: [][]int{x, {c}, {c}, {c}, {c}}, wrt: []int{0, 1, 2},
		fill: func(i int, v []float64) {
			if i == 4 { // running variance must be positive
				for j := range v {
					v[j] = 0.5 + v[j]*v[j]
				}
			}
		},
		forward: func(in []*Tensor) (*Tensor, error) {
			dev := in[0].Device()
			y, _ := dev.NewTensor(Float64, x...)
			sm, _ := dev.NewTensor(Float64, c)
			si, _ := dev.NewTensor(Float64, c)
			return y, bn.Forward(in[0], in[1], in[2], in[3], in[4], sm, si, y)
		},
		backward: func(in []*Tensor, _, dy *Tensor) ([]*Tensor, error) {
			dev := in[0].Device()
			y, _ := dev.NewTensor(Float64, x...)
			sm, _ := dev.NewTensor(Float64, c)
			si, _ := dev.NewTensor(Float64, c)
			if err := bn.Forward(in[0], in[1], in[2], in[3], in[4], sm, si, y); err != nil {
				return nil, err
			}
			dx, _ := dev.NewTensor(Float64, x...)
			dg, _ := dev.NewTensor(Float64, c)
			db, _ := dev.NewTensor(Float64, c)
			return []*Tensor{dx, dg, db}, bn.Backward(in[0], in[1], sm, si, dy, dx, dg, db)
		},
	}
}

func TestNNGradients(t *testing.T) {
	dev := nnDevice(t)
	pool := MaxPool{Kernel: 3, Stride: 2, Pad: 1}
	cases := []fdCase{
		convCase("conv3x3", []int{2, 5, 6, 3}, []int{4, 3, 3, 3}, 1, 1),
		convCase("conv3x3 stride 2", []int{2, 7, 6, 3}, []int{5, 3, 3, 3}, 2, 1),
		convCase("conv1x1", []int{2, 4, 3, 6}, []int{5, 1, 1, 6}, 1, 0),
		convCase("conv1x1 stride 2", []int{1, 5, 5, 4}, []int{3, 1, 1, 4}, 2, 0),
		convCase("conv7x7 stride 2", []int{1, 9, 8, 2}, []int{3, 7, 7, 2}, 2, 3),
		bnCase("batchnorm train NHWC", []int{3, 2, 2, 4}, true),
		bnCase("batchnorm train NC", []int{5, 3}, true),
		bnCase("batchnorm eval", []int{2, 2, 3, 3}, false),
		{
			name: "relu", shapes: [][]int{{3, 4, 5}}, wrt: []int{0},
			fill: func(_ int, v []float64) { // keep the kink out of reach of the step
				for j := range v {
					v[j] += math.Copysign(0.1, v[j])
				}
			},
			forward: func(in []*Tensor) (*Tensor, error) {
				y, _ := dev.NewTensor(Float64, 3, 4, 5)
				return y, ReLUForward(in[0], y)
			},
			backward: func(in []*Tensor, y, dy *Tensor) ([]*Tensor, error) {
				dx, _ := dev.NewTensor(Float64, 3, 4, 5)
				return []*Tensor{dx}, ReLUBackward(y, dy, dx)
			},
		},
		{
			name: "maxpool 3x3 stride 2", shapes: [][]int{{2, 7, 6, 3}}, wrt: []int{0},
			forward: func(in []*Tensor) (*Tensor, error) {
				y, _ := dev.NewTensor(Float64, 2, 4, 3, 3)
				return y, pool.Forward(in[0], y)
			},
			backward: func(in []*Tensor, y, dy *Tensor) ([]*Tensor, error) {
				dx, _ := dev.NewTensor(Float64, 2, 7, 6, 3)
				return []*Tensor{dx}, pool.Backward(in[0], y, dy, dx)
			},
		},
		{
			name: "global avgpool", shapes: [][]int{{2, 3, 4, 5}}, wrt: []int{0},
			forward: func(in []*Tensor) (*Tensor, error) {
				y, _ := dev.NewTensor(Float64, 2, 5)
				return y, GlobalAvgPoolForward(in[0], y)
			},
			backward: func(_ []*Tensor, _, dy *Tensor) ([]*Tensor, error) {
				dx, _ := dev.NewTensor(Float64, 2, 3, 4, 5)
				return []*Tensor{dx}, GlobalAvgPoolBackward(dy, dx)
			},
		},
		{
			name: "linear", shapes: [][]int{{2, 3, 5}, {4, 5}, {4}}, wrt: []int{0, 1, 2},
			forward: func(in []*Tensor) (*Tensor, error) {
				y, _ := dev.NewTensor(Float64, 2, 3, 4)
				return y, LinearForward(in[0], in[1], in[2], y)
			},
			backward: func(in []*Tensor, _, dy *Tensor) ([]*Tensor, error) {
				dx, _ := dev.NewTensor(Float64, 2, 3, 5)
				dw, _ := dev.NewTensor(Float64, 4, 5)
				db, _ := dev.NewTensor(Float64, 4)
				return []*Tensor{dx, dw, db}, LinearBackward(in[0], in[1], dy, dx, dw, db)
			},
		},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) { runFD(t, dev, c) })
	}
}

// TestNNAdd checks the residual join's values, in place included.
func TestNNAdd(t *testing.T) {
	dev := nnDevice(t)
	a := mustF64(t, dev, []float64{1, 2, 3, 4}, 2, 2)
	b := mustF64(t, dev, []float64{0.5, -2, 10, 1e-3}, 2, 2)
	if err := Add(a, b, a); err != nil {
		t.Fatal(err)
	}
	want := []float64{1.5, 0, 13, 4.001}
	for i, v := range readF64(t, a) {
		if v != want[i] {
			t.Errorf("add[%d] = %g, want %g", i, v, want[i])
		}
	}
}

// naiveConv is the convolution's definition, the reference for the
// float32 path (im2col plus the packed AVX2 GEMM, edges included).
func naiveConv(x, w []float64, xs, ws []int, stride, pad int) []float64 {
	n, h, wd, c := xs[0], xs[1], xs[2], xs[3]
	k, r, s := ws[0], ws[1], ws[2]
	p, q := (h+2*pad-r)/stride+1, (wd+2*pad-s)/stride+1
	y := make([]float64, n*p*q*k)
	for i := 0; i < n; i++ {
		for oy := 0; oy < p; oy++ {
			for ox := 0; ox < q; ox++ {
				for o := 0; o < k; o++ {
					acc := 0.0
					for ky := 0; ky < r; ky++ {
						for kx := 0; kx < s; kx++ {
							iy, ix := oy*stride-pad+ky, ox*stride-pad+kx
							if iy < 0 || iy >= h || ix < 0 || ix >= wd {
								continue
							}
							for ch := 0; ch < c; ch++ {
								acc += x[((i*h+iy)*wd+ix)*c+ch] * w[((o*r+ky)*s+kx)*c+ch]
							}
						}
					}
					y[((i*p+oy)*q+ox)*k+o] = acc
				}
			}
		}
	}
	return y
}

func toF32(v []float64) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = float32(x)
	}
	return out
}

// TestConvFloat32 runs the float32 convolution against the definition on
// shapes whose GEMM has ragged edges in every dimension, by im2col (the
// first four: a segment of S C = 63 values, a 1x1, a 3-channel stem,
// stride 2) and with rows gathered from the padded input (the rest:
// padding 0 to 2, 3x3 and 5x5, a depth of 2700). Inputs are
// float32-exact, so the only error is float32 accumulation over R S C
// terms: about sqrt(RSC) * 6e-8 * |terms| ~ 1e-5 at these sizes; 1e-4
// relative to the output's scale leaves margin.
func TestConvFloat32(t *testing.T) {
	dev := nnDevice(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct {
		xs, ws      []int
		stride, pad int
	}{
		{[]int{3, 11, 9, 21}, []int{37, 3, 3, 21}, 1, 1},
		{[]int{2, 16, 16, 64}, []int{130, 1, 1, 64}, 1, 0},
		{[]int{2, 15, 15, 3}, []int{17, 7, 7, 3}, 2, 3},
		{[]int{2, 8, 8, 300}, []int{19, 3, 3, 300}, 2, 1},
		{[]int{3, 11, 9, 22}, []int{37, 3, 3, 22}, 1, 1},
		{[]int{2, 12, 10, 32}, []int{20, 5, 5, 32}, 1, 2},
		{[]int{2, 6, 6, 300}, []int{19, 3, 3, 300}, 1, 1},
		{[]int{2, 9, 9, 64}, []int{24, 3, 3, 64}, 1, 0},
		{[]int{4, 16, 16, 64}, []int{64, 3, 3, 64}, 1, 1},
	} {
		x := randSlice(r, numel(tc.xs))
		w := randSlice(r, numel(tc.ws))
		for i := range x {
			x[i] = float64(float32(x[i]))
		}
		for i := range w {
			w[i] = float64(float32(w[i]))
		}
		want := naiveConv(x, w, tc.xs, tc.ws, tc.stride, tc.pad)
		xt, _ := dev.FromFloat32(toF32(x), tc.xs...)
		wt, _ := dev.FromFloat32(toF32(w), tc.ws...)
		p := (tc.xs[1]+2*tc.pad-tc.ws[1])/tc.stride + 1
		q := (tc.xs[2]+2*tc.pad-tc.ws[2])/tc.stride + 1
		y := mustNew(t, dev, Float32, tc.xs[0], p, q, tc.ws[0])
		if err := (Conv2D{Stride: tc.stride, Pad: tc.pad}).Forward(xt, wt, y); err != nil {
			t.Fatal(err)
		}
		got := readF64(t, y)
		scale := 0.0
		for _, v := range want {
			scale = math.Max(scale, math.Abs(v))
		}
		for i := range want {
			if math.Abs(got[i]-want[i]) > 1e-4*scale {
				t.Fatalf("x %v w %v: y[%d] = %g, want %g", tc.xs, tc.ws, i, got[i], want[i])
			}
		}
	}
}

// TestNNErrors checks that bad shapes fail with messages naming the op,
// the argument and the problem.
func TestNNErrors(t *testing.T) {
	dev := nnDevice(t)
	x := mustNew(t, dev, Float32, 2, 8, 8, 3)
	w := mustNew(t, dev, Float32, 4, 3, 3, 5)
	y := mustNew(t, dev, Float32, 2, 8, 8, 4)
	x64 := mustNew(t, dev, Float64, 2, 8, 8, 3)
	w3 := mustNew(t, dev, Float32, 4, 3, 3, 3)
	lw := mustNew(t, dev, Float32, 4, 7)
	for _, tc := range []struct {
		err  error
		want string
	}{
		{Conv2D{Stride: 1, Pad: 1}.Forward(x, w, y), "conv2d_forward: w has 5 input channels, x has 3"},
		{Conv2D{Stride: 2, Pad: 1}.Forward(x, w3, y),
			"conv2d_forward: y has shape [2, 8, 8, 4], want [2, 4, 4, 4]"},
		{Conv2D{Stride: 0}.Forward(x, w3, y), "stride 0"},
		{Conv2D{Stride: 1, Pad: 1}.Forward(x64, w3, y), "y has dtype float32, want x's float64"},
		{LinearForward(x, lw, nil, y), "linear_forward: x has shape [2, 8, 8, 3], want [..., 7]"},
		{ReLUForward(x, y), "relu_forward: y has shape"},
		{Conv2D{Stride: 1}.Forward(x, nil, y), "conv2d forward: w is nil"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("error %v, want it to contain %q", tc.err, tc.want)
		}
	}
}

// TestConvBackwardFloat32 checks both float32 gradients of convolution
// against float64 sums over the same float32-rounded values, on cases
// that reach each way the CPU builds the gradients: by pieces per worker,
// with the transposed column matrix (R S C >= K, at strides 1 and 2 and
// with a 7x7 stem-like kernel), including a batch of 5 images of 32x32 x
// 576 in several pieces; the untransposed one (R S C < K); a 1x1 stride-2
// shortcut; stride-1 convolutions without padding and with a 5x5 kernel;
// one image, whose input gradient goes by chunks while its weight
// gradient goes by pieces; and a weight gradient over 1 MiB, by chunks
// (3 images of 24x24 x 1440: two a chunk, the second adding to the
// first). At stride 1 with K S >= 64 and weights up to 1 MiB the input
// gradient is a convolution of dy with the flipped kernel, rows gathered
// (the 5-image batch, and two more without padding and with a 5x5
// kernel).
// Tolerance: float32 sums of up to 5120 products of values below 1 in
// magnitude; their rounding error stays under 1e-4 of the largest entry.
func TestConvBackwardFloat32(t *testing.T) {
	dev := nnDevice(t)
	if err := SetCPUThreads(2); err != nil {
		t.Fatal(err)
	}
	defer SetCPUThreads(0)
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		xs, ws      []int
		stride, pad int
	}{
		{[]int{4, 16, 16, 8}, []int{16, 3, 3, 8}, 1, 1},
		{[]int{3, 9, 10, 5}, []int{7, 3, 3, 5}, 2, 1},
		{[]int{2, 15, 13, 3}, []int{8, 7, 7, 3}, 2, 3},
		{[]int{2, 6, 7, 4}, []int{40, 3, 3, 4}, 1, 1},
		{[]int{2, 8, 9, 6}, []int{12, 1, 1, 6}, 2, 0},
		{[]int{5, 32, 32, 64}, []int{64, 3, 3, 64}, 1, 1},
		{[]int{2, 9, 8, 3}, []int{4, 3, 3, 3}, 1, 0},
		{[]int{2, 10, 11, 6}, []int{5, 5, 5, 6}, 1, 1},
		{[]int{1, 12, 12, 8}, []int{16, 3, 3, 8}, 1, 1},
		{[]int{3, 24, 24, 160}, []int{200, 3, 3, 160}, 1, 1},
		{[]int{2, 9, 8, 5}, []int{30, 3, 3, 5}, 1, 0},
		{[]int{2, 10, 11, 6}, []int{20, 5, 5, 6}, 1, 2},
	} {
		n, h, wd, c := tc.xs[0], tc.xs[1], tc.xs[2], tc.xs[3]
		k, rr, ss := tc.ws[0], tc.ws[1], tc.ws[2]
		p, q := (h+2*tc.pad-rr)/tc.stride+1, (wd+2*tc.pad-ss)/tc.stride+1
		x, w, dy := randSlice(r, numel(tc.xs)), randSlice(r, numel(tc.ws)), randSlice(r, n*p*q*k)
		for _, v := range [][]float64{x, w, dy} {
			for i := range v {
				v[i] = float64(float32(v[i]))
			}
		}
		wantDW, wantDX := make([]float64, len(w)), make([]float64, len(x))
		for i := 0; i < n; i++ {
			for oy := 0; oy < p; oy++ {
				for ox := 0; ox < q; ox++ {
					for o := 0; o < k; o++ {
						g := dy[((i*p+oy)*q+ox)*k+o]
						for ky := 0; ky < rr; ky++ {
							for kx := 0; kx < ss; kx++ {
								iy, ix := oy*tc.stride-tc.pad+ky, ox*tc.stride-tc.pad+kx
								if iy < 0 || iy >= h || ix < 0 || ix >= wd {
									continue
								}
								for ch := 0; ch < c; ch++ {
									xi, wi := ((i*h+iy)*wd+ix)*c+ch, ((o*rr+ky)*ss+kx)*c+ch
									wantDW[wi] += g * x[xi]
									wantDX[xi] += g * w[wi]
								}
							}
						}
					}
				}
			}
		}
		xt, _ := dev.FromFloat32(toF32(x), tc.xs...)
		wt, _ := dev.FromFloat32(toF32(w), tc.ws...)
		dyt, _ := dev.FromFloat32(toF32(dy), n, p, q, k)
		dx, dw := mustNew(t, dev, Float32, tc.xs...), mustNew(t, dev, Float32, tc.ws...)
		if err := (Conv2D{Stride: tc.stride, Pad: tc.pad}).Backward(xt, wt, dyt, dx, dw); err != nil {
			t.Fatal(err)
		}
		for _, g := range []struct {
			name      string
			got, want []float64
		}{{"dw", readF64(t, dw), wantDW}, {"dx", readF64(t, dx), wantDX}} {
			scale := 0.0
			for _, v := range g.want {
				scale = math.Max(scale, math.Abs(v))
			}
			for i := range g.want {
				if math.Abs(g.got[i]-g.want[i]) > 1e-4*scale {
					t.Fatalf("x %v, w %v, stride %d: %s[%d] = %g, want %g", tc.xs, tc.ws,
						tc.stride, g.name, i, g.got[i], g.want[i])
				}
			}
		}
		for _, v := range []*Tensor{xt, wt, dyt, dx, dw} {
			v.Close()
		}
	}
}

// TestLinearFloat32 checks the float32 linear op, forward and backward,
// against float64 sums on shapes that cross every blocking boundary of
// the GEMM: out > 3072 columns (two B blocks), in > 256 (two depth
// blocks), ragged 6-row and 16-column edges, and a weight gradient whose
// depth (the rows) is split across threads. Tolerance as for convolution.
func TestLinearFloat32(t *testing.T) {
	dev := nnDevice(t)
	r := rand.New(rand.NewPCG(8, 9))
	for _, s := range [][3]int{{50, 300, 3090}, {1100, 37, 21}} {
		rows, in, out := s[0], s[1], s[2]
		x, w, b, dy := randSlice(r, rows*in), randSlice(r, out*in), randSlice(r, out),
			randSlice(r, rows*out)
		for _, v := range [][]float64{x, w, b, dy} {
			for i := range v {
				v[i] = float64(float32(v[i]))
			}
		}
		y, dx, dw := make([]float64, rows*out), make([]float64, rows*in), make([]float64, out*in)
		for i := 0; i < rows; i++ {
			for o := 0; o < out; o++ {
				acc := b[o]
				for k := 0; k < in; k++ {
					acc += x[i*in+k] * w[o*in+k]
					dx[i*in+k] += dy[i*out+o] * w[o*in+k]
					dw[o*in+k] += dy[i*out+o] * x[i*in+k]
				}
				y[i*out+o] = acc
			}
		}
		xt, _ := dev.FromFloat32(toF32(x), rows, in)
		wt, _ := dev.FromFloat32(toF32(w), out, in)
		bt, _ := dev.FromFloat32(toF32(b), out)
		dyt, _ := dev.FromFloat32(toF32(dy), rows, out)
		yt, dxt := mustNew(t, dev, Float32, rows, out), mustNew(t, dev, Float32, rows, in)
		dwt, dbt := mustNew(t, dev, Float32, out, in), mustNew(t, dev, Float32, out)
		if err := LinearForward(xt, wt, bt, yt); err != nil {
			t.Fatal(err)
		}
		if err := LinearBackward(xt, wt, dyt, dxt, dwt, dbt); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name      string
			got, want []float64
		}{{"y", readF64(t, yt), y}, {"dx", readF64(t, dxt), dx}, {"dw", readF64(t, dwt), dw}} {
			scale := 0.0
			for _, v := range c.want {
				scale = math.Max(scale, math.Abs(v))
			}
			for i := range c.want {
				if math.Abs(c.got[i]-c.want[i]) > 1e-4*scale {
					t.Fatalf("%v %s[%d] = %g, want %g", s, c.name, i, c.got[i], c.want[i])
				}
			}
		}
	}
}

// TestRowKernelsFloat32 runs float32 batch norm (training, forward and
// backward) against its float64 run, and ReLU and add against their
// definitions, on the same float32-exact values, with 13 channels and 481 elements, so that both
// the vector blocks and the scalar tails of the row kernels (8 floats a
// vector on AVX2) are reached. The float32 results differ from the float64
// ones only by rounding: sums of 37 terms and a few operations per value,
// well under 1e-5 relative to the scale of each output.
func TestRowKernelsFloat32(t *testing.T) {
	dev := nnDevice(t)
	const n, c = 37, 13
	r := rand.New(rand.NewPCG(11, 2))
	vals := func(k int, shift float64) []float64 {
		v := make([]float64, k)
		for i := range v {
			v[i] = float64(float32(r.NormFloat64() + shift))
		}
		return v
	}
	x, dy, gamma, beta, runVar := vals(n*c, 3), vals(n*c, 0), vals(c, 1), vals(c, 0), vals(c, 2)
	run := func(dt DType) [][]float64 {
		in := func(v []float64, shape ...int) *Tensor {
			t64 := mustF64(t, dev, v, shape...)
			if dt == Float64 {
				return t64
			}
			t32, err := dev.FromFloat32(toF32(v), shape...)
			if err != nil {
				t.Fatal(err)
			}
			return t32
		}
		tx, tdy, tg, tb := in(x, n, c), in(dy, n, c), in(gamma, c), in(beta, c)
		rm, rv := in(make([]float64, c), c), in(runVar, c)
		sm, si, y := mustNew(t, dev, dt, c), mustNew(t, dev, dt, c), mustNew(t, dev, dt, n, c)
		dx, dg, db := mustNew(t, dev, dt, n, c), mustNew(t, dev, dt, c), mustNew(t, dev, dt, c)
		bn := BatchNorm{Training: true, Momentum: 0.1, Eps: 1e-5}
		if err := bn.Forward(tx, tg, tb, rm, rv, sm, si, y); err != nil {
			t.Fatal(err)
		}
		if err := bn.Backward(tx, tg, sm, si, tdy, dx, dg, db); err != nil {
			t.Fatal(err)
		}
		out := [][]float64{readF64(t, y), readF64(t, dx), readF64(t, dg), readF64(t, db),
			readF64(t, rm), readF64(t, rv)}
		ry, rdx, sum := mustNew(t, dev, dt, n, c), mustNew(t, dev, dt, n, c), mustNew(t, dev, dt, n, c)
		if err := ReLUForward(tdy, ry); err != nil {
			t.Fatal(err)
		}
		if err := ReLUBackward(ry, tx, rdx); err != nil {
			t.Fatal(err)
		}
		if err := Add(tx, tdy, sum); err != nil {
			t.Fatal(err)
		}
		return append(out, readF64(t, ry), readF64(t, rdx), readF64(t, sum))
	}
	want, got := run(Float64), run(Float32)
	// ReLU and add from their definitions: the float64 run shares the
	// kernels' code (4 doubles a vector, the same one-element tail here).
	for i := range want[6] {
		want[6][i], want[7][i], want[8][i] = math.Max(dy[i], 0), 0, x[i]+dy[i]
		if dy[i] > 0 {
			want[7][i] = x[i]
		}
	}
	names := []string{"bn y", "bn dx", "bn dgamma", "bn dbeta", "running mean", "running var",
		"relu y", "relu dx", "add"}
	for i, name := range names {
		scale := 0.0
		for _, v := range want[i] {
			scale = math.Max(scale, math.Abs(v))
		}
		for j := range want[i] {
			if math.Abs(got[i][j]-want[i][j]) > 1e-5*scale {
				t.Errorf("%s[%d]: float32 %.8g, float64 %.8g", name, j, got[i][j], want[i][j])
				break
			}
		}
	}
}

// TestMaxPoolTies: where a window holds its largest value more than once
// (the zeros a ReLU leaves before the ImageNet stem's pool), the gradient
// goes to the first of them in window order, as the forward pass keeps
// it; the reference walks each window in that order.
func TestMaxPoolTies(t *testing.T) {
	dev := nnDevice(t)
	const n, h, w, c = 2, 7, 6, 9
	pool := MaxPool{Kernel: 3, Stride: 2, Pad: 1}
	p, q := (h+2-3)/2+1, (w+2-3)/2+1
	r := rand.New(rand.NewPCG(5, 6))
	x := make([]float64, n*h*w*c)
	for i := range x {
		x[i] = float64(r.IntN(3)) // 0, 1 or 2: many ties
	}
	dy := make([]float64, n*p*q*c)
	for i := range dy {
		dy[i] = float64(float32(r.NormFloat64()))
	}
	want := make([]float64, len(x))
	for i := 0; i < n; i++ {
		for oy := 0; oy < p; oy++ {
			for ox := 0; ox < q; ox++ {
				for ch := 0; ch < c; ch++ {
					best, arg := math.Inf(-1), -1
					for ky := 0; ky < 3; ky++ {
						for kx := 0; kx < 3; kx++ {
							iy, ix := oy*2-1+ky, ox*2-1+kx
							if iy < 0 || iy >= h || ix < 0 || ix >= w {
								continue
							}
							j := ((i*h+iy)*w+ix)*c + ch
							if arg < 0 || x[j] > best {
								best, arg = x[j], j
							}
						}
					}
					want[arg] += dy[((i*p+oy)*q+ox)*c+ch]
				}
			}
		}
	}
	for _, dt := range []DType{Float32, Float64} {
		in := func(v []float64, shape ...int) *Tensor {
			if dt == Float64 {
				return mustF64(t, dev, v, shape...)
			}
			x32, err := dev.FromFloat32(toF32(v), shape...)
			if err != nil {
				t.Fatal(err)
			}
			return x32
		}
		tx, tdy := in(x, n, h, w, c), in(dy, n, p, q, c)
		y, dx := mustNew(t, dev, dt, n, p, q, c), mustNew(t, dev, dt, n, h, w, c)
		if err := pool.Forward(tx, y); err != nil {
			t.Fatal(err)
		}
		if err := pool.Backward(tx, y, tdy, dx); err != nil {
			t.Fatal(err)
		}
		// Each input sums at most 4 float32 gradients (windows overlap by
		// one): rounding below 1e-6 of values of order 1.
		for i, v := range readF64(t, dx) {
			if math.Abs(v-want[i]) > 1e-6*math.Max(1, math.Abs(want[i])) {
				t.Fatalf("%v dx[%d] = %g, want %g", dt, i, v, want[i])
			}
		}
	}
}

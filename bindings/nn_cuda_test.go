package bindings_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/model"
)

// The CUDA encoder ops (cuda/nn_cuda.cu, cuda/nn_kernels.cuh) against the
// CPU backend on the same inputs, forward and backward, and one whole
// model step. Every test needs a GPU and skips, saying why, where none can
// be opened. The backend's own kernels (everything but the cuDNN
// convolutions and the cuBLAS products) also run emulated on the CPU in
// cuda/test_nn_emulated.cc (ctest), with the same tolerances.
//
// Products (convolution, linear) are checked against the CPU's float64
// result with a bound built from a second float64 run on |x| and |w|,
// mag = sum |x_i w_i| per output:
//   - float32: any order of fp32 sums of n products is within
//     (n - 1) 2^-24 mag of the exact sum (plus 2^-24 |y| for the final
//     rounding); 2 n 2^-24 mag covers both. TF32 rounding (2^-11 per
//     product) breaks this bound for every n < 2^12, so the check also
//     proves that no TF32 path was taken.
//   - bfloat16 activations (unit roundoff 2^-8: 8 significant bits): the
//     input is bf16 already (the CPU sees the same values), the float32
//     weights are rounded to bf16 on the GPU (at most 2^-8 mag), the
//     output is rounded to bf16 (2^-8 |y| <= 2^-8 mag): (2^-7 + 2 n 2^-24)
//     mag. The weight gradient is written by cuBLAS in fp32 (no rounding
//     of the output: the fp32 bound) and by cuDNN in bf16 (2^-8 more).

var (
	nnGPUOnce sync.Once
	nnGPUDev  *bindings.Device
	nnCPUDev  *bindings.Device
	nnGPUErr  error
)

// nnDevices returns GPU 0 and a CPU device, shared by this file's tests
// and never closed (every tensor is closed by its test), or skips.
func nnDevices(t *testing.T) (gpu, cpu *bindings.Device) {
	t.Helper()
	nnGPUOnce.Do(func() {
		nnGPUDev, nnGPUErr = bindings.Open("cuda", nil)
		if nnGPUErr == nil {
			nnCPUDev, nnGPUErr = bindings.Open("cpu", nil)
		}
	})
	if nnGPUErr != nil {
		t.Skipf("no CUDA device can be opened: %v", nnGPUErr)
	}
	return nnGPUDev, nnCPUDev
}

// nnRand draws n float32 values, normal with the given mean and scale.
func nnRand(seed uint64, n int, mean, scale float64) []float64 {
	r := rand.New(rand.NewPCG(seed, 0x6e6e))
	v := make([]float64, n)
	for i := range v {
		v[i] = float64(float32(mean + scale*r.NormFloat64()))
	}
	return v
}

// nnBF16 rounds values to bfloat16.
func nnBF16(v []float64) []float64 {
	f := make([]float32, len(v))
	for i, x := range v {
		f[i] = float32(x)
	}
	f = bindings.FromBFloat16(bindings.ToBFloat16(f))
	out := make([]float64, len(v))
	for i, x := range f {
		out[i] = float64(x)
	}
	return out
}

func nnAbs(v []float64) []float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = math.Abs(x)
	}
	return out
}

// nnTensor makes a tensor of dtype dt holding v (rounded to dt).
func nnTensor(t *testing.T, dev *bindings.Device, dt bindings.DType, v []float64,
	shape ...int) *bindings.Tensor {
	t.Helper()
	x, err := dev.NewTensor(dt, shape...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(x.Close)
	if v == nil {
		v = make([]float64, x.Numel())
	}
	if dt == bindings.Float64 {
		err = x.WriteFloat64(v)
	} else {
		f := make([]float32, len(v))
		for i, e := range v {
			f[i] = float32(e)
		}
		err = x.WriteFloat32(f)
	}
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func nnRead(t *testing.T, x *bindings.Tensor) []float64 {
	t.Helper()
	v, err := x.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func nnMust(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// nnWithin checks |got - want| <= bound elementwise and reports the worst
// element relative to its bound.
func nnWithin(t *testing.T, what string, got, want, bound []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	worst, at := 0.0, -1
	for i := range got {
		r := math.Abs(got[i]-want[i]) / math.Max(bound[i], 1e-300)
		if math.IsNaN(r) {
			r = math.Inf(1)
		}
		if r > worst || at < 0 {
			worst, at = r, i
		}
	}
	if worst > 1 {
		t.Errorf("%s: element %d is %g, want %g within %.2g (%.1fx the bound)", what, at,
			got[at], want[at], bound[at], worst)
	}
}

// nnRelBound is tol (1 + |want|) per element.
func nnRelBound(want []float64, tol float64) []float64 {
	b := make([]float64, len(want))
	for i, w := range want {
		b[i] = tol * (1 + math.Abs(w))
	}
	return b
}

// nnProductBound is (lead + 2 n 2^-24) mag + 2^-126 per element (see the
// comment at the top of the file).
func nnProductBound(mag []float64, n int, lead float64) []float64 {
	b := make([]float64, len(mag))
	for i, m := range mag {
		b[i] = (lead+2*float64(n)*math.Ldexp(1, -24))*m + math.Ldexp(1, -126)
	}
	return b
}

var nnDTypes = []bindings.DType{bindings.Float32, bindings.BFloat16}

// nnLead is the bound's term for bf16 roundings of weights and output.
func nnLead(dt bindings.DType) float64 {
	if dt == bindings.BFloat16 {
		return math.Ldexp(1, -7)
	}
	return 0
}

func TestCUDAConvMatchesCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	cases := []struct {
		name        string
		x, w        [4]int
		stride, pad int
	}{
		{"3x3 rgb", [4]int{4, 12, 12, 3}, [4]int{8, 3, 3, 3}, 1, 1},
		{"3x3 stride 2", [4]int{2, 9, 9, 16}, [4]int{24, 3, 3, 16}, 2, 1},
		{"1x1", [4]int{3, 5, 5, 32}, [4]int{16, 1, 1, 32}, 1, 0},
		{"1x1 stride 2", [4]int{2, 8, 8, 8}, [4]int{16, 1, 1, 8}, 2, 0},
		{"7x7 stem", [4]int{2, 20, 20, 3}, [4]int{8, 7, 7, 3}, 2, 3},
	}
	for ci, c := range cases {
		for _, dt := range nnDTypes {
			t.Run(fmt.Sprintf("%s/%v", c.name, dt), func(t *testing.T) {
				op := bindings.Conv2D{Stride: c.stride, Pad: c.pad}
				p := (c.x[1]+2*c.pad-c.w[1])/c.stride + 1
				q := (c.x[2]+2*c.pad-c.w[2])/c.stride + 1
				xs, ws, ys := c.x[:], c.w[:], []int{c.x[0], p, q, c.w[0]}
				x := nnRand(uint64(ci), c.x[0]*c.x[1]*c.x[2]*c.x[3], 0, 1)
				w := nnRand(uint64(ci+100), c.w[0]*c.w[1]*c.w[2]*c.w[3], 0, 0.3)
				dy := nnRand(uint64(ci+200), ys[0]*ys[1]*ys[2]*ys[3], 0, 1)
				if dt == bindings.BFloat16 {
					x, dy = nnBF16(x), nnBF16(dy)
				}

				// float64 references: values and magnitudes.
				ref := func(x, w, dy []float64) (y, dx, dw []float64) {
					f := bindings.Float64
					xt, wt := nnTensor(t, cpu, f, x, xs...), nnTensor(t, cpu, f, w, ws...)
					yt, dyt := nnTensor(t, cpu, f, nil, ys...), nnTensor(t, cpu, f, dy, ys...)
					dxt, dwt := nnTensor(t, cpu, f, nil, xs...), nnTensor(t, cpu, f, nil, ws...)
					nnMust(t, "cpu forward", op.Forward(xt, wt, yt))
					nnMust(t, "cpu backward", op.Backward(xt, wt, dyt, dxt, dwt))
					return nnRead(t, yt), nnRead(t, dxt), nnRead(t, dwt)
				}
				y64, dx64, dw64 := ref(x, w, dy)
				ymag, dxmag, dwmag := ref(nnAbs(x), nnAbs(w), nnAbs(dy))

				f32 := bindings.Float32
				xg, wg := nnTensor(t, gpu, dt, x, xs...), nnTensor(t, gpu, f32, w, ws...)
				yg, dyg := nnTensor(t, gpu, dt, nil, ys...), nnTensor(t, gpu, dt, dy, ys...)
				dxg, dwg := nnTensor(t, gpu, dt, nil, xs...), nnTensor(t, gpu, f32, nil, ws...)
				nnMust(t, "gpu forward", op.Forward(xg, wg, yg))
				nnMust(t, "gpu backward", op.Backward(xg, wg, dyg, dxg, dwg))

				kdim := c.w[1] * c.w[2] * c.w[3]
				nnWithin(t, "y", nnRead(t, yg), y64, nnProductBound(ymag, kdim, nnLead(dt)))
				nnWithin(t, "dx", nnRead(t, dxg), dx64,
					nnProductBound(dxmag, c.w[0]*c.w[1]*c.w[2], nnLead(dt)))
				// dw: x and dy are exact; bf16 adds cuDNN's bf16 output (2^-8).
				lead := 0.0
				if dt == bindings.BFloat16 {
					lead = math.Ldexp(1, -8)
				}
				dw1 := nnRead(t, dwg)
				nnWithin(t, "dw", dw1, dw64, nnProductBound(dwmag, ys[0]*p*q, lead))

				// Deterministic algorithms: a second pass repeats bit for bit.
				nnMust(t, "gpu backward again", op.Backward(xg, wg, dyg, nil, dwg))
				dw2 := nnRead(t, dwg)
				for i := range dw1 {
					if dw1[i] != dw2[i] {
						t.Errorf("dw[%d] is %g, then %g: backward filter is not deterministic",
							i, dw1[i], dw2[i])
						break
					}
				}
			})
		}
	}
}

func TestCUDALinearMatchesCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	const rows, in, out = 37, 50, 24
	for _, dt := range nnDTypes {
		t.Run(dt.String(), func(t *testing.T) {
			x := nnRand(1, rows*in, 0, 1)
			w := nnRand(2, out*in, 0, 0.2)
			b := nnRand(3, out, 0, 1)
			dy := nnRand(4, rows*out, 0.1, 1)
			if dt == bindings.BFloat16 {
				x, dy = nnBF16(x), nnBF16(dy)
			}
			ref := func(x, w, b, dy []float64) (y, dx, dw, db []float64) {
				f := bindings.Float64
				xt, wt, bt := nnTensor(t, cpu, f, x, rows, in), nnTensor(t, cpu, f, w, out, in),
					nnTensor(t, cpu, f, b, out)
				yt, dyt := nnTensor(t, cpu, f, nil, rows, out), nnTensor(t, cpu, f, dy, rows, out)
				dxt, dwt, dbt := nnTensor(t, cpu, f, nil, rows, in),
					nnTensor(t, cpu, f, nil, out, in), nnTensor(t, cpu, f, nil, out)
				nnMust(t, "cpu forward", bindings.LinearForward(xt, wt, bt, yt))
				nnMust(t, "cpu backward", bindings.LinearBackward(xt, wt, dyt, dxt, dwt, dbt))
				return nnRead(t, yt), nnRead(t, dxt), nnRead(t, dwt), nnRead(t, dbt)
			}
			y64, dx64, dw64, db64 := ref(x, w, b, dy)
			ymag, dxmag, dwmag, dbmag := ref(nnAbs(x), nnAbs(w), nnAbs(b), nnAbs(dy))

			f32 := bindings.Float32
			xg, wg, bg := nnTensor(t, gpu, dt, x, rows, in), nnTensor(t, gpu, f32, w, out, in),
				nnTensor(t, gpu, f32, b, out)
			yg, dyg := nnTensor(t, gpu, dt, nil, rows, out), nnTensor(t, gpu, dt, dy, rows, out)
			dxg := nnTensor(t, gpu, dt, nil, rows, in)
			dwg, dbg := nnTensor(t, gpu, f32, nil, out, in), nnTensor(t, gpu, f32, nil, out)
			nnMust(t, "gpu forward", bindings.LinearForward(xg, wg, bg, yg))
			nnMust(t, "gpu backward", bindings.LinearBackward(xg, wg, dyg, dxg, dwg, dbg))

			// The bias is one more term of each sum: n = in + 1.
			nnWithin(t, "y", nnRead(t, yg), y64, nnProductBound(ymag, in+1, nnLead(dt)))
			nnWithin(t, "dx", nnRead(t, dxg), dx64, nnProductBound(dxmag, out, nnLead(dt)))
			nnWithin(t, "dw", nnRead(t, dwg), dw64, nnProductBound(dwmag, rows, 0))
			nnWithin(t, "db", nnRead(t, dbg), db64, nnProductBound(dbmag, rows, 0))
		})
	}
}

// Batch norm's sums are double on both sides and differ only in order,
// so the statistics agree to an ulp of float32 and y and dx to a few ulps:
// 1e-5 (1 + |want|). bf16 activations add one rounding of y or dx (2^-8
// relative, with margin: 5e-3).
func TestCUDABatchNormMatchesCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	shapes := [][]int{{4, 6, 6, 40}, {64, 48}, {2, 3, 3, 7}}
	for si, shape := range shapes {
		for _, training := range []bool{true, false} {
			for _, dt := range nnDTypes {
				name := fmt.Sprintf("%v/training=%v/%v", shape, training, dt)
				t.Run(name, func(t *testing.T) {
					c := shape[len(shape)-1]
					n := 1
					for _, d := range shape {
						n *= d
					}
					x := nnRand(uint64(si), n, 0.5, 2)
					dy := nnRand(uint64(si+10), n, 0, 1)
					if dt == bindings.BFloat16 {
						x, dy = nnBF16(x), nnBF16(dy)
					}
					gamma, beta := nnRand(20, c, 1, 0.5), nnRand(21, c, 0, 1)
					rm, rv := nnRand(22, c, 0, 0.1), nnRand(23, c, 1, 0.1)
					op := bindings.BatchNorm{Training: training, Momentum: 0.1, Eps: 1e-5}
					run := func(dev *bindings.Device, act bindings.DType) [][]float64 {
						f := bindings.Float32
						full := func(v []float64) *bindings.Tensor {
							return nnTensor(t, dev, act, v, shape...)
						}
						vec := func(v []float64) *bindings.Tensor {
							return nnTensor(t, dev, f, v, c)
						}
						xt, dyt, yt, dxt := full(x), full(dy), full(nil), full(nil)
						gt, bt, rmt, rvt := vec(gamma), vec(beta), vec(rm), vec(rv)
						smt, sit, dgt, dbt := vec(nil), vec(nil), vec(nil), vec(nil)
						nnMust(t, "forward", op.Forward(xt, gt, bt, rmt, rvt, smt, sit, yt))
						nnMust(t, "backward", op.Backward(xt, gt, smt, sit, dyt, dxt, dgt, dbt))
						out := [][]float64{}
						all := []*bindings.Tensor{yt, dxt, rmt, rvt, smt, sit, dgt, dbt}
						for _, r := range all {
							out = append(out, nnRead(t, r))
						}
						return out
					}
					got, want := run(gpu, dt), run(cpu, bindings.Float32)
					names := []string{"y", "dx", "running mean", "running var", "save mean",
						"save invstd", "dgamma", "dbeta"}
					for i := range names {
						tol := 1e-5
						if i < 2 && dt == bindings.BFloat16 {
							tol = 5e-3
						}
						nnWithin(t, names[i], got[i], want[i], nnRelBound(want[i], tol))
					}
				})
			}
		}
	}
}

// ReLU, add and pooling compute the CPU's float32 operations in the CPU's
// order (max pooling's gradient gathers over windows in the CPU's order;
// the average sums in double like the CPU): equal bit for bit in float32.
// bf16 inputs are bf16 already; ReLU and the max pass values through
// exactly, the rest round a float32 sum or product once (2^-8 relative).
func TestCUDAElementwiseAndPoolingMatchCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	for _, dt := range nnDTypes {
		t.Run(dt.String(), func(t *testing.T) {
			shape := []int{3, 9, 7, 20}
			n := 3 * 9 * 7 * 20
			// Small integers: many ties for the pooling tie rule, and zeros.
			r := rand.New(rand.NewPCG(5, 5))
			x := make([]float64, n)
			for i := range x {
				x[i] = float64(r.IntN(5) - 2)
			}
			b, dy := nnRand(6, n, 0, 1), nnRand(7, n, 0, 1)
			if dt == bindings.BFloat16 {
				b, dy = nnBF16(b), nnBF16(dy)
			}
			pool := bindings.MaxPool{Kernel: 3, Stride: 2, Pad: 1}
			ps := []int{3, 5, 4, 20}
			pn := 3 * 5 * 4 * 20
			pdy := nnRand(8, pn, 0, 1)
			gdy := nnRand(9, 3*20, 0, 1)
			if dt == bindings.BFloat16 {
				pdy, gdy = nnBF16(pdy), nnBF16(gdy)
			}
			run := func(dev *bindings.Device, act bindings.DType) map[string][]float64 {
				tn := func(v []float64, s ...int) *bindings.Tensor {
					return nnTensor(t, dev, act, v, s...)
				}
				xt, bt, dyt := tn(x, shape...), tn(b, shape...), tn(dy, shape...)
				yt, dxt, st := tn(nil, shape...), tn(nil, shape...), tn(nil, shape...)
				nnMust(t, "relu forward", bindings.ReLUForward(xt, yt))
				nnMust(t, "relu backward", bindings.ReLUBackward(yt, dyt, dxt))
				nnMust(t, "add", bindings.Add(xt, bt, st))
				py, pdyt, pdx := tn(nil, ps...), tn(pdy, ps...), tn(nil, shape...)
				nnMust(t, "maxpool forward", pool.Forward(xt, py))
				nnMust(t, "maxpool backward", pool.Backward(xt, py, pdyt, pdx))
				gy, gdyt, gdx := tn(nil, 3, 20), tn(gdy, 3, 20), tn(nil, shape...)
				nnMust(t, "avgpool forward", bindings.GlobalAvgPoolForward(bt, gy))
				nnMust(t, "avgpool backward", bindings.GlobalAvgPoolBackward(gdyt, gdx))
				out := map[string][]float64{}
				for k, v := range map[string]*bindings.Tensor{"relu y": yt, "relu dx": dxt,
					"add": st, "maxpool y": py, "maxpool dx": pdx, "avgpool y": gy,
					"avgpool dx": gdx} {
					out[k] = nnRead(t, v)
				}
				return out
			}
			got, want := run(gpu, dt), run(cpu, bindings.Float32)
			for k, w := range want {
				tol := 0.0
				if dt == bindings.BFloat16 && k != "relu y" && k != "relu dx" && k != "maxpool y" {
					tol = 5e-3 // one rounding to bf16 of a sum or product
				}
				nnWithin(t, k, got[k], w, nnRelBound(w, tol))
			}
		})
	}
}

// Three steps of each optimizer: the CPU's float32 expressions term for
// term; the GPU may fuse a multiply and an add (an ulp), and LARS sums its
// norms in double in another order: 1e-6 (1 + |want|).
func TestCUDAOptimizerMatchesCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	steps := []bindings.OptimizerStep{
		{Kind: bindings.SGD, LR: 0.1, Momentum: 0.9, WeightDecay: 1e-2},
		{Kind: bindings.SGD, LR: 0.1, Momentum: 0.9, WeightDecay: 1e-2, Nesterov: true},
		{Kind: bindings.LARS, LR: 2, Momentum: 0.9, WeightDecay: 1e-2, Eta: 1e-3},
		{Kind: bindings.LARS, LR: 2, Momentum: 0.9, WeightDecay: 1e-2, Eta: 1e-3, Exclude: true},
		{Kind: bindings.AdamW, LR: 1e-3, WeightDecay: 0.05, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8},
	}
	const n = 100003
	for i, o := range steps {
		t.Run(fmt.Sprintf("%v/exclude=%v/nesterov=%v", o.Kind, o.Exclude, o.Nesterov),
			func(t *testing.T) {
				run := func(dev *bindings.Device) [][]float64 {
					f := bindings.Float32
					p := nnTensor(t, dev, f, nnRand(uint64(i), n, 0, 1), n)
					s0, s1 := nnTensor(t, dev, f, nil, n), nnTensor(t, dev, f, nil, n)
					g := nnTensor(t, dev, f, nil, n)
					if o.Kind != bindings.AdamW {
						s1 = nil
					}
					for step := 1; step <= 3; step++ {
						gv := nnRand(uint64(100+step), n, 0, 0.1)
						f32 := make([]float32, n)
						for k, v := range gv {
							f32[k] = float32(v)
						}
						nnMust(t, "write grad", g.WriteFloat32(f32))
						o.Step = step
						nnMust(t, "step", o.Apply(p, g, s0, s1))
					}
					out := [][]float64{nnRead(t, p), nnRead(t, s0)}
					if s1 != nil {
						out = append(out, nnRead(t, s1))
					}
					return out
				}
				got, want := run(gpu), run(cpu)
				for k := range want {
					what := fmt.Sprintf("tensor %d", k)
					nnWithin(t, what, got[k], want[k], nnRelBound(want[k], 1e-6))
				}
			})
	}
}

// One training step of the ConvNet with a projection head on the GPU and
// on the CPU from the same weights and views: output, every parameter's
// gradient, the BN running statistics, and the weights after an SGD step.
// Each layer's float32 result differs from the CPU's by summation order,
// ~sqrt(n) 2^-24 relative (1e-6 for these sizes); seven layers forward and
// back, with BN's mean subtraction amplifying relative error up to ~10x
// where features nearly cancel, stay near 1e-4. The bounds, on
// ||got - want|| / ||want|| per tensor, are 1e-4 on the output and 1e-3
// on gradients and statistics: ~10x over that estimate, and far under
// what any indexing or formula error produces (O(1)).
func TestCUDAModelStepMatchesCPU(t *testing.T) {
	gpu, cpu := nnDevices(t)
	cfg := model.Config{Arch: "convnet", Width: 8, HeadDims: []int{32, 16}, Seed: 7}
	build := func(dev *bindings.Device) *model.Model {
		m, err := model.New(dev, cfg)
		nnMust(t, "model", err)
		t.Cleanup(m.Close)
		return m
	}
	mc, mg := build(cpu), build(gpu)
	// The same weights and statistics, copied from the CPU model.
	copyAll := func(src, dst []*model.Param) {
		for i, p := range src {
			v := nnRead(t, p.Value)
			f := make([]float32, len(v))
			for k, e := range v {
				f[k] = float32(e)
			}
			nnMust(t, "copy "+p.Name, dst[i].Value.WriteFloat32(f))
		}
	}
	copyAll(mc.Params(), mg.Params())
	copyAll(mc.Buffers(), mg.Buffers())

	const batch, size = 8, 16
	x := nnRand(42, batch*size*size*3, 0, 1)
	dz := nnRand(43, batch*16, 0, 0.1)
	relErr := func(got, want []float64) float64 {
		var num, den float64
		for i := range got {
			num += (got[i] - want[i]) * (got[i] - want[i])
			den += want[i] * want[i]
		}
		return math.Sqrt(num / math.Max(den, 1e-300))
	}
	check := func(what string, got, want []float64, tol float64) {
		t.Helper()
		if e := relErr(got, want); !(e <= tol) {
			t.Errorf("%s: relative error %.2g, want <= %.0g", what, e, tol)
		}
	}
	step := func(m *model.Model, dev *bindings.Device) []float64 {
		xt := nnTensor(t, dev, bindings.Float32, x, batch, size, size, 3)
		z, err := m.Forward(xt)
		nnMust(t, "forward", err)
		out := nnRead(t, z)
		dzt := nnTensor(t, dev, bindings.Float32, dz, batch, 16)
		nnMust(t, "backward", m.Backward(dzt))
		return out
	}
	check("output", step(mg, gpu), step(mc, cpu), 1e-4)
	pg, pc := mg.Params(), mc.Params()
	for i := range pc {
		check(pc[i].Name+" grad", nnRead(t, pg[i].Grad), nnRead(t, pc[i].Grad), 1e-3)
	}
	bg, bc := mg.Buffers(), mc.Buffers()
	for i := range bc {
		check(bc[i].Name, nnRead(t, bg[i].Value), nnRead(t, bc[i].Value), 1e-3)
	}
	opt := bindings.OptimizerStep{Kind: bindings.SGD, LR: 0.1, Momentum: 0.9, WeightDecay: 1e-4}
	for i := range pc {
		for _, side := range []struct {
			p   *model.Param
			dev *bindings.Device
		}{{pg[i], gpu}, {pc[i], cpu}} {
			mom := nnTensor(t, side.dev, bindings.Float32, nil, side.p.Value.Shape()...)
			o := opt
			o.Exclude = side.p.NoDecay
			nnMust(t, "sgd "+side.p.Name, o.Apply(side.p.Value, side.p.Grad, mom, nil))
		}
		check(pc[i].Name+" after sgd", nnRead(t, pg[i].Value), nnRead(t, pc[i].Value), 1e-4)
	}
}

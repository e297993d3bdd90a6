package bindings

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// The CUDA loss against the CPU float64 reference, on the same inputs.
// Every test here needs a GPU and skips, saying why, where none can be
// opened; TestCUDABackendLoads needs only the library that CMake builds.
// The same kernels also run on the CPU, emulated, in the C++ test
// cuda/test_loss_emulated.cc (ctest), with the same tolerances.

// gpuDevice opens GPU 0 or skips the test with the reason.
func gpuDevice(t *testing.T) *Device {
	t.Helper()
	dev, err := Open("cuda", nil)
	if err != nil {
		t.Skipf("no CUDA device can be opened: %v", err)
	}
	t.Cleanup(dev.Close)
	return dev
}

// TestCUDABackendLoads checks, on any machine where the library is built,
// that it loads and answers a device count (0 without a driver) instead of
// failing: what CI without a GPU can check of the CUDA build.
func TestCUDABackendLoads(t *testing.T) {
	path, ok := FindCUDALibrary()
	if !ok {
		t.Skipf("no %s built (cmake -B build && cmake --build build)", CUDALibraryName)
	}
	if err := LoadCUDA(path); err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	n, err := CUDADeviceCount()
	if err != nil {
		t.Fatalf("device count: %v", err)
	}
	t.Logf("%s loaded; %d GPUs", path, n)
}

// gpuInputKind says how a test input is drawn and so which tolerance
// applies (see gpuTolerance).
type gpuInputKind int

const (
	gpuF32       gpuInputKind = iota // Gaussian float32
	gpuBF16Exact                     // bf16 rows whose normalisation is exact in bf16
	gpuBF16                          // Gaussian rounded to bf16
)

type gpuVariant struct {
	name     string
	kind     gpuInputKind
	in, grad DType
}

var gpuVariants = []gpuVariant{
	{"f32", gpuF32, Float32, Float32},
	{"bf16-exact", gpuBF16Exact, BFloat16, Float32},
	{"bf16-exact/bf16-grad", gpuBF16Exact, BFloat16, BFloat16},
	{"bf16", gpuBF16, BFloat16, Float32},
}

// gpuInput draws h [n, m, d]. gpuBF16Exact rows have four entries +-2^k
// (one when d < 4) and zeros, so ||h|| = 2^(k+1) and z = h / ||h|| is
// +-1/2: the tensor-core path then multiplies exactly the z that the
// reference uses, and what differs is the kernels' own arithmetic. Values
// of bf16 kinds are already bf16, so the CPU reference sees the GPU's
// input.
func gpuInput(kind gpuInputKind, n, m, d int, seed uint64) []float32 {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	h := make([]float32, n*m*d)
	if kind == gpuBF16Exact {
		nz := 4
		if d < 4 {
			nz = 1
		}
		for row := 0; row < n*m; row++ {
			mag := float32(math.Ldexp(1, rng.IntN(7)-3))
			for k := 0; k < nz; k++ {
				t := rng.IntN(d)
				for h[row*d+t] != 0 {
					t = rng.IntN(d)
				}
				if rng.IntN(2) == 0 {
					h[row*d+t] = mag
				} else {
					h[row*d+t] = -mag
				}
			}
		}
		return h
	}
	for i := range h {
		h[i] = float32(rng.NormFloat64())
	}
	if kind == gpuBF16 {
		h = FromBFloat16(ToBFloat16(h))
	}
	return h
}

// gpuTolerance bounds |loss - want| and ||grad - want|| / ||want|| (the
// gradient's entries are sums that nearly cancel, so an entry-wise
// relative error says little).
//
//   - f32: S, the LSEs and G are fp32 against float64. A dot product of
//     unit vectors is good to ~sqrt(d) 2^-24, times 1/tau; sums of <= R
//     terms add ~R 2^-24: 1e-5 relative on the loss, 1e-4 on the gradient.
//     (The emulated kernels show 1e-8 and 3e-7.)
//   - bf16-exact: as f32, plus G multiplied as hi + lo bf16 halves (2^-16
//     relative per entry): 1e-5 and 1e-4 (emulated: 2e-8 and 4e-6). A bf16
//     gradient adds its own rounding, 2^-9 per entry: 5e-3 (emulated 2e-3).
//   - bf16 (any other input): z is rounded to bf16, |dz| <= 2^-8, so every
//     logit moves by at most delta = 2^-7 / tau. Each LSE is 1-Lipschitz
//     in the logits and a loss term holds at most M + 1 of them: |dL| <=
//     (M + 1) delta. Softmax weights move by at most a factor
//     exp(+-2 delta): 4 delta on the gradient. Observed errors sit ~50x
//     inside both; bf16-exact is the tight check of the kernels.
//   - suffstats feeds T = mean of the other M - 1 views to the tensor
//     cores, exact in bf16 only when M - 1 is a power of two; otherwise
//     bf16-exact gets the bf16 bounds.
func gpuTolerance(v gpuVariant, obj Objective, m int, tau, want float64) (loss, grad float64) {
	kind := v.kind
	if kind == gpuBF16Exact && obj == SuffStats && (m-1)&(m-2) != 0 {
		kind = gpuBF16
	}
	switch kind {
	case gpuF32:
		return 1e-5 * math.Abs(want), 1e-4
	case gpuBF16Exact:
		if v.grad == BFloat16 {
			return 1e-5 * math.Abs(want), 5e-3
		}
		return 1e-5 * math.Abs(want), 1e-4
	}
	delta := math.Ldexp(1, -7) / tau
	return float64(m+1) * delta, 4 * delta
}

// gpuEval runs obj on the GPU: the loss from ForwardBackward, the gradient
// read back as float64, and the loss of Forward alone.
func gpuEval(t *testing.T, dev *Device, obj Objective, tau float64, h []float32, n, m, d int,
	in, gradType DType) (loss, lossOnly float64, grad []float64, err error) {
	t.Helper()
	var ht *Tensor
	if in == BFloat16 {
		ht, err = dev.FromBFloat16(h, n, m, d)
	} else {
		ht, err = dev.FromFloat32(h, n, m, d)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	g, err := dev.NewTensor(gradType, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	l := Loss{Objective: obj, Tau: tau}
	if loss, err = l.ForwardBackward(ht, g); err != nil {
		return 0, 0, nil, err
	}
	if lossOnly, err = l.Forward(ht); err != nil {
		return 0, 0, nil, err
	}
	grad, err = g.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return loss, lossOnly, grad, nil
}

func gpuNormRelErr(got, want []float64) float64 {
	var num, den float64
	for i := range want {
		num += (got[i] - want[i]) * (got[i] - want[i])
		den += want[i] * want[i]
	}
	return math.Sqrt(num / math.Max(den, 1e-300))
}

func gpuFloat64s(h []float32) []float64 {
	out := make([]float64, len(h))
	for i, v := range h {
		out[i] = float64(v)
	}
	return out
}

// TestCUDALossMatchesCPU compares every objective, loss and gradient, for
// several shapes: the smallest problem; M > 2; a realistic 64 x 8 x 128;
// N past one 64-row tile and not a multiple of it, with d not a multiple
// of 32; d = 1; d past one 128-column slice of the gradient kernel; and a
// low temperature. Forward alone must give the very loss of
// ForwardBackward (same kernels, same order).
func TestCUDALossMatchesCPU(t *testing.T) {
	gpu := gpuDevice(t)
	cpu := cpuDevice(t)
	shapes := []struct {
		n, m, d int
		tau     float64
	}{
		{2, 2, 5, 0.2}, {3, 4, 5, 0.2}, {64, 8, 128, 0.2}, {70, 3, 33, 0.2},
		{5, 3, 1, 0.2}, {9, 4, 300, 0.2}, {130, 2, 64, 0.05},
	}
	for _, s := range shapes {
		for _, v := range gpuVariants {
			for _, obj := range Objectives() {
				if obj == SimCLR && s.m != 2 {
					continue
				}
				name := fmt.Sprintf("%v/N=%d,M=%d,d=%d,tau=%g/%s", obj, s.n, s.m, s.d, s.tau, v.name)
				seed := uint64(s.n*1000003 + s.m*1009 + s.d*7 + int(obj))
				h := gpuInput(v.kind, s.n, s.m, s.d, seed)
				want, wantGrad := evalLoss(t, cpu, obj, s.tau, gpuFloat64s(h), s.n, s.m, s.d)
				got, gotOnly, grad, err := gpuEval(t, gpu, obj, s.tau, h, s.n, s.m, s.d, v.in, v.grad)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				lossTol, gradTol := gpuTolerance(v, obj, s.m, s.tau, want)
				lossErr, gradErr := math.Abs(got-want), gpuNormRelErr(grad, wantGrad)
				if !(lossErr <= lossTol) || !(gradErr <= gradTol) {
					t.Errorf("%s: loss %.9f, want %.9f (|err| %.2g > %.2g?); grad error %.2g (> %.2g?)",
						name, got, want, lossErr, lossTol, gradErr, gradTol)
				}
				if gotOnly != got {
					t.Errorf("%s: Forward gives %.17g, ForwardBackward %.17g", name, gotOnly, got)
				}
			}
		}
	}
}

// TestCUDALossRepeatable: every output element has one owner and a fixed
// order of sums, so two runs agree bit for bit.
func TestCUDALossRepeatable(t *testing.T) {
	gpu := gpuDevice(t)
	h := gpuInput(gpuF32, 100, 4, 96, 11)
	for _, in := range []DType{Float32, BFloat16} {
		l1, _, g1, err1 := gpuEval(t, gpu, APVC, 0.1, h, 100, 4, 96, in, Float32)
		l2, _, g2, err2 := gpuEval(t, gpu, APVC, 0.1, h, 100, 4, 96, in, Float32)
		if err1 != nil || err2 != nil {
			t.Fatalf("%v: %v, %v", in, err1, err2)
		}
		if l1 != l2 {
			t.Errorf("%v: loss %.17g then %.17g", in, l1, l2)
		}
		for i := range g1 {
			if g1[i] != g2[i] {
				t.Errorf("%v: grad[%d] %.9g then %.9g", in, i, g1[i], g2[i])
				break
			}
		}
	}
}

// TestCUDALossGradOverH: grad may be h itself (the kernels read h only
// before writing grad).
func TestCUDALossGradOverH(t *testing.T) {
	gpu := gpuDevice(t)
	const n, m, d = 70, 3, 33
	h := gpuInput(gpuF32, n, m, d, 5)
	want, wantGrad := evalLoss(t, cpuDevice(t), GPVC, 0.2, gpuFloat64s(h), n, m, d)
	ht, err := gpu.FromFloat32(h, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	got, err := Loss{Objective: GPVC, Tau: 0.2}.ForwardBackward(ht, ht)
	if err != nil {
		t.Fatal(err)
	}
	grad, err := ht.Float64()
	if err != nil {
		t.Fatal(err)
	}
	if relErr(got, want) > 1e-5 || gpuNormRelErr(grad, wantGrad) > 1e-4 {
		t.Errorf("loss %.9f, want %.9f; grad error %.2g", got, want, gpuNormRelErr(grad, wantGrad))
	}
}

// TestCUDALossBadRows: a zero-norm or non-finite row is a numeric error
// that names the first bad row, worded exactly as by the CPU backend.
func TestCUDALossBadRows(t *testing.T) {
	gpu := gpuDevice(t)
	cpu := cpuDevice(t)
	const n, m, d = 4, 3, 6
	for _, c := range []struct {
		name string
		row  []float32
	}{
		{"zero norm", make([]float32, d)},
		{"NaN", []float32{1, 2, float32(math.NaN()), 0, 1, 1}},
		{"Inf", []float32{1, float32(math.Inf(-1)), 0, 0, 1, 1}},
	} {
		h := gpuInput(gpuF32, n, m, d, 3)
		copy(h[(2*m+1)*d:], c.row) // h[2][1]
		copy(h[(3*m+0)*d:], c.row) // a later bad row, not named
		for _, in := range []DType{Float32, BFloat16} {
			_, _, _, gerr := gpuEval(t, gpu, GPVC, 0.2, h, n, m, d, in, Float32)
			_, _, _, cerr := gpuEval(t, cpu, GPVC, 0.2, h, n, m, d, in, Float32)
			var ge, ce *Error
			if !errors.As(gerr, &ge) || !errors.As(cerr, &ce) {
				t.Fatalf("%s %v: errors %v (gpu), %v (cpu)", c.name, in, gerr, cerr)
			}
			if ge.Code != StatusNumeric || ge.Msg != ce.Msg {
				t.Errorf("%s %v: gpu %v %q, cpu %v %q", c.name, in, ge.Code, ge.Msg, ce.Code, ce.Msg)
			}
		}
	}
}

// TestCUDALossMemory: the loss's workspace is counted while it runs and
// given back after, and it is O(R d + R M), not O(R^2).
func TestCUDALossMemory(t *testing.T) {
	gpu := gpuDevice(t)
	const n, m, d = 512, 8, 128 // R = 4096: an R x R float32 matrix would be 64 MiB
	h := gpuInput(gpuF32, n, m, d, 9)
	ht, err := gpu.FromFloat32(h, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	g, err := gpu.NewTensor(Float32, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	before, _, err := gpu.Memory()
	if err != nil {
		t.Fatal(err)
	}
	if err := gpu.ResetPeak(); err != nil {
		t.Fatal(err)
	}
	if _, err := (Loss{Objective: MultiCrop, Tau: 0.2}).ForwardBackward(ht, g); err != nil {
		t.Fatal(err)
	}
	if err := gpu.Synchronize(); err != nil {
		t.Fatal(err)
	}
	after, peak, err := gpu.Memory()
	if err != nil {
		t.Fatal(err)
	}
	// z (fp32), dz (fp32) and the [N][M][M] statistics, with slack.
	limit := int64(4 * n * m * d * 4)
	if after != before || peak <= before || peak-before > limit {
		t.Errorf("in use %d -> %d, peak %d: workspace %d bytes (limit %d)", before, after, peak,
			peak-before, limit)
	}
}

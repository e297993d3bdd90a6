package bindings

import (
	"errors"
	"fmt"
	"math"
	"math/rand"
	"runtime"
	"strings"
	"testing"
)

// referenceInput is the input of OBJECTIVES.md's reference values:
// h[i][a][t] = sin(0.7(i+1) + 1.3(a+1) + 0.37(t+1)) + 0.05 t.
func referenceInput(n, m, d int) []float64 {
	h := make([]float64, n*m*d)
	for i := 0; i < n; i++ {
		for a := 0; a < m; a++ {
			for t := 0; t < d; t++ {
				x := 0.7*float64(i+1) + 1.3*float64(a+1) + 0.37*float64(t+1)
				h[(i*m+a)*d+t] = math.Sin(x) + 0.05*float64(t)
			}
		}
	}
	return h
}

func cpuDevice(t testing.TB) *Device {
	t.Helper()
	dev, err := Open("cpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	return dev
}

// evalLoss runs obj on h [n, m, d] in float64 and returns loss and grad.
func evalLoss(t testing.TB, dev *Device, obj Objective, tau float64, h []float64,
	n, m, d int) (float64, []float64) {
	t.Helper()
	ht, err := dev.FromFloat64(h, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	g, err := dev.NewTensor(Float64, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	v, err := Loss{Objective: obj, Tau: tau}.ForwardBackward(ht, g)
	if err != nil {
		t.Fatalf("%v: %v", obj, err)
	}
	grad, err := g.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return v, grad
}

func relErr(got, want float64) float64 {
	return math.Abs(got-want) / math.Max(math.Abs(want), 1e-300)
}

// TestReferenceValues checks every objective against OBJECTIVES.md. The
// table has 10 significant digits and float64 evaluation agrees to about
// 1e-14, so 1e-9 relative leaves room only for the table's rounding.
func TestReferenceValues(t *testing.T) {
	dev := cpuDevice(t)
	want := map[Objective][2]float64{
		MultiCrop: {2.4085102519, 2.9582351583},
		GPVC:      {2.4085102519, 3.5215888198},
		APVC:      {2.4085102519, 4.0264795101},
		SuffStats: {2.4085102519, 2.4180590306},
		MVInfoNCE: {2.5963849044, 1.8905299760},
		MVDHEL:    {3.6637671707, 5.8115205620},
	}
	shapes := [2][2]int{{4, 2}, {3, 4}}
	for obj, vals := range want {
		for k, s := range shapes {
			n, m := s[0], s[1]
			got, _ := evalLoss(t, dev, obj, 0.5, referenceInput(n, m, 5), n, m, 5)
			if relErr(got, vals[k]) > 1e-9 {
				t.Errorf("%v N=%d M=%d: got %.10f, want %.10f", obj, n, m, got, vals[k])
			}
		}
	}
	got, _ := evalLoss(t, dev, SimCLR, 0.5, referenceInput(4, 2, 5), 4, 2, 5)
	if relErr(got, 2.4085102519) > 1e-9 {
		t.Errorf("simclr N=4 M=2: got %.10f, want 2.4085102519", got)
	}
}

// TestReferenceGradient checks dL_gpvc/dh[0][0] at N=3, M=4 against the
// table (10 digits, so 1e-8 relative per component).
func TestReferenceGradient(t *testing.T) {
	_, grad := evalLoss(t, cpuDevice(t), GPVC, 0.5, referenceInput(3, 4, 5), 3, 4, 5)
	want := []float64{0.0133022985, 0.0354412116, 0.0509295145, 0.0558171294, 0.0475887320}
	for k, w := range want {
		if relErr(grad[k], w) > 1e-8 {
			t.Errorf("dL/dh[0][0][%d] = %.10f, want %.10f", k, grad[k], w)
		}
	}
}

func randomInput(rng *rand.Rand, n int) []float64 {
	h := make([]float64, n)
	for i := range h {
		h[i] = rng.NormFloat64()
	}
	return h
}

// TestGradientsFiniteDifference compares every objective's dL/dh with
// central differences in float64. With step 1e-5 the truncation error is
// O(step^2 * L”') ~ 1e-10 and the rounding error ~ 1e-16 / 1e-5 = 1e-11,
// so 1e-6 relative to the gradient's largest component is a loose bound
// that still catches any wrong term (those are O(1/(N M)) or larger).
func TestGradientsFiniteDifference(t *testing.T) {
	dev := cpuDevice(t)
	shapes := []struct{ n, m, d int }{
		{2, 2, 3}, {3, 4, 5}, {2, 8, 4}, {5, 3, 1}, {4, 2, 300}, {67, 3, 2},
	}
	rng := rand.New(rand.NewSource(1))
	for _, obj := range Objectives() {
		for _, s := range shapes {
			if obj == SimCLR && s.m != 2 {
				continue
			}
			t.Run(fmt.Sprintf("%v/N%d_M%d_d%d", obj, s.n, s.m, s.d), func(t *testing.T) {
				h := randomInput(rng, s.n*s.m*s.d)
				tau := 0.1 + rng.Float64()
				_, grad := evalLoss(t, dev, obj, tau, h, s.n, s.m, s.d)
				scale := 0.0
				for _, g := range grad {
					scale = math.Max(scale, math.Abs(g))
				}
				// Probe a spread of coordinates; all of them when small.
				probes := len(h)
				if probes > 40 {
					probes = 40
				}
				const step = 1e-5
				for p := 0; p < probes; p++ {
					k := p * len(h) / probes
					orig := h[k]
					h[k] = orig + step
					up, _ := evalLoss(t, dev, obj, tau, h, s.n, s.m, s.d)
					h[k] = orig - step
					down, _ := evalLoss(t, dev, obj, tau, h, s.n, s.m, s.d)
					h[k] = orig
					fd := (up - down) / (2 * step)
					if math.Abs(fd-grad[k]) > 1e-6*scale+1e-12 {
						t.Errorf("dL/dh[%d]: analytic %.9g, finite difference %.9g", k, grad[k], fd)
					}
				}
			})
		}
	}
}

// TestTwoViewReductions: at M = 2, multicrop, gpvc, apvc and suffstats
// equal SimCLR exactly (same value and gradient up to float64 rounding).
func TestTwoViewReductions(t *testing.T) {
	dev := cpuDevice(t)
	rng := rand.New(rand.NewSource(2))
	for _, shape := range [][2]int{{2, 7}, {9, 16}, {70, 33}} {
		n, d := shape[0], shape[1]
		h := randomInput(rng, n*2*d)
		ref, refGrad := evalLoss(t, dev, SimCLR, 0.3, h, n, 2, d)
		for _, obj := range []Objective{MultiCrop, GPVC, APVC, SuffStats} {
			got, grad := evalLoss(t, dev, obj, 0.3, h, n, 2, d)
			if relErr(got, ref) > 1e-12 {
				t.Errorf("%v N=%d: loss %.15g, simclr %.15g", obj, n, got, ref)
			}
			for k := range grad {
				if math.Abs(grad[k]-refGrad[k]) > 1e-12 {
					t.Errorf("%v N=%d: grad[%d] %.15g, simclr %.15g", obj, n, k, grad[k], refGrad[k])
					break
				}
			}
		}
	}
}

// TestAPVCBoundsGPVC: apvc >= gpvc (OBJECTIVES.md: anchor by anchor, so
// also on average) for M > 2.
func TestAPVCBoundsGPVC(t *testing.T) {
	dev := cpuDevice(t)
	rng := rand.New(rand.NewSource(3))
	for _, m := range []int{3, 4, 8} {
		h := randomInput(rng, 6*m*8)
		g, _ := evalLoss(t, dev, GPVC, 0.2, h, 6, m, 8)
		a, _ := evalLoss(t, dev, APVC, 0.2, h, 6, m, 8)
		if a < g-1e-12 {
			t.Errorf("M=%d: apvc %.12g < gpvc %.12g", m, a, g)
		}
	}
}

// TestFloat32MatchesFloat64 runs the fast float32 path (AVX2 kernels, the
// polynomial exp) against the float64 reference at shapes that span
// several tiles. float32 rounding over d = 128 dot products and R-term
// LSEs gives relative errors of a few 1e-6; 1e-4 on the loss and 1e-3 of
// the largest gradient component leave a margin of 10x or more.
func TestFloat32MatchesFloat64(t *testing.T) {
	dev := cpuDevice(t)
	rng := rand.New(rand.NewSource(4))
	for _, obj := range Objectives() {
		for _, s := range []struct{ n, m, d int }{{130, 2, 128}, {40, 8, 64}, {3, 4, 5}} {
			if obj == SimCLR && s.m != 2 {
				continue
			}
			h := randomInput(rng, s.n*s.m*s.d)
			want, wantGrad := evalLoss(t, dev, obj, 0.1, h, s.n, s.m, s.d)
			for _, dt := range []DType{Float32, BFloat16} {
				got, grad := evalLoss32(t, dev, obj, 0.1, h, s.n, s.m, s.d, dt)
				lossTol, gradTol := 1e-4, 1e-3
				if dt == BFloat16 {
					// bf16 inputs and outputs carry 8 bits of mantissa:
					// relative 2^-8 = 4e-3 per value.
					lossTol, gradTol = 2e-2, 3e-2
				}
				if relErr(got, want) > lossTol {
					t.Errorf("%v %v %v: loss %.8g, float64 %.8g", obj, dt, s, got, want)
				}
				scale := 0.0
				for _, g := range wantGrad {
					scale = math.Max(scale, math.Abs(g))
				}
				for k := range grad {
					if math.Abs(grad[k]-wantGrad[k]) > gradTol*scale {
						t.Errorf("%v %v %v: grad[%d] %.8g, float64 %.8g", obj, dt, s, k,
							grad[k], wantGrad[k])
						break
					}
				}
			}
		}
	}
}

// evalLoss32 is evalLoss with h and grad stored as dt.
func evalLoss32(t testing.TB, dev *Device, obj Objective, tau float64, h []float64,
	n, m, d int, dt DType) (float64, []float64) {
	t.Helper()
	h32 := make([]float32, len(h))
	for i, v := range h {
		h32[i] = float32(v)
	}
	ht, err := dev.NewTensor(dt, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer ht.Close()
	if err := ht.WriteFloat32(h32); err != nil {
		t.Fatal(err)
	}
	g, err := dev.NewTensor(dt, n, m, d)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	v, err := Loss{Objective: obj, Tau: tau}.ForwardBackward(ht, g)
	if err != nil {
		t.Fatalf("%v %v: %v", obj, dt, err)
	}
	grad, err := g.Float64()
	if err != nil {
		t.Fatal(err)
	}
	return v, grad
}

// TestSmallTemperature: tau = 0.01 puts logits in [-100, 100], where a
// fixed shift would underflow fp32; the running-max LSE must stay finite
// and agree with float64.
func TestSmallTemperature(t *testing.T) {
	dev := cpuDevice(t)
	rng := rand.New(rand.NewSource(5))
	h := randomInput(rng, 20*4*16)
	for _, obj := range []Objective{GPVC, MultiCrop, MVDHEL, MVInfoNCE} {
		want, _ := evalLoss(t, dev, obj, 0.01, h, 20, 4, 16)
		got, _ := evalLoss32(t, dev, obj, 0.01, h, 20, 4, 16, Float32)
		// Logits of size 100 amplify float32 rounding of z (1e-7) to
		// about 1e-5 absolute; relative 1e-4 on losses of order 10.
		if math.IsNaN(got) || relErr(got, want) > 1e-4 {
			t.Errorf("%v tau=0.01: float32 %.8g, float64 %.8g", obj, got, want)
		}
	}
}

// TestRepeatable: the same input gives bit-identical results, whatever
// the scheduling of the worker threads.
func TestRepeatable(t *testing.T) {
	dev := cpuDevice(t)
	rng := rand.New(rand.NewSource(6))
	h := randomInput(rng, 300*4*32)
	first, firstGrad := evalLoss32(t, dev, GPVC, 0.2, h, 300, 4, 32, Float32)
	for r := 0; r < 3; r++ {
		v, grad := evalLoss32(t, dev, GPVC, 0.2, h, 300, 4, 32, Float32)
		if v != first {
			t.Fatalf("run %d: loss %v, first run %v", r, v, first)
		}
		for k := range grad {
			if grad[k] != firstGrad[k] {
				t.Fatalf("run %d: grad[%d] %v, first run %v", r, k, grad[k], firstGrad[k])
			}
		}
	}
}

// TestBadInput: every invalid argument is an *Error naming the problem.
func TestBadInput(t *testing.T) {
	dev := cpuDevice(t)
	mk := func(n, m, d int, fill func(i int) float64) *Tensor {
		data := make([]float64, n*m*d)
		for i := range data {
			data[i] = fill(i)
		}
		ten, err := dev.FromFloat64(data, n, m, d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ten.Close)
		return ten
	}
	ones := func(i int) float64 { return 1 + float64(i%7) }
	zeroRow := func(i int) float64 {
		if i >= 3*4 && i < 4*4 { // row 3 = image 1, view 1 of [.., 2, 4]
			return 0
		}
		return ones(i)
	}
	nanRow := func(i int) float64 {
		if i == 5 {
			return math.NaN()
		}
		return ones(i)
	}
	flat, err := dev.FromFloat64(make([]float64, 8), 8)
	if err != nil {
		t.Fatal(err)
	}
	defer flat.Close()
	cases := []struct {
		name string
		loss Loss
		h    *Tensor
		want string
	}{
		{"one image", Loss{GPVC, 0.5}, mk(1, 2, 4, ones), "N = 1 images"},
		{"one view", Loss{GPVC, 0.5}, mk(3, 1, 4, ones), "M = 1 views"},
		{"simclr three views", Loss{SimCLR, 0.5}, mk(3, 3, 4, ones), "multicrop"},
		{"zero width", Loss{GPVC, 0.5}, mk(3, 2, 0, ones), "d = 0"},
		{"zero tau", Loss{GPVC, 0}, mk(3, 2, 4, ones), "tau"},
		{"negative tau", Loss{GPVC, -1}, mk(3, 2, 4, ones), "tau"},
		{"NaN tau", Loss{GPVC, math.NaN()}, mk(3, 2, 4, ones), "tau"},
		{"infinite tau", Loss{GPVC, math.Inf(1)}, mk(3, 2, 4, ones), "tau"},
		{"zero-norm row", Loss{MVDHEL, 0.5}, mk(3, 2, 4, zeroRow), "h[1][1] (image 1, view 1) has zero norm"},
		{"NaN row", Loss{APVC, 0.5}, mk(3, 2, 4, nanRow), "h[0][1] (image 0, view 1) is not finite"},
		{"flat h", Loss{GPVC, 0.5}, flat, "shape [N, M, d]"},
		{"unknown objective", Loss{Objective(42), 0.5}, mk(3, 2, 4, ones), "unknown objective"},
	}
	for _, c := range cases {
		_, err := c.loss.Forward(c.h)
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want an *Error containing %q", c.name, err, c.want)
		}
	}
	// Mismatched grad shape and a closed tensor.
	h := mk(3, 2, 4, ones)
	g, _ := dev.NewTensor(Float64, 3, 2, 5)
	defer g.Close()
	if _, err := (Loss{GPVC, 0.5}).ForwardBackward(h, g); err == nil ||
		!strings.Contains(err.Error(), "grad shape") {
		t.Errorf("mismatched grad: %v", err)
	}
	closed := mk(3, 2, 4, ones)
	closed.Close()
	if _, err := (Loss{GPVC, 0.5}).Forward(closed); err == nil ||
		!strings.Contains(err.Error(), "closed") {
		t.Errorf("closed tensor: %v", err)
	}
}

func TestParseObjective(t *testing.T) {
	for _, o := range Objectives() {
		got, err := ParseObjective(strings.ToUpper(o.String()))
		if err != nil || got != o {
			t.Errorf("ParseObjective(%q) = %v, %v", o, got, err)
		}
	}
	if _, err := ParseObjective("infonce"); err == nil || !strings.Contains(err.Error(), "gpvc") {
		t.Errorf("unknown name: %v", err)
	}
}

func TestReshape(t *testing.T) {
	dev := cpuDevice(t)
	x, err := dev.FromFloat32([]float32{1, 2, 3, 4, 5, 6}, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	if err := x.Reshape(3, 1, 2); err != nil {
		t.Fatal(err)
	}
	if got := x.Shape(); len(got) != 3 || got[0] != 3 || got[2] != 2 {
		t.Errorf("shape %v", got)
	}
	v, _ := x.Float32()
	if v[5] != 6 {
		t.Errorf("data changed: %v", v)
	}
	if err := x.Reshape(4, 2); err == nil || !strings.Contains(err.Error(), "6 elements") {
		t.Errorf("bad reshape: %v", err)
	}
}

// TestTensorOutlivesDevice: a tensor freed after its device is closed (as
// the garbage collector may do) stays valid until then and frees safely.
func TestTensorOutlivesDevice(t *testing.T) {
	dev, err := Open("cpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	x, err := dev.FromFloat32([]float32{1, 2, 3}, 3)
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	v, err := x.Float32()
	if err != nil || v[2] != 3 {
		t.Errorf("read after device close: %v, %v", v, err)
	}
	x.Close()
	for i := 0; i < 100; i++ {
		d, _ := Open("cpu", nil)
		d.NewTensor(Float32, 16) // left to the finalizer
		d.Close()
	}
	runtime.GC()
	runtime.GC()
}

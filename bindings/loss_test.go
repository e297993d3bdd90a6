package bindings

import (
	"math"
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

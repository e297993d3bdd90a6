package optim

import (
	"math"
	"testing"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/model"
)

// closedForm replays pv_optim_desc's formulas in Go for one parameter
// vector; m and v are the state.
func closedForm(cfg Config, kind string, exclude bool, step int, lr float64, p, g, m,
	v []float64) {
	wd := cfg.WeightDecay
	if exclude {
		wd = 0
	}
	switch kind {
	case "sgd":
		for i := range p {
			gi := g[i] + wd*p[i]
			m[i] = cfg.Momentum*m[i] + gi
			d := m[i]
			if cfg.Nesterov {
				d = gi + cfg.Momentum*m[i]
			}
			p[i] -= lr * d
		}
	case "lars":
		var pn, gn float64
		for i := range p {
			gi := g[i] + wd*p[i]
			pn += p[i] * p[i]
			gn += gi * gi
		}
		trust := 1.0
		if !exclude && pn > 0 && gn > 0 {
			trust = cfg.Eta * math.Sqrt(pn) / math.Sqrt(gn)
		}
		for i := range p {
			u := lr * trust * (g[i] + wd*p[i])
			m[i] = cfg.Momentum*m[i] + u
			if cfg.Nesterov {
				p[i] -= cfg.Momentum*m[i] + u
			} else {
				p[i] -= m[i]
			}
		}
	case "adamw":
		b1, b2 := cfg.Beta1, cfg.Beta2
		for i := range p {
			p[i] -= lr * wd * p[i]
			m[i] = b1*m[i] + (1-b1)*g[i]
			v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
			mh := m[i] / (1 - math.Pow(b1, float64(step)))
			vh := v[i] / (1 - math.Pow(b2, float64(step)))
			p[i] -= lr * mh / (math.Sqrt(vh) + cfg.Eps)
		}
	}
}

// TestClosedForm runs three steps of every optimizer, with and without
// the NoDecay exclusion, in float64 against closedForm. The op and the
// reference do the same float64 arithmetic in nearly the same order, so
// they agree to a few ulps; 1e-12 relative catches any wrong term.
func TestClosedForm(t *testing.T) {
	dev, err := bindings.Open("cpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	cases := []Config{
		{Name: "sgd", Momentum: 0.9, WeightDecay: 1e-2},
		{Name: "sgd", Momentum: 0.8, Nesterov: true, WeightDecay: 5e-4},
		{Name: "lars", Momentum: 0.9, WeightDecay: 1e-2, Eta: 0.02},
		{Name: "lars", Momentum: 0.9, Nesterov: true, WeightDecay: 1e-6, Eta: 0.001},
		{Name: "adamw", Beta1: 0.9, Beta2: 0.99, Eps: 1e-8, WeightDecay: 0.05},
	}
	for _, cfg := range cases {
		for _, exclude := range []bool{false, true} {
			p0 := []float64{0.5, -1.25, 2, 0.125, -0.75, 1.5}
			val, _ := dev.FromFloat64(p0, 2, 3)
			grad, _ := dev.FromFloat64(make([]float64, 6), 2, 3)
			prm := &model.Param{Name: "w", Value: val, Grad: grad, NoDecay: exclude}
			o, err := New(cfg, []*model.Param{prm})
			if err != nil {
				t.Fatal(err)
			}
			p := append([]float64(nil), p0...)
			m, v := make([]float64, 6), make([]float64, 6)
			for step := 1; step <= 3; step++ {
				g := []float64{0.3, -0.1, 0.7 / float64(step), -0.2, 0.05 * float64(step), 1}
				if err := grad.WriteFloat64(g); err != nil {
					t.Fatal(err)
				}
				lr := 0.1 * float64(step)
				if err := o.Step(lr); err != nil {
					t.Fatal(err)
				}
				closedForm(o.cfg, cfg.Name, exclude, step, lr, p, g, m, v)
			}
			got, _ := val.Float64()
			for i := range p {
				if math.Abs(got[i]-p[i]) > 1e-12*math.Max(1, math.Abs(p[i])) {
					t.Errorf("%s nesterov=%v exclude=%v: p[%d] = %.15g, want %.15g", cfg.Name,
						cfg.Nesterov, exclude, i, got[i], p[i])
				}
			}
			o.Close()
			val.Close()
			grad.Close()
		}
	}
}

// TestSGDByHand checks one SGD step with numbers small enough to do on
// paper: p = 1, g = 0.5, wd = 0.1, momentum 0.9, lr 0.2: the decayed
// gradient is 0.6, the momentum 0.6 and p becomes 1 - 0.12 = 0.88; the
// second step (same gradient) has momentum 0.9*0.6 + (0.5 + 0.088) = 1.128
// and p = 0.88 - 0.2256 = 0.6544.
func TestSGDByHand(t *testing.T) {
	dev, _ := bindings.Open("cpu", nil)
	defer dev.Close()
	val, _ := dev.FromFloat32([]float32{1}, 1)
	defer val.Close()
	grad, _ := dev.FromFloat32([]float32{0.5}, 1)
	defer grad.Close()
	o, err := New(Config{Name: "sgd", Momentum: 0.9, WeightDecay: 0.1},
		[]*model.Param{{Name: "w", Value: val, Grad: grad}})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	for _, want := range []float64{0.88, 0.6544} {
		if err := o.Step(0.2); err != nil {
			t.Fatal(err)
		}
		got, _ := val.Float64()
		if math.Abs(got[0]-want) > 1e-6 {
			t.Errorf("after step %d: p = %.7g, want %g", o.Steps(), got[0], want)
		}
	}
}

func TestSchedule(t *testing.T) {
	s := Schedule{Peak: 1.2, Final: 0.2, WarmupSteps: 4, TotalSteps: 14}
	for _, tc := range []struct {
		step int
		want float64
	}{
		{0, 0.3}, {1, 0.6}, {3, 1.2}, // warmup: 1.2 (step+1)/4
		{4, 1.2},              // decay starts at the peak
		{9, 0.7},              // half way: (1.2 + 0.2) / 2
		{14, 0.2}, {100, 0.2}, // done
		{6, 0.2 + 0.5*(1+math.Cos(math.Pi*0.2))},
	} {
		if got := s.LR(tc.step); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("LR(%d) = %.15g, want %.15g", tc.step, got, tc.want)
		}
	}
}

func TestBadName(t *testing.T) {
	if _, err := New(Config{Name: "adam"}, nil); err == nil {
		t.Error("New accepted an unknown optimizer")
	}
}

package eval

import (
	"math/rand"
	"testing"
)

func TestLinearProbe(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	// Linearly separable: the probe must get (nearly) everything right.
	train, test := clusters(rng, 60, 8, 12, 0.2), clusters(rng, 30, 8, 12, 0.2)
	res, err := LinearProbe(train, test, ProbeConfig{Epochs: 40, LR: 1e-2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Top1 < 0.98 || res.Top5 < res.Top1 {
		t.Errorf("separable: top1 %.3f top5 %.3f", res.Top1, res.Top5)
	}
	// Pure noise features: top-1 near chance (1/8), top-5 near 5/8.
	noise := func(n int) *Features {
		f := &Features{N: n, Dim: 12, Classes: 8}
		for i := 0; i < n; i++ {
			for j := 0; j < 12; j++ {
				f.Data = append(f.Data, float32(rng.NormFloat64()))
			}
			f.Labels = append(f.Labels, rng.Intn(8))
		}
		return f
	}
	res, err = LinearProbe(noise(400), noise(800), ProbeConfig{Epochs: 20, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	// 800 test rows: 3 sigma of a 1/8 rate is 0.035; of 5/8 is 0.05.
	if res.Top1 > 0.125+0.06 || res.Top5 < 0.625-0.08 || res.Top5 > 0.625+0.08 {
		t.Errorf("noise: top1 %.3f top5 %.3f, want about 0.125 and 0.625", res.Top1, res.Top5)
	}
}

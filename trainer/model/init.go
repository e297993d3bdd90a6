package model

import (
	"hash/fnv"
	"math"
	"math/rand/v2"

	"github.com/polyview/polyview/bindings"
)

// Initialisation as in torchvision and torch.nn: convolutions Kaiming
// normal in fan-out mode for ReLU (std = sqrt(2 / (K R S))), linear
// weights and biases uniform in +-1/sqrt(in), BN scale 1 (0 for the last
// BN of a residual branch when zero-init is on) and shift 0, running mean
// 0 and variance 1. Each tensor draws from its own generator keyed by the
// seed and its name, so adding a layer never shifts another's values, and
// a float32 and a float64 model of one seed hold the same numbers.

func rngFor(seed uint64, name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// write stores float64 values into a Float32 or Float64 tensor.
func write(t *bindings.Tensor, v []float64) error {
	if t.DType() == bindings.Float64 {
		return t.WriteFloat64(v)
	}
	f := make([]float32, len(v))
	for i, x := range v {
		f[i] = float32(x)
	}
	return t.WriteFloat32(f)
}

func fill(t *bindings.Tensor, c float64) error {
	v := make([]float64, t.Numel())
	for i := range v {
		v[i] = c
	}
	return write(t, v)
}

func kaimingNormal(p *Param, seed uint64) error {
	s := p.Value.Shape() // [K, R, S, C]
	std := math.Sqrt(2 / float64(s[0]*s[1]*s[2]))
	r := rngFor(seed, p.Name)
	v := make([]float64, p.Value.Numel())
	for i := range v {
		v[i] = r.NormFloat64() * std
	}
	return write(p.Value, v)
}

func uniform(p *Param, seed uint64, bound float64) error {
	r := rngFor(seed, p.Name)
	v := make([]float64, p.Value.Numel())
	for i := range v {
		v[i] = (2*r.Float64() - 1) * bound
	}
	return write(p.Value, v)
}

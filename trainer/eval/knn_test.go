package eval

import (
	"math"
	"math/rand"
	"sort"
	"strings"
	"testing"
)

// clusters makes n points per class around orthogonal class centres, with
// noise of the given size.
func clusters(rng *rand.Rand, n, classes, dim int, noise float64) *Features {
	f := &Features{N: n * classes, Dim: dim, Classes: classes}
	for c := 0; c < classes; c++ {
		for i := 0; i < n; i++ {
			for j := 0; j < dim; j++ {
				v := noise * rng.NormFloat64()
				if j == c {
					v += 1
				}
				f.Data = append(f.Data, float32(v))
			}
			f.Labels = append(f.Labels, c)
		}
	}
	return f
}

func TestKNNSeparableAndRandom(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	bank, query := clusters(rng, 100, 5, 16, 0.1), clusters(rng, 20, 5, 16, 0.1)
	acc, err := KNN(bank, query, 200, 0.07)
	if err != nil || acc != 1 {
		t.Errorf("separable clusters: accuracy %v, %v; want 1", acc, err)
	}
	// Labels shuffled against the features: accuracy near chance (0.2).
	bank, query = clusters(rng, 100, 5, 16, 0.1), clusters(rng, 100, 5, 16, 0.1)
	rng.Shuffle(len(bank.Labels), func(i, j int) {
		bank.Labels[i], bank.Labels[j] = bank.Labels[j], bank.Labels[i]
	})
	acc, err = KNN(bank, query, 50, 0.07)
	// 500 queries at p = 0.2: three standard deviations is 0.054.
	if err != nil || math.Abs(acc-0.2) > 0.08 {
		t.Errorf("shuffled labels: accuracy %v, %v; want about 0.2", acc, err)
	}
}

// TestKNNWeightedVote: one very close neighbour outvotes two far ones
// when the temperature is small, and loses when it is large.
func TestKNNWeightedVote(t *testing.T) {
	bank := &Features{Dim: 2, N: 3, Classes: 2, Labels: []int{0, 1, 1},
		Data: []float32{1, 0, 0.6, 0.8, 0.6, 0.8}}
	query := func() *Features {
		return &Features{Dim: 2, N: 1, Classes: 2, Labels: []int{0}, Data: []float32{1, 0.01}}
	}
	if acc, _ := KNN(bank, query(), 3, 0.07); acc != 1 {
		t.Errorf("tau 0.07: the nearest neighbour should win")
	}
	bank.Data = []float32{1, 0, 0.6, 0.8, 0.6, 0.8}
	if acc, _ := KNN(bank, query(), 3, 100); acc != 0 {
		t.Errorf("tau 100: the majority should win")
	}
}

func TestTopK(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	for trial := 0; trial < 50; trial++ {
		n := 1 + rng.Intn(300)
		k := 1 + rng.Intn(n)
		sims := make([]float32, n)
		idx := make([]int, n)
		for i := range sims {
			sims[i] = float32(rng.Intn(20)) // many ties
			idx[i] = i
		}
		topK(idx, sims, k)
		want := make([]int, n)
		for i := range want {
			want[i] = i
		}
		sort.Slice(want, func(a, b int) bool {
			if sims[want[a]] != sims[want[b]] {
				return sims[want[a]] > sims[want[b]]
			}
			return want[a] < want[b]
		})
		for i := 0; i < k; i++ {
			if idx[i] != want[i] {
				t.Fatalf("n=%d k=%d: position %d is %d, want %d", n, k, i, idx[i], want[i])
			}
		}
	}
}

func TestKNNRejects(t *testing.T) {
	good := &Features{Dim: 2, N: 1, Classes: 2, Labels: []int{0}, Data: []float32{1, 0}}
	bad := &Features{Dim: 2, N: 1, Classes: 2, Labels: []int{5}, Data: []float32{1, 0}}
	if _, err := KNN(good, bad, 1, 0.1); err == nil || !strings.Contains(err.Error(), "label 5") {
		t.Errorf("label out of range: %v", err)
	}
	wide := &Features{Dim: 3, N: 1, Classes: 2, Labels: []int{0}, Data: []float32{1, 0, 0}}
	if _, err := KNN(good, wide, 1, 0.1); err == nil || !strings.Contains(err.Error(), "width") {
		t.Errorf("width mismatch: %v", err)
	}
}

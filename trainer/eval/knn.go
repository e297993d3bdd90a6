// Package eval measures how good an encoder's representation is without
// training it: a k-nearest-neighbour classifier (the online monitor) and a
// linear probe on frozen features.
package eval

import (
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"
)

// Features is a set of embeddings [N][Dim], row-major, with labels in
// [0, Classes).
type Features struct {
	Data    []float32
	N, Dim  int
	Labels  []int
	Classes int
}

// Validate checks shapes and label ranges, naming the problem.
func (f *Features) Validate(what string) error {
	if f.N <= 0 || f.Dim <= 0 {
		return fmt.Errorf("%s: empty features (%d x %d)", what, f.N, f.Dim)
	}
	if len(f.Data) != f.N*f.Dim {
		return fmt.Errorf("%s: %d values for %d x %d features", what, len(f.Data), f.N, f.Dim)
	}
	if len(f.Labels) != f.N {
		return fmt.Errorf("%s: %d labels for %d rows", what, len(f.Labels), f.N)
	}
	if f.Classes <= 0 {
		return fmt.Errorf("%s: %d classes", what, f.Classes)
	}
	for i, l := range f.Labels {
		if l < 0 || l >= f.Classes {
			return fmt.Errorf("%s: label %d of row %d outside [0, %d)", what, l, i, f.Classes)
		}
	}
	return nil
}

// Normalize scales every row to unit L2 norm (rows of zeros stay zero).
func (f *Features) Normalize() {
	for i := 0; i < f.N; i++ {
		row := f.Data[i*f.Dim : (i+1)*f.Dim]
		var ss float64
		for _, v := range row {
			ss += float64(v) * float64(v)
		}
		if ss == 0 {
			continue
		}
		inv := float32(1 / math.Sqrt(ss))
		for j := range row {
			row[j] *= inv
		}
	}
}

// KNN classifies each query row by its k most cosine-similar bank rows,
// each voting for its label with weight exp(similarity / temperature), the
// rule of the usual kNN monitor (k = 200, temperature 0.07). Both sets are
// L2-normalised in place. It returns top-1 accuracy in [0, 1].
func KNN(bank, query *Features, k int, temperature float64) (float64, error) {
	if err := bank.Validate("kNN bank"); err != nil {
		return 0, err
	}
	if err := query.Validate("kNN query"); err != nil {
		return 0, err
	}
	if bank.Dim != query.Dim {
		return 0, fmt.Errorf("kNN: bank width %d, query width %d", bank.Dim, query.Dim)
	}
	if k <= 0 || temperature <= 0 {
		return 0, fmt.Errorf("kNN: k = %d and temperature = %g must be positive", k, temperature)
	}
	if k > bank.N {
		k = bank.N
	}
	classes := bank.Classes
	if query.Classes > classes {
		classes = query.Classes
	}
	bank.Normalize()
	query.Normalize()

	correct := make([]int, query.N)
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	next := make(chan int, query.N)
	for i := 0; i < query.N; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sims := make([]float32, bank.N)
			idx := make([]int, bank.N)
			votes := make([]float64, classes)
			for q := range next {
				qrow := query.Data[q*query.Dim : (q+1)*query.Dim]
				for b := 0; b < bank.N; b++ {
					sims[b] = dot(qrow, bank.Data[b*bank.Dim:(b+1)*bank.Dim])
					idx[b] = b
				}
				topK(idx, sims, k)
				for c := range votes {
					votes[c] = 0
				}
				for _, b := range idx[:k] {
					votes[bank.Labels[b]] += math.Exp(float64(sims[b]) / temperature)
				}
				best := 0
				for c := range votes {
					if votes[c] > votes[best] {
						best = c
					}
				}
				if best == query.Labels[q] {
					correct[q] = 1
				}
			}
		}()
	}
	wg.Wait()
	total := 0
	for _, c := range correct {
		total += c
	}
	return float64(total) / float64(query.N), nil
}

func dot(a, b []float32) float32 {
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(a); i += 4 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return s0 + s1 + s2 + s3
}

// topK moves the k indices with the largest sims to idx[:k] (unordered
// beyond that), ties broken by lower index so results are repeatable.
func topK(idx []int, sims []float32, k int) {
	less := func(a, b int) bool {
		if sims[a] != sims[b] {
			return sims[a] > sims[b]
		}
		return a < b
	}
	if k >= len(idx) {
		return
	}
	// Quickselect on idx.
	lo, hi := 0, len(idx)-1
	for lo < hi {
		p := idx[(lo+hi)/2]
		i, j := lo, hi
		for i <= j {
			for less(idx[i], p) {
				i++
			}
			for less(p, idx[j]) {
				j--
			}
			if i <= j {
				idx[i], idx[j] = idx[j], idx[i]
				i++
				j--
			}
		}
		if k-1 <= j {
			hi = j
		} else if k-1 >= i {
			lo = i
		} else {
			break
		}
	}
	sort.Slice(idx[:k], func(a, b int) bool { return less(idx[a], idx[b]) })
}

package datasets

import "math/bits"

// The loader's randomness is its own small generator rather than math/rand, so that an
// order recorded in a checkpoint is repeated by any later Go release.

// Purposes keep the streams drawn for one (seed, epoch) apart.
const (
	streamPermutation uint64 = iota + 1 // full permutation of an indexed dataset
	streamShardOrder                    // order of the shards
	streamShuffleBuf                    // one shard worker's shuffle buffer
)

// rng is SplitMix64: a 64-bit counter passed through a strong mixing function. It is
// fast, has no bad seeds, and its sequence is fixed by the code below.
type rng struct{ state uint64 }

// newRNG returns a generator whose sequence depends on every key, in order.
func newRNG(keys ...uint64) *rng {
	r := &rng{state: 0x9e3779b97f4a7c15}
	for _, k := range keys {
		r.state = mix64(r.state ^ mix64(k+0x632be59bd9b4e019))
	}
	return r
}

// mix64 is the SplitMix64 output function (a bijection on uint64).
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (r *rng) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	return mix64(r.state)
}

// intn returns a uniform integer in [0, n) for n > 0 without modulo bias (Lemire's
// multiply-and-reject method).
func (r *rng) intn(n int) int {
	bound := uint64(n)
	hi, lo := bits.Mul64(r.next(), bound)
	if lo < bound {
		threshold := -bound % bound
		for lo < threshold {
			hi, lo = bits.Mul64(r.next(), bound)
		}
	}
	return int(hi)
}

// permutation returns a uniformly random ordering of [0, n) (Fisher-Yates).
func permutation(n int, r *rng) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := n - 1; i > 0; i-- {
		j := r.intn(i + 1)
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// shuffleBuffer reorders a stream while holding at most size items: once full, each
// new item takes the place of a randomly chosen held item, which is emitted. With size
// 0 or 1 the stream passes through unchanged.
type shuffleBuffer[T any] struct {
	items []T
	size  int
	r     *rng
}

func newShuffleBuffer[T any](size int, r *rng) *shuffleBuffer[T] {
	return &shuffleBuffer[T]{items: make([]T, 0, size), size: size, r: r}
}

// push adds x and returns the item that leaves the buffer, if any.
func (s *shuffleBuffer[T]) push(x T) (T, bool) {
	if s.size <= 1 {
		return x, true
	}
	if len(s.items) < s.size {
		s.items = append(s.items, x)
		var zero T
		return zero, false
	}
	i := s.r.intn(s.size)
	out := s.items[i]
	s.items[i] = x
	return out, true
}

// drain removes and returns a random held item once the input has ended.
func (s *shuffleBuffer[T]) drain() (T, bool) {
	var zero T
	n := len(s.items)
	if n == 0 {
		return zero, false
	}
	i := s.r.intn(n)
	out := s.items[i]
	s.items[i] = s.items[n-1]
	s.items[n-1] = zero
	s.items = s.items[:n-1]
	return out, true
}

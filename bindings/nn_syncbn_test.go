package bindings

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// Synchronised batch norm against the fused ops. A batch is split along N
// into W parts, as W ranks would hold it; each part runs the recipe of
// polyview.h with the host summing the parts' stats in place of the
// all-reduce, and the parts' y, dx, statistics and running averages, and
// the summed backward stats (dbeta, dgamma), must be those of
// pv_batchnorm_forward and pv_batchnorm_backward on the whole batch.
//
// Bounds, per element, with want the fused result:
//   - float64: 1e-12 (1 + |want|). Both sides sum in double, in another
//     order, and the variance comes from sums about the running mean
//     (s1/n - (s0/n)^2) rather than from squared deviations; with the
//     running mean within a standard deviation of the batch mean that
//     cancellation costs a factor ~1 + (s0/n)^2/var < 2, so the results
//     differ by a few 2^-53 (~1e-16) relative: 1e-12 fails only on a
//     wrong formula (observed: at most 0.2% of it).
//   - float32: the stats are rounded to float32 (2^-24 relative) and
//     summed in float32 over W parts like an fp32 all-reduce (W - 1 more
//     roundings of the partial sums). Here |batch mean - running mean| <
//     0.3 std, so mean and variance move by a few 2^-24 relative, invstd
//     by half that, and y = x scale + shift, dx = k1 dy + k2 x + k3 (the
//     fused ops' own float32 expressions) by a few ulps of their terms,
//     |terms| < 10 (1 + |want|) at these scales: 1e-5 (1 + |want|)
//     (observed: at most 2% of it). dbeta and dgamma are sums that may
//     cancel, so their bound adds (W + 1) 2^-24 times the sum of the
//     parts' |stats|.
//
// A rank holding one row, or none, is part of the table: only the global
// count must be at least 2.

// syncBNBatch is one batch and the batch norm state it meets.
type syncBNBatch struct {
	shape                 []int // [N, ..., C]
	x, dy                 []float64
	gamma, beta, rm0, rv0 []float64
}

// newSyncBNBatch draws x ~ N(mean, 2^2), dy ~ N(0, 1), and a running mean
// within 0.2 of mean, all float32-exact (bf16-exact when bf).
func newSyncBNBatch(shape []int, seed uint64, mean float64, bf bool) syncBNBatch {
	r := rand.New(rand.NewPCG(seed, 0x5b))
	c := shape[len(shape)-1]
	draw := func(n int, mu, sigma float64) []float64 {
		v := make([]float64, n)
		for i := range v {
			v[i] = float64(float32(mu + sigma*r.NormFloat64()))
			if bf {
				v[i] = float64(FromBFloat16(ToBFloat16([]float32{float32(v[i])}))[0])
			}
		}
		return v
	}
	n := numel(shape)
	b := syncBNBatch{shape: shape, x: draw(n, mean, 2), dy: draw(n, 0, 1)}
	b.gamma, b.beta = draw(c, 1, 0.5), draw(c, 0, 1)
	b.rm0, b.rv0 = draw(c, mean, 0.1), draw(c, 4, 0.5)
	return b
}

// syncBNOut is what one run produces: y and dx over the whole batch (the
// parts' rows in order), the all-reduced forward and backward stats [2, C]
// (backward: dbeta then dgamma), the sum of the parts' |backward stats|,
// and each part's running averages and saved statistics.
type syncBNOut struct {
	y, dx          []float64
	fwd, bwd, mag  []float64
	rm, rv, sm, si [][]float64
}

// sbTensor makes a tensor of dtype dt on dev holding v (nil: zeros).
func sbTensor(t *testing.T, dev *Device, dt DType, v []float64, shape ...int) *Tensor {
	t.Helper()
	x := mustNew(t, dev, dt, shape...)
	t.Cleanup(x.Close)
	if v == nil {
		v = make([]float64, x.Numel())
	}
	var err error
	if dt == Float64 {
		err = x.WriteFloat64(v)
	} else {
		err = x.WriteFloat32(toF32(v))
	}
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func sbMust(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// sbAllReduce sums the parts' [2, C] stats in the stats' dtype, in part
// order, as an all-reduce in that dtype would.
func sbAllReduce(parts [][]float64, dt DType) []float64 {
	sum := make([]float64, len(parts[0]))
	for _, p := range parts {
		for i, v := range p {
			if dt == Float64 {
				sum[i] += v
			} else {
				sum[i] = float64(float32(sum[i]) + float32(v))
			}
		}
	}
	return sum
}

// runFusedBN runs pv_batchnorm_forward and _backward on the whole batch.
func runFusedBN(t *testing.T, dev *Device, act, param DType, b syncBNBatch) syncBNOut {
	t.Helper()
	c := b.shape[len(b.shape)-1]
	vec := func(v []float64) *Tensor { return sbTensor(t, dev, param, v, c) }
	full := func(v []float64) *Tensor { return sbTensor(t, dev, act, v, b.shape...) }
	x, dy, y, dx := full(b.x), full(b.dy), full(nil), full(nil)
	g, be, rm, rv := vec(b.gamma), vec(b.beta), vec(b.rm0), vec(b.rv0)
	sm, si, dg, db := vec(nil), vec(nil), vec(nil), vec(nil)
	bn := BatchNorm{Training: true, Momentum: 0.1, Eps: 1e-5}
	sbMust(t, "fused forward", bn.Forward(x, g, be, rm, rv, sm, si, y))
	sbMust(t, "fused backward", bn.Backward(x, g, sm, si, dy, dx, dg, db))
	out := syncBNOut{y: readF64(t, y), dx: readF64(t, dx)}
	out.bwd = append(readF64(t, db), readF64(t, dg)...)
	out.rm, out.rv = [][]float64{readF64(t, rm)}, [][]float64{readF64(t, rv)}
	out.sm, out.si = [][]float64{readF64(t, sm)}, [][]float64{readF64(t, si)}
	return out
}

// runSyncBN runs the recipe on parts (images per rank, summing to N).
// Even ranks work in place, the aliasing polyview.h allows: y over a copy
// of x, dx over a copy of dy; odd ranks write separate tensors.
func runSyncBN(t *testing.T, dev *Device, act, param DType, b syncBNBatch,
	parts []int) syncBNOut {
	t.Helper()
	c := b.shape[len(b.shape)-1]
	perImage := numel(b.shape) / b.shape[0]
	rows := numel(b.shape) / c
	vec := func(v []float64) *Tensor { return sbTensor(t, dev, param, v, c) }
	g, be := vec(b.gamma), vec(b.beta)
	w := len(parts)
	type rank struct {
		x, dy, y, dx, rm, rv, sm, si *Tensor
		inPlace                      bool
	}
	ranks := make([]rank, w)
	first := 0
	for i, p := range parts {
		shape := append([]int{p}, b.shape[1:]...)
		lo, hi := first*perImage, (first+p)*perImage
		first += p
		r := &ranks[i]
		r.inPlace = i%2 == 0
		r.x = sbTensor(t, dev, act, b.x[lo:hi], shape...)
		r.dy = sbTensor(t, dev, act, b.dy[lo:hi], shape...)
		r.y = sbTensor(t, dev, act, make([]float64, hi-lo), shape...)
		r.dx = sbTensor(t, dev, act, make([]float64, hi-lo), shape...)
		if r.inPlace {
			r.y = sbTensor(t, dev, act, b.x[lo:hi], shape...)
			r.dx = sbTensor(t, dev, act, b.dy[lo:hi], shape...)
		}
		r.rm, r.rv = vec(b.rm0), vec(b.rv0)
		r.sm, r.si = vec(nil), vec(nil)
	}
	stats := func() *Tensor { return sbTensor(t, dev, param, nil, 2, c) }
	bn := BatchNorm{Training: true, Momentum: 0.1, Eps: 1e-5}
	var out syncBNOut

	// Forward: local sums about the running mean, all-reduce, normalise.
	local := make([][]float64, w)
	for i, r := range ranks {
		s := stats()
		sbMust(t, "stats", BatchNormStats(r.x, r.rm, s))
		local[i] = readF64(t, s)
	}
	out.fwd = sbAllReduce(local, param)
	for _, r := range ranks {
		s := sbTensor(t, dev, param, out.fwd, 2, c)
		in := r.x
		if r.inPlace {
			in = r.y
		}
		sbMust(t, "forward stats",
			bn.ForwardStats(in, g, be, s, rows, r.rm, r.rv, r.sm, r.si, r.y))
		out.y = append(out.y, readF64(t, r.y)...)
		out.rm = append(out.rm, readF64(t, r.rm))
		out.rv = append(out.rv, readF64(t, r.rv))
		out.sm = append(out.sm, readF64(t, r.sm))
		out.si = append(out.si, readF64(t, r.si))
	}

	// Backward: local dbeta and dgamma, all-reduce, dx.
	for i, r := range ranks {
		s := stats()
		sbMust(t, "backward stats", BatchNormBackwardStats(r.x, r.sm, r.si, r.dy, s))
		local[i] = readF64(t, s)
	}
	out.bwd = sbAllReduce(local, param)
	out.mag = make([]float64, 2*c)
	for _, l := range local {
		for j, v := range l {
			out.mag[j] += math.Abs(v)
		}
	}
	for _, r := range ranks {
		s := sbTensor(t, dev, param, out.bwd, 2, c)
		dy := r.dy
		if r.inPlace {
			dy = r.dx
		}
		sbMust(t, "backward input", bn.BackwardInput(r.x, g, r.sm, r.si, dy, s, rows, r.dx))
		out.dx = append(out.dx, readF64(t, r.dx)...)
	}
	return out
}

// sbCheck fails when |got - want| > tol (1 + |want|) + extra[i] anywhere,
// naming the worst element.
func sbCheck(t *testing.T, what string, got, want []float64, tol float64, extra []float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	worst, at := 0.0, 0
	for i := range got {
		bound := tol * (1 + math.Abs(want[i]))
		if extra != nil {
			bound += extra[i]
		}
		r := math.Abs(got[i]-want[i]) / bound
		if math.IsNaN(r) {
			r = math.Inf(1)
		}
		if r > worst {
			worst, at = r, i
		}
	}
	if worst > 1 {
		t.Errorf("%s: element %d is %.17g, want %.17g (%.2gx the bound)", what, at, got[at],
			want[at], worst)
	}
}

// syncBNSplits are the batches and their splits into W = 1, 2, 3 ranks.
var syncBNSplits = []struct {
	shape []int
	parts []int
}{
	{[]int{6, 3, 3, 5}, []int{6}},
	{[]int{6, 3, 3, 5}, []int{4, 2}},
	{[]int{6, 3, 3, 5}, []int{3, 1, 2}},
	{[]int{6, 3, 3, 5}, []int{4, 0, 2}}, // a rank without rows
	{[]int{40, 7}, []int{40}},
	{[]int{40, 7}, []int{25, 15}},
	{[]int{40, 7}, []int{30, 1, 9}}, // a rank with one row
}

func TestSyncBNMatchesFusedBatchNorm(t *testing.T) {
	dev := nnDevice(t)
	for si, sp := range syncBNSplits {
		for _, dt := range []DType{Float64, Float32} {
			t.Run(fmt.Sprintf("%v/W=%d%v/%v", sp.shape, len(sp.parts), sp.parts, dt),
				func(t *testing.T) {
					b := newSyncBNBatch(sp.shape, uint64(si), 0.5, false)
					want := runFusedBN(t, dev, dt, dt, b)
					got := runSyncBN(t, dev, dt, dt, b, sp.parts)
					tol, unit := 1e-12, math.Ldexp(1, -53)
					if dt == Float32 {
						tol, unit = 1e-5, math.Ldexp(1, -24)
					}
					extra := make([]float64, len(got.mag))
					for i, m := range got.mag {
						extra[i] = float64(len(sp.parts)+1) * unit * m
					}
					sbCheck(t, "y", got.y, want.y, tol, nil)
					sbCheck(t, "dx", got.dx, want.dx, tol, nil)
					sbCheck(t, "dbeta, dgamma", got.bwd, want.bwd, tol, extra)
					for p := range sp.parts {
						name := fmt.Sprintf("part %d: ", p)
						sbCheck(t, name+"running mean", got.rm[p], want.rm[0], tol, nil)
						sbCheck(t, name+"running var", got.rv[p], want.rv[0], tol, nil)
						sbCheck(t, name+"save mean", got.sm[p], want.sm[0], tol, nil)
						sbCheck(t, name+"save invstd", got.si[p], want.si[0], tol, nil)
					}
				})
		}
	}
}

// TestSyncBNFarFromZero is the case the shift exists for: activations
// with mean 1000 and std 2 in float32. Sums of x and x^2 would lose the
// variance (x^2 ~ 1e6, its float32 rounding ~0.06, against a variance of
// 4); sums about the running mean keep it, so the statistics still meet
// the fused op's (computed in double from the data) within the float32
// bound above. y and dx are not compared: in float32 the fused ops'
// expressions (x scale + shift) lose |mean| / std ulps whichever way the
// statistics were summed.
func TestSyncBNFarFromZero(t *testing.T) {
	dev := nnDevice(t)
	b := newSyncBNBatch([]int{6, 3, 3, 5}, 9, 1000, false)
	want := runFusedBN(t, dev, Float32, Float32, b)
	got := runSyncBN(t, dev, Float32, Float32, b, []int{3, 1, 2})
	for p := range got.rm {
		name := fmt.Sprintf("part %d: ", p)
		sbCheck(t, name+"running mean", got.rm[p], want.rm[0], 1e-5, nil)
		sbCheck(t, name+"running var", got.rv[p], want.rv[0], 1e-5, nil)
		sbCheck(t, name+"save mean", got.sm[p], want.sm[0], 1e-5, nil)
		sbCheck(t, name+"save invstd", got.si[p], want.si[0], 1e-5, nil)
	}
}

// TestSyncBNErrors checks that bad arguments fail with messages naming
// the op, the argument and the problem.
func TestSyncBNErrors(t *testing.T) {
	dev := nnDevice(t)
	f32 := func(shape ...int) *Tensor { return mustNew(t, dev, Float32, shape...) }
	x, dy, y := f32(2, 4, 4, 3), f32(2, 4, 4, 3), f32(2, 4, 4, 3)
	v, stats := f32(3), f32(2, 3)
	v4, v64, stats64 := f32(4), mustNew(t, dev, Float64, 3), mustNew(t, dev, Float64, 2, 3)
	dx64 := mustNew(t, dev, Float64, 2, 4, 4, 3)
	row, one := f32(1, 3), f32(1, 3)
	train := BatchNorm{Training: true, Momentum: 0.1, Eps: 1e-5}
	eval := BatchNorm{Momentum: 0.1, Eps: 1e-5}
	const rows = 32
	for _, tc := range []struct {
		err  error
		want string
	}{
		{BatchNormStats(x, v, v), "batchnorm_stats: stats has shape [3], want [2, 3]"},
		{BatchNormStats(x, v, stats64), "batchnorm_stats: stats has dtype float64, want shift's float32"},
		{BatchNormStats(v, v, stats), "batchnorm_stats: x has shape [3], want [N, ..., C]"},
		{BatchNormStats(x, v4, stats), "batchnorm_stats: shift has shape [4], want [3]"},
		{BatchNormStats(x, nil, stats), "batchnorm stats: shift is nil"},
		{eval.ForwardStats(x, v, v, stats, rows, v, v, v, v, y),
			"batchnorm_forward_stats: desc->training is 0"},
		{train.ForwardStats(x, v, v, stats, 10, v, v, v, v, y),
			"batchnorm_forward_stats: count 10, want the rows of every rank together: at " +
				"least 2 (training needs 2 values per channel) and at least this rank's 32"},
		{train.ForwardStats(row, v, v, stats, 1, v, v, v, v, one), "count 1, want"},
		{train.ForwardStats(x, v, v, stats, rows, v4, v, v, v, y),
			"batchnorm_forward_stats: running_mean has shape [4], want [3]"},
		{train.ForwardStats(x, v, v, stats, rows, v, v64, v, v, y),
			"batchnorm_forward_stats: running_var has dtype float64, want gamma's float32"},
		{train.ForwardStats(x, v, v, v, rows, v, v, v, v, y),
			"batchnorm_forward_stats: stats has shape [3], want [2, 3]"},
		{BatchNormBackwardStats(x, v, v, f32(2, 4, 4, 4), stats),
			"batchnorm_backward_stats: dy has shape [2, 4, 4, 4], want x's [2, 4, 4, 3]"},
		{BatchNormBackwardStats(x, v, v64, dy, stats),
			"batchnorm_backward_stats: save_invstd has dtype float64, want save_mean's float32"},
		{train.BackwardInput(x, v, v, v, dy, stats, rows, dx64),
			"batchnorm_backward_input: dx has dtype float64, want x's float32"},
		{train.BackwardInput(x, v, v, v, dy, stats, 0, dy), "batchnorm_backward_input: count 0"},
	} {
		if tc.err == nil || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("error %v, want it to contain %q", tc.err, tc.want)
		}
	}
	// One row in all: the fused forward refuses it too, as polyview.h says.
	err := train.Forward(row, v, v, v, v, v, v, one)
	if err == nil || !strings.Contains(err.Error(), "at least 2 values per channel") {
		t.Errorf("fused forward of one row: error %v, want a refusal", err)
	}
}

// TestCUDASyncBatchNormMatchesCPU runs the recipe on the GPU and on the
// CPU (float32) with the same inputs and splits. Both sides sum in double
// and round the sums to the float32 stats once, so the stats, statistics
// and running averages agree to an ulp or two and y and dx, computed with
// the same per-channel coefficients (on the GPU as fused multiply-adds),
// to a few: 1e-5 (1 + |want|), as TestCUDABatchNormMatchesCPU. bf16
// activations (bf16-exact inputs on both sides) add one rounding of y or
// dx, 2^-8 relative: 5e-3.
func TestCUDASyncBatchNormMatchesCPU(t *testing.T) {
	gpu, cpu := gpuDevice(t), nnDevice(t)
	splits := []struct {
		shape []int
		parts []int
	}{
		{[]int{4, 6, 6, 40}, []int{4}},
		{[]int{4, 6, 6, 40}, []int{3, 1}},
		{[]int{8, 4, 4, 70}, []int{2, 5, 1}},
		{[]int{300, 48}, []int{150, 1, 149}},
	}
	for si, sp := range splits {
		for _, act := range []DType{Float32, BFloat16} {
			t.Run(fmt.Sprintf("%v/W=%d%v/%v", sp.shape, len(sp.parts), sp.parts, act),
				func(t *testing.T) {
					b := newSyncBNBatch(sp.shape, uint64(100+si), 0.5, act == BFloat16)
					got := runSyncBN(t, gpu, act, Float32, b, sp.parts)
					want := runSyncBN(t, cpu, Float32, Float32, b, sp.parts)
					actTol := 1e-5
					if act == BFloat16 {
						actTol = 5e-3
					}
					sbCheck(t, "y", got.y, want.y, actTol, nil)
					sbCheck(t, "dx", got.dx, want.dx, actTol, nil)
					sbCheck(t, "forward stats", got.fwd, want.fwd, 1e-5, nil)
					sbCheck(t, "dbeta, dgamma", got.bwd, want.bwd, 1e-5, nil)
					for p := range sp.parts {
						name := fmt.Sprintf("part %d: ", p)
						sbCheck(t, name+"running mean", got.rm[p], want.rm[p], 1e-5, nil)
						sbCheck(t, name+"running var", got.rv[p], want.rv[p], 1e-5, nil)
						sbCheck(t, name+"save mean", got.sm[p], want.sm[p], 1e-5, nil)
						sbCheck(t, name+"save invstd", got.si[p], want.si[p], 1e-5, nil)
					}
				})
		}
	}
}

// TestCUDASyncBatchNormMatchesFused checks the GPU's recipe on three
// ranks against the GPU's own fused batch norm on the whole batch, with
// the float32 bounds of TestSyncBNMatchesFusedBatchNorm.
func TestCUDASyncBatchNormMatchesFused(t *testing.T) {
	gpu := gpuDevice(t)
	b := newSyncBNBatch([]int{6, 5, 5, 64}, 7, 0.5, false)
	parts := []int{3, 1, 2}
	want := runFusedBN(t, gpu, Float32, Float32, b)
	got := runSyncBN(t, gpu, Float32, Float32, b, parts)
	extra := make([]float64, len(got.mag))
	for i, m := range got.mag {
		extra[i] = float64(len(parts)+1) * math.Ldexp(1, -24) * m
	}
	sbCheck(t, "y", got.y, want.y, 1e-5, nil)
	sbCheck(t, "dx", got.dx, want.dx, 1e-5, nil)
	sbCheck(t, "dbeta, dgamma", got.bwd, want.bwd, 1e-5, extra)
	for p := range parts {
		sbCheck(t, fmt.Sprintf("part %d: running var", p), got.rv[p], want.rv[0], 1e-5, nil)
		sbCheck(t, fmt.Sprintf("part %d: save invstd", p), got.si[p], want.si[0], 1e-5, nil)
	}
}

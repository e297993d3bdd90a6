package dist

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyview/polyview/bindings"
)

func cpu(t *testing.T) *bindings.Device {
	t.Helper()
	dev, err := bindings.Open("cpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dev.Close)
	return dev
}

// tcpGroup starts size TCP ranks on a free loopback port.
func tcpGroup(t *testing.T, size int, timeout time.Duration) []Collective {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]Collective, size)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for r := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := Join(context.Background(), JoinConfig{Rank: r, Size: size,
				Addr: Addr("127.0.0.1", port), JoinTimeout: 10 * time.Second, Timeout: timeout})
			out[r], errs[r] = g, err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, g := range out {
			g.Close()
		}
	})
	return out
}

// onEvery runs f for every rank concurrently and returns the errors.
func onEvery(ranks []Collective, f func(r int, c Collective) error) []error {
	errs := make([]error, len(ranks))
	var wg sync.WaitGroup
	for r, c := range ranks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = f(r, c)
		}()
	}
	wg.Wait()
	return errs
}

// TestCollectives: both host groups give exact results for every
// collective over many rounds (no cross-talk between rounds), in float32
// and float64, and count the bytes each rank sends.
func TestCollectives(t *testing.T) {
	dev := cpu(t)
	const size = 3
	local, _ := NewLocalGroup(size, 5*time.Second)
	groups := map[string][]Collective{"local": local, "tcp": tcpGroup(t, size, 5*time.Second)}
	for name, ranks := range groups {
		errs := onEvery(ranks, func(r int, c Collective) error {
			for round := 0; round < 20; round++ {
				// All-reduce: exact small integers.
				v := []float32{float32(r), float32(round), 1}
				x, _ := dev.FromFloat32(v, 3)
				if err := c.AllReduceSum(context.Background(), x); err != nil {
					return err
				}
				got, _ := x.Float32()
				x.Close()
				if want := []float32{3, float32(size * round), size}; !slices.Equal(got, want) {
					return fmt.Errorf("round %d all-reduce: %v, want %v", round, got, want)
				}
				// All-gather of float64, rank order.
				l, _ := dev.FromFloat64([]float64{float64(r), float64(-round)}, 2)
				all, _ := dev.NewTensor(bindings.Float64, size, 2)
				if err := c.AllGather(context.Background(), l, all); err != nil {
					return err
				}
				g, _ := all.Float64()
				l.Close()
				all.Close()
				for k := 0; k < size; k++ {
					if g[2*k] != float64(k) || g[2*k+1] != float64(-round) {
						return fmt.Errorf("round %d all-gather: %v", round, g)
					}
				}
				// Broadcast from a rotating root.
				root := round % size
				b, _ := dev.FromFloat32([]float32{float32(r*100 + round)}, 1)
				if err := c.Broadcast(context.Background(), b, root); err != nil {
					return err
				}
				bv, _ := b.Float32()
				b.Close()
				if bv[0] != float32(root*100+round) {
					return fmt.Errorf("round %d broadcast from %d: %v", round, root, bv)
				}
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Errorf("%s rank %d: %v", name, r, err)
			}
		}
		for r, c := range ranks {
			tr := c.Traffic()
			if tr.Calls != 60 || tr.Bytes <= 0 || !tr.Measured {
				t.Errorf("%s rank %d traffic %+v", name, r, tr)
			}
		}
	}
}

// TestTCPTrafficIsTheWire: per all-reduce of B bytes, a non-zero rank
// sends B and rank 0 sends the result to each of the others.
func TestTCPTrafficIsTheWire(t *testing.T) {
	dev := cpu(t)
	ranks := tcpGroup(t, 3, 5*time.Second)
	const n = 1000
	onEvery(ranks, func(r int, c Collective) error {
		x, _ := dev.NewTensor(bindings.Float32, n)
		defer x.Close()
		return c.AllReduceSum(context.Background(), x)
	})
	if got := ranks[1].Traffic().Bytes; got != 4*n {
		t.Errorf("rank 1 sent %d bytes, want %d", got, 4*n)
	}
	if got := ranks[0].Traffic().Bytes; got != 2*4*n {
		t.Errorf("rank 0 sent %d bytes, want %d", got, 2*4*n)
	}
}

// TestFailures: a rank that is gone, hangs, fails, or calls another
// collective makes the others fail promptly with an error that says
// which rank and what happened; never a hang.
func TestFailures(t *testing.T) {
	dev := cpu(t)
	call := func(c Collective) error {
		x, _ := dev.NewTensor(bindings.Float32, 4)
		defer x.Close()
		return c.AllReduceSum(context.Background(), x)
	}
	// Ranks 0 and 1 wait 0.5 s (TCP peers 1 s) for rank 2; they must
	// have their error within 2.5 s, before the frozen rank 2 wakes at 3 s.
	const frozen, noticed = 3 * time.Second, 2500 * time.Millisecond
	cases := []struct {
		name string
		bad  func(c Collective) // what rank 2 does instead of the all-reduce
		want string
	}{
		{"died", func(c Collective) { c.Close() }, "rank 2 closed its connection"},
		{"hangs", func(c Collective) { time.Sleep(frozen) }, "rank 2 did not complete all-reduce"},
		{"fails", func(c Collective) { c.Fail(errors.New("out of memory")) }, "out of memory"},
		{"diverged", func(c Collective) {
			x, _ := dev.NewTensor(bindings.Float32, 4)
			defer x.Close()
			c.Broadcast(context.Background(), x, 0)
		}, "diverged"},
	}
	for _, tc := range cases {
		for _, kind := range []string{"local", "tcp"} {
			if kind == "local" && tc.name == "died" {
				continue // goroutines do not die alone; covered by "hangs"
			}
			t.Run(kind+"/"+tc.name, func(t *testing.T) {
				var ranks []Collective
				if kind == "local" {
					ranks, _ = NewLocalGroup(3, 500*time.Millisecond)
				} else {
					ranks = tcpGroup(t, 3, 500*time.Millisecond)
				}
				start := time.Now()
				took := make([]time.Duration, 3)
				errs := onEvery(ranks, func(r int, c Collective) error {
					if r == 2 {
						tc.bad(c)
						return nil
					}
					err := call(c)
					took[r] = time.Since(start)
					return err
				})
				for r := 0; r < 2; r++ {
					if took[r] > noticed {
						t.Errorf("rank %d took %v to notice", r, took[r])
					}
				}
				for r := 0; r < 2; r++ {
					if errs[r] == nil || !strings.Contains(errs[r].Error(), tc.want) {
						t.Errorf("rank %d: %v, want an error saying %q", r, errs[r], tc.want)
					}
				}
				// After a failure, later calls fail at once.
				if kind == "tcp" {
					if err := call(ranks[0]); err == nil {
						t.Error("rank 0: a call after the failure succeeded")
					}
				}
			})
		}
	}
}

// TestJoinErrors: ranks that disagree about the group are told why.
func TestJoinErrors(t *testing.T) {
	port, _ := freePort()
	addr := Addr("127.0.0.1", port)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	for r, size := range []int{2, 3} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[r] = Join(context.Background(), JoinConfig{Rank: r, Size: size, Addr: addr,
				JoinTimeout: 3 * time.Second})
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "world size is 3; rank 0 says 2") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
	// A rank that never comes: rank 0 gives up after the join timeout.
	start := time.Now()
	_, err := Join(context.Background(), JoinConfig{Rank: 0, Size: 2, Addr: addr,
		JoinTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "1 of 2 ranks joined") ||
		time.Since(start) > 3*time.Second {
		t.Errorf("lonely rank 0: %v after %v", err, time.Since(start))
	}
	if _, err := Join(context.Background(), JoinConfig{Rank: 2, Size: 2, Addr: addr}); err == nil {
		t.Error("rank 2 of 2 joined")
	}
}

// TestGlobalLossEqualsOneRank: for every objective, W ranks holding
// consecutive slices of a batch get the loss of the whole batch and
// exactly their rows of its gradient (the same computation on the same
// gathered data, so bit for bit).
func TestGlobalLossEqualsOneRank(t *testing.T) {
	dev := cpu(t)
	const m, d, w, per = 4, 16, 3, 5
	n := w * per
	rng := rand.New(rand.NewSource(1))
	h := make([]float32, n*m*d)
	for i := range h {
		h[i] = float32(rng.NormFloat64())
	}
	for _, obj := range bindings.Objectives() {
		mv := m
		if obj == bindings.SimCLR {
			mv = 2
		}
		hv := h[:n*mv*d]
		loss := bindings.Loss{Objective: obj, Tau: 0.3}
		ht, _ := dev.FromFloat32(hv, n, mv, d)
		gt, _ := dev.NewTensor(bindings.Float32, n, mv, d)
		want, err := loss.ForwardBackward(ht, gt)
		if err != nil {
			t.Fatal(err)
		}
		wantGrad, _ := gt.Float32()
		ht.Close()
		gt.Close()

		ranks, _ := NewLocalGroup(w, 5*time.Second)
		errs := onEvery(ranks, func(r int, c Collective) error {
			row := per * mv * d
			local, _ := dev.FromFloat32(hv[r*row:(r+1)*row], per, mv, d)
			defer local.Close()
			dh, _ := dev.NewTensor(bindings.Float32, per, mv, d)
			defer dh.Close()
			gl := &GlobalLoss{Loss: loss, C: c}
			defer gl.Close()
			got, err := gl.ForwardBackward(context.Background(), local, dh)
			if err != nil {
				return err
			}
			if got != want {
				return fmt.Errorf("loss %v, one rank %v", got, want)
			}
			grad, _ := dh.Float32()
			if !slices.Equal(grad, wantGrad[r*row:(r+1)*row]) {
				return fmt.Errorf("gradient rows differ from the one-rank gradient")
			}
			return nil
		})
		for r, err := range errs {
			if err != nil {
				t.Errorf("%v rank %d: %v", obj, r, err)
			}
		}
	}
}

// TestGradReducer: packed and in-place buckets both come back as the sum
// over the ranks, each gradient in its own place.
func TestGradReducer(t *testing.T) {
	dev := cpu(t)
	shapes := [][]int{{3}, {64, 64}, {5, 2}, {7}, {2000}}
	const w = 3
	ranks, _ := NewLocalGroup(w, 5*time.Second)
	value := func(r, g, i int) float32 { return float32((r+1)*(g+2)) + float32(i%7) }
	errs := onEvery(ranks, func(r int, c Collective) error {
		var grads []*bindings.Tensor
		for g, s := range shapes {
			x, _ := dev.NewTensor(bindings.Float32, s...)
			v := make([]float32, x.Numel())
			for i := range v {
				v[i] = value(r, g, i)
			}
			x.WriteFloat32(v)
			grads = append(grads, x)
			defer x.Close()
		}
		red, err := NewGradReducer(c, grads, 8<<10) // 8 KiB: some packed, some alone
		if err != nil {
			return err
		}
		defer red.Close()
		if red.Buckets() < 2 || red.Buckets() >= len(shapes) {
			return fmt.Errorf("%d buckets for %d tensors", red.Buckets(), len(shapes))
		}
		if err := red.Reduce(context.Background()); err != nil {
			return err
		}
		for g, x := range grads {
			v, _ := x.Float32()
			for i := range v {
				var want float32
				for k := 0; k < w; k++ {
					want += value(k, g, i)
				}
				if v[i] != want {
					return fmt.Errorf("grad %d [%d] = %v, want %v", g, i, v[i], want)
				}
			}
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// TestGradReducerOverlap: gradients reported ready during the backward
// pass are queued bucket by bucket, in bucket order, before Wait; Wait
// flushes the rest; the sums are those of Reduce.
func TestGradReducerOverlap(t *testing.T) {
	dev := cpu(t)
	const w = 2
	ranks, _ := NewLocalGroup(w, 5*time.Second)
	errs := onEvery(ranks, func(r int, c Collective) error {
		serial := NewSerial()
		defer serial.Close()
		var grads []*bindings.Tensor
		for g := 0; g < 6; g++ {
			x, _ := dev.FromFloat32(slices.Repeat([]float32{float32(r + g)}, 1000), 1000)
			defer x.Close()
			grads = append(grads, x)
		}
		red, err := NewGradReducer(c, grads, 12000) // 3 tensors of 4000 bytes a bucket
		if err != nil {
			return err
		}
		defer red.Close()
		if red.Buckets() != 2 {
			return fmt.Errorf("%d buckets", red.Buckets())
		}
		red.Start(context.Background(), serial)
		red.Ready(grads[1])
		red.Ready(grads[0])
		if len(red.pending) != 0 {
			return errors.New("a bucket was queued before all its gradients were ready")
		}
		red.Ready(grads[2])
		if len(red.pending) != 1 {
			return fmt.Errorf("%d buckets queued after the first was complete", len(red.pending))
		}
		red.Ready(grads[4]) // grads[3] and [5] are never reported: Wait takes them
		if err := red.Wait(); err != nil {
			return err
		}
		for g, x := range grads {
			v, _ := x.Float32()
			if want := float32(2*g + 1); v[0] != want || v[999] != want {
				return fmt.Errorf("grad %d = %v, want %v", g, v[0], want)
			}
		}
		return nil
	})
	for r, err := range errs {
		if err != nil {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

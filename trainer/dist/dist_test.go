package dist

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyview/polyview/bindings"
)

// TestGlobalLossEqualsOneRank: for every objective, W ranks holding
// disjoint, unequal slices of a batch get the loss of the whole batch
// and exactly their rows of its gradient (the same computation on the
// same gathered data, so bit for bit).
func TestGlobalLossEqualsOneRank(t *testing.T) {
	dev, err := bindings.Open("cpu", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	const m, d = 4, 16
	split := []int{5, 3, 8} // images per rank
	n := 16
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

		ranks, _ := NewLocalGroup(len(split), 5*time.Second)
		var wg sync.WaitGroup
		first := 0
		for r, cnt := range split {
			wg.Add(1)
			go func(r, first, cnt int) {
				defer wg.Done()
				local := hv[first*mv*d : (first+cnt)*mv*d]
				got, grad, err := GlobalLoss(context.Background(), ranks[r], dev, loss, local,
					cnt, mv, d)
				if err != nil {
					t.Errorf("%v rank %d: %v", obj, r, err)
					return
				}
				if got != want {
					t.Errorf("%v rank %d: loss %v, one rank %v", obj, r, got, want)
				}
				for k, g := range grad {
					if g != wantGrad[first*mv*d+k] {
						t.Errorf("%v rank %d: grad[%d] %v, one rank %v", obj, r, k, g,
							wantGrad[first*mv*d+k])
						return
					}
				}
			}(r, first, cnt)
			first += cnt
		}
		wg.Wait()
	}
}

func TestAllReduceSum(t *testing.T) {
	ranks, _ := NewLocalGroup(4, 5*time.Second)
	var wg sync.WaitGroup
	results := make([][]float32, 4)
	for r := range ranks {
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			for round := 0; round < 50; round++ { // many rounds: no cross-talk
				buf := []float32{float32(r), float32(round), 1}
				if err := ranks[r].AllReduceSum(context.Background(), buf); err != nil {
					t.Error(err)
					return
				}
				if buf[0] != 6 || buf[1] != float32(4*round) || buf[2] != 4 {
					t.Errorf("rank %d round %d: %v", r, round, buf)
					return
				}
				results[r] = buf
			}
		}(r)
	}
	wg.Wait()
}

// TestDeadRankTimesOut: a rank that never arrives makes the others fail
// within the timeout with an error saying so, never a hang; a rank that
// fails explicitly is named in the others' errors.
func TestDeadRankTimesOut(t *testing.T) {
	ranks, _ := NewLocalGroup(3, 200*time.Millisecond)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for r := 0; r < 2; r++ { // rank 2 is dead
		wg.Add(1)
		go func(r int) {
			defer wg.Done()
			_, errs[r] = ranks[r].AllGather(context.Background(), []float32{1})
		}(r)
	}
	wg.Wait()
	if time.Since(start) > 2*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
	for r, err := range errs {
		if err == nil || !(errors.Is(err, ErrTimeout) || strings.Contains(err.Error(), "timed out")) {
			t.Errorf("rank %d: %v", r, err)
		}
	}

	ranks, _ = NewLocalGroup(2, 5*time.Second)
	done := make(chan error)
	go func() {
		_, err := ranks[0].AllGather(context.Background(), []float32{1})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	ranks[1].Fail(fmt.Errorf("out of memory"))
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "rank 1 failed: out of memory") {
			t.Errorf("failed rank: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("rank 0 hung after rank 1 failed")
	}
}

package trainer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyview/polyview/bindings"
	"github.com/polyview/polyview/trainer/checkpoint"
	"github.com/polyview/polyview/trainer/dist"
)

// dpConfig is a small run on an indexed dataset (96 random CIFAR images,
// 6 steps an epoch at N = 16) with the kNN monitor off (no test split).
func dpConfig(t *testing.T, data string) Config {
	c := tinyConfig(t)
	c.Data, c.EvalData = data, ""
	c.Width, c.HeadDims = 4, []int{32, 16}
	c.N, c.M, c.Steps, c.WarmupSteps = 16, 3, 3, 1
	c.KNNEvery = 0
	return c
}

// trainRanks runs cfg on w in-process ranks and returns rank 0's result
// and every rank's error.
func trainRanks(t *testing.T, cfg Config, w int) (*Result, []error) {
	t.Helper()
	ranks, err := dist.NewLocalGroup(w, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	results := make([]*Result, w)
	errs := make([]error, w)
	var wg sync.WaitGroup
	for r := 0; r < w; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Dist = ranks[r]
			results[r], errs[r] = Train(context.Background(), c, quietLog(), io.Discard)
		}()
	}
	wg.Wait()
	return results[0], errs
}

func loadCkpt(t *testing.T, path string) map[string]checkpoint.Tensor {
	t.Helper()
	ts, _, err := checkpoint.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// closeTensors compares two checkpoints' tensors: every element within
// tol of the largest magnitude of its tensor. It returns the worst
// relative difference.
func closeTensors(t *testing.T, what string, a, b map[string]checkpoint.Tensor, tol float64) float64 {
	t.Helper()
	names := make([]string, 0, len(a))
	for n := range a {
		names = append(names, n)
	}
	sort.Strings(names)
	worst := 0.0
	for _, n := range names {
		av, _ := a[n].Float32()
		bt, ok := b[n]
		if !ok {
			t.Errorf("%s: %s missing", what, n)
			continue
		}
		bv, _ := bt.Float32()
		scale := 1e-6
		for _, v := range av {
			scale = math.Max(scale, math.Abs(float64(v)))
		}
		for i := range av {
			d := math.Abs(float64(av[i]-bv[i])) / scale
			worst = math.Max(worst, d)
			if d > tol {
				t.Errorf("%s: %s[%d] = %v and %v (relative difference %.2g > %g)", what, n, i,
					av[i], bv[i], d, tol)
				break
			}
		}
	}
	return worst
}

// dpTolerance bounds the difference between W ranks and one rank. The
// arithmetic is the same, but sums run in other orders: the gathered
// batch is rank-major where the one-rank batch follows the epoch order,
// synchronised BN adds per-rank partial sums, and gradients are summed
// over ranks after each rank's GEMM. Each order change moves a float32
// result by a few ulps (~1e-7 relative); three optimizer steps through
// LARS's trust ratio and BN's normalisation amplify that by well under
// 100, hence 1e-5 of each tensor's largest magnitude.
const dpTolerance = 1e-5

// TestDataParallelEqualsOneRank: for every objective, 2 and 3 ranks
// taking N/W images each give the loss of every step and the parameters,
// BN statistics and optimizer state after 3 steps of one rank with the
// whole batch.
func TestDataParallelEqualsOneRank(t *testing.T) {
	data := writeCIFARBin(t, 96)
	for _, obj := range bindings.Objectives() {
		t.Run(obj.String(), func(t *testing.T) {
			cfg := dpConfig(t, data)
			cfg.Objective = obj.String()
			if obj == bindings.SimCLR {
				cfg.M = 2
			}
			one, err := Train(context.Background(), cfg, quietLog(), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			want := loadCkpt(t, one.LastCkpt)
			for _, w := range []int{2, 4} {
				c := cfg
				c.Out = t.TempDir()
				res, errs := trainRanks(t, c, w)
				if err := errors.Join(errs...); err != nil {
					t.Fatalf("%d ranks: %v", w, err)
				}
				for s := range one.Losses {
					if d := math.Abs(res.Losses[s] - one.Losses[s]); d > 1e-5*math.Abs(one.Losses[s]) {
						t.Errorf("%d ranks, step %d: loss %v, one rank %v", w, s, res.Losses[s],
							one.Losses[s])
					}
				}
				got := loadCkpt(t, res.LastCkpt)
				worst := closeTensors(t, fmt.Sprintf("%d ranks", w), got, want, dpTolerance)
				t.Logf("%d ranks: worst relative difference %.2g", w, worst)
			}
		})
	}
}

// TestDataParallelMultiCrop: views of two sizes (the encoder runs once
// per size, the loss covers all views) give the one-rank result too.
func TestDataParallelMultiCrop(t *testing.T) {
	cfg := dpConfig(t, writeCIFARBin(t, 96))
	cfg.Views, cfg.M = "multicrop:2x32,2x16", 4
	one, err := Train(context.Background(), cfg, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Out = t.TempDir()
	res, errs := trainRanks(t, cfg, 2)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	closeTensors(t, "multicrop, 2 ranks", loadCkpt(t, res.LastCkpt), loadCkpt(t, one.LastCkpt),
		dpTolerance)
}

// TestDataParallelPerRankBN: without synchronised BN each rank
// normalises with its own batch's statistics, which is not the one-rank
// computation: the runs must differ (the sync above is doing real work).
func TestDataParallelPerRankBN(t *testing.T) {
	data := writeCIFARBin(t, 96)
	cfg := dpConfig(t, data)
	one, err := Train(context.Background(), cfg, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.SyncBN = false
	cfg.Out = t.TempDir()
	res, errs := trainRanks(t, cfg, 2)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if d := math.Abs(res.Losses[0] - one.Losses[0]); d < 1e-4 {
		t.Errorf("per-rank BN gave the one-rank loss %v (difference %g)", one.Losses[0], d)
	}
	// Rank 0's metrics say what it sent per step: without synchronised BN,
	// the gradients, the gathered projections and the step's flags.
	b, err := os.ReadFile(filepath.Join(cfg.Out, "metrics.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct {
		Sent float64 `json:"sent_bytes_per_step"`
	}
	line := strings.SplitN(string(b), "\n", 2)[0]
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Sent <= 0 {
		t.Errorf("first metrics record %s: sent %v (%v)", line, rec.Sent, err)
	}
}

// TestDataParallelResumeOtherWorld: a run on 2 ranks, stopped after 2
// steps, resumes on 1 rank and on 4 ranks, and both end where an
// uninterrupted one-rank run ends (-n is the global batch, so the
// arithmetic, the data order and the schedule do not depend on W).
func TestDataParallelResumeOtherWorld(t *testing.T) {
	data := writeCIFARBin(t, 96)
	cfg := dpConfig(t, data)
	cfg.Steps = 4
	whole, err := Train(context.Background(), cfg, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := loadCkpt(t, whole.LastCkpt)
	for _, resumeW := range []int{1, 4} {
		c := cfg
		c.Out = t.TempDir()
		c.StopAfter = 2
		_, errs := trainRanks(t, c, 2)
		for r, err := range errs {
			if !errors.Is(err, ErrStopped) {
				t.Fatalf("rank %d: %v, want a stop after 2 steps", r, err)
			}
		}
		c.StopAfter, c.Resume = 0, "auto"
		var res *Result
		if resumeW == 1 {
			res, err = Train(context.Background(), c, quietLog(), io.Discard)
		} else {
			var errs []error
			res, errs = trainRanks(t, c, resumeW)
			err = errors.Join(errs...)
		}
		if err != nil {
			t.Fatalf("resume on %d ranks: %v", resumeW, err)
		}
		if res.ResumedAtStep != 2 || res.Steps != 4 {
			t.Errorf("resume on %d ranks: resumed at %d, ended at %d", resumeW,
				res.ResumedAtStep, res.Steps)
		}
		closeTensors(t, fmt.Sprintf("2 ranks then %d", resumeW), loadCkpt(t, res.LastCkpt),
			want, dpTolerance)
	}
}

// TestDataParallelRankFails: a rank that cannot start (its data path is
// wrong) makes the other stop at once with an error naming it, well
// before the collective timeout.
func TestDataParallelRankFails(t *testing.T) {
	data := writeCIFARBin(t, 96)
	cfg := dpConfig(t, data)
	ranks, _ := dist.NewLocalGroup(2, time.Minute)
	errs := make([]error, 2)
	start := time.Now()
	var wg sync.WaitGroup
	for r := 0; r < 2; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := cfg
			c.Dist = ranks[r]
			if r == 1 {
				c.Data = filepath.Join(t.TempDir(), "missing")
			}
			_, errs[r] = Train(context.Background(), c, quietLog(), io.Discard)
		}()
	}
	wg.Wait()
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("rank 0 took %v to stop", d)
	}
	if errs[0] == nil || !strings.Contains(errs[0].Error(), "rank 1 failed") ||
		!strings.Contains(errs[0].Error(), "missing") {
		t.Errorf("rank 0: %v, want an error naming rank 1 and its missing data", errs[0])
	}
	if errs[1] == nil {
		t.Error("rank 1 succeeded with a missing dataset")
	}
}

// TestDataParallelBatchSplit: -n must split evenly over the ranks.
func TestDataParallelBatchSplit(t *testing.T) {
	cfg := dpConfig(t, writeCIFARBin(t, 96))
	cfg.N = 15
	_, errs := trainRanks(t, cfg, 2)
	for r, err := range errs {
		if err == nil || !strings.Contains(err.Error(), "split evenly over the 2") {
			t.Errorf("rank %d: %v", r, err)
		}
	}
}

// writeShards writes WebDataset shards of random 32 x 32 PNG images, one
// shard per count, and returns their glob.
func writeShards(t *testing.T, counts ...int) string {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(5))
	for s, n := range counts {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("shard-%04d.tar", s)))
		if err != nil {
			t.Fatal(err)
		}
		tw := tar.NewWriter(f)
		for i := 0; i < n; i++ {
			img := image.NewRGBA(image.Rect(0, 0, 32, 32))
			rng.Read(img.Pix)
			var buf bytes.Buffer
			if err := png.Encode(&buf, img); err != nil {
				t.Fatal(err)
			}
			key := fmt.Sprintf("s%d_%05d", s, i)
			for _, m := range []struct {
				ext  string
				data []byte
			}{{"png", buf.Bytes()}, {"cls", []byte(fmt.Sprint(i % 10))}} {
				tw.WriteHeader(&tar.Header{Name: key + "." + m.ext, Mode: 0o644,
					Size: int64(len(m.data)), Typeflag: tar.TypeReg})
				tw.Write(m.data)
			}
		}
		tw.Close()
		f.Close()
	}
	return filepath.Join(dir, "shard-*.tar")
}

// TestDataParallelUnevenShards: 3 shards of unequal sizes over 2 ranks
// give the ranks unequal numbers of batches; the ranks end each epoch
// together (no rank waits for a collective the other never makes) and
// the run goes on through the next epoch.
func TestDataParallelUnevenShards(t *testing.T) {
	cfg := dpConfig(t, writeShards(t, 40, 24, 24))
	cfg.Steps = 8
	res, errs := trainRanks(t, cfg, 2)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if res.Steps != 8 {
		t.Errorf("%d steps, want 8", res.Steps)
	}
}

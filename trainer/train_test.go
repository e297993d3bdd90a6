package trainer

import (
	"context"
	"errors"
	"image"
	"image/color"
	"io"
	"log/slog"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/polyview/polyview/trainer/checkpoint"
)

// cifarDir is the CIFAR-10 WebDataset shards beside the repository
// ($POLYVIEW_DATA overrides). CI lays them out there; their absence is a
// failure, not a skip.
func cifarDir(t testing.TB) string {
	dir := os.Getenv("POLYVIEW_DATA")
	if dir == "" {
		dir = filepath.Join("..", "..", "shared", "data", "cifar10")
	}
	if _, err := os.Stat(filepath.Join(dir, "train-0000.tar")); err != nil {
		t.Fatalf("CIFAR-10 shards not found in %s (set POLYVIEW_DATA): %v", dir, err)
	}
	return dir
}

// tinyConfig is a CIFAR run small enough for CI: one training shard
// (5000 images), a narrow ConvNet, 32 x 32 views.
func tinyConfig(t testing.TB) Config {
	dir := cifarDir(t)
	c := DefaultConfig()
	c.Data = filepath.Join(dir, "train-0000.tar")
	c.EvalData = filepath.Join(dir, "test-0000.tar")
	c.Views, c.ViewSize = "simclr-cifar", 32
	c.Width, c.HeadDims = 8, []int{64, 32}
	c.N, c.M, c.Steps, c.WarmupSteps = 32, 4, 12, 3
	c.Out = t.TempDir()
	c.KNNBank, c.KNNQueries = 500, 200
	c.Progress = false
	c.LogEvery = 1
	c.Workers = 2
	return c
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// writeCIFARBin writes a CIFAR-10 binary batch of n random images into a
// new folder and returns it.
func writeCIFARBin(t testing.TB, n int) string {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(9))
	b := make([]byte, n*3073)
	rng.Read(b)
	for i := 0; i < n; i++ {
		b[i*3073] = byte(rng.Intn(10))
	}
	if err := os.WriteFile(filepath.Join(dir, "data_batch_1.bin"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestResumeEquivalence: a run stopped after 5 steps and resumed gives
// the loss sequence of an uninterrupted run, bit for bit (CPU ops are
// deterministic for a fixed thread count; data order and views are keyed
// by seed, epoch and position). 100 images at N = 32 make 3 steps an
// epoch, so the run crosses epochs and stops in the middle of one.
func TestResumeEquivalence(t *testing.T) {
	whole := tinyConfig(t)
	whole.Data = writeCIFARBin(t, 100)
	whole.KNNBank = 0
	whole.EvalData = filepath.Join(t.TempDir(), "absent") // kNN off: speed
	want, err := Train(context.Background(), whole, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	part := whole
	part.Out = t.TempDir()
	part.StopAfter = 5
	first, err := Train(context.Background(), part, quietLog(), io.Discard)
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("stop-after: %v", err)
	}
	part.StopAfter = 0
	part.Resume = "auto"
	second, err := Train(context.Background(), part, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if second.ResumedAtStep != 5 {
		t.Fatalf("resumed at step %d, want 5", second.ResumedAtStep)
	}
	if _, st, err := checkpoint.Load(second.LastCkpt); err != nil || st.Epoch != 4 {
		t.Errorf("final checkpoint: epoch %d (want 4 epochs of 3 steps), %v", st.Epoch, err)
	}
	got := append(append([]float64{}, first.Losses...), second.Losses...)
	if len(got) != len(want.Losses) {
		t.Fatalf("%d losses, want %d", len(got), len(want.Losses))
	}
	for i := range got {
		if got[i] != want.Losses[i] {
			t.Errorf("step %d: loss %.9g after resume, %.9g uninterrupted", i+1, got[i],
				want.Losses[i])
		}
	}
}

// TestEndToEndCIFAR trains on a CIFAR-10 shard and requires the kNN
// accuracy of the encoder to rise above that of its random
// initialisation. Random features already score about 30%; 120 steps of
// gpvc add several points, and 200 queries put one standard deviation of
// the accuracy at about 3.3 points, so the margin asked is 2 points.
func TestEndToEndCIFAR(t *testing.T) {
	c := tinyConfig(t)
	c.Steps, c.WarmupSteps, c.LogEvery = 120, 10, 20
	c.KNNBank, c.KNNQueries = 2000, 500
	res, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kNN %.3f -> %.3f, loss %.3f -> %.3f, %.0f views/s", res.KNNBefore, res.KNNAfter,
		res.Losses[0], res.FinalLoss, res.ViewsPerSec)
	if !(res.KNNAfter > res.KNNBefore+0.02) {
		t.Errorf("kNN top-1 %.3f after training, %.3f before", res.KNNAfter, res.KNNBefore)
	}
	for _, f := range []string{"config.json", "metrics.jsonl", "loss.png", "lr.png", "knn.png"} {
		if _, err := os.Stat(filepath.Join(c.Out, f)); err != nil {
			t.Errorf("output %s: %v", f, err)
		}
	}
	if _, err := checkpoint.Latest(c.Out); err != nil {
		t.Error(err)
	}

	// The service API embeds the same images the same way, concurrently.
	enc, err := LoadEncoder(res.LastCkpt, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	imgs := []image.Image{checker(32, 1), checker(40, 2), image.NewGray(image.Rect(0, 0, 28, 28))}
	want, err := enc.Embed(imgs)
	if err != nil {
		t.Fatal(err)
	}
	if len(want) != 3 || len(want[0]) != enc.Dim() {
		t.Fatalf("embed: %d vectors of %d", len(want), len(want[0]))
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := enc.Embed(imgs[1:2])
			if err != nil {
				t.Error(err)
				return
			}
			for j := range got[0] {
				if math.Abs(float64(got[0][j]-want[1][j])) > 1e-5 {
					t.Errorf("concurrent embed differs at %d", j)
					return
				}
			}
		}()
	}
	wg.Wait()
	if _, err := enc.EmbedEncoded([][]byte{[]byte("not an image")}); err == nil ||
		!strings.Contains(err.Error(), "image 0") {
		t.Errorf("bad bytes: %v", err)
	}
}

func checker(size, period int) image.Image {
	img := image.NewRGBA(image.Rect(0, 0, size, size))
	for y := 0; y < size; y++ {
		for x := 0; x < size; x++ {
			if (x/period+y/period)%2 == 0 {
				img.Set(x, y, color.RGBA{200, 30, 30, 255})
			}
		}
	}
	return img
}

// TestBadCheckpoints: a corrupt or mismatched checkpoint is a clear error.
func TestBadCheckpoints(t *testing.T) {
	c := tinyConfig(t)
	c.Steps, c.EvalData = 2, filepath.Join(t.TempDir(), "absent")
	res, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// Weights of a wider ConvNet do not fit.
	wide := tinyConfig(t)
	wide.Width, wide.InitFrom, wide.Steps = 16, res.LastCkpt, 1
	if _, err := Train(context.Background(), wide, quietLog(), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "shape") {
		t.Errorf("mismatched init-from: %v", err)
	}
	// A truncated tensor file.
	tpath, _ := checkpoint.Paths(filepath.Dir(res.LastCkpt), filepath.Base(res.LastCkpt))
	b, _ := os.ReadFile(tpath)
	os.WriteFile(tpath, b[:len(b)/2], 0o644)
	again := tinyConfig(t)
	again.InitFrom = res.LastCkpt
	if _, err := Train(context.Background(), again, quietLog(), io.Discard); err == nil ||
		!strings.Contains(err.Error(), tpath) {
		t.Errorf("truncated checkpoint: %v", err)
	}
	if _, err := LoadEncoder(res.LastCkpt, "cpu"); err == nil {
		t.Error("encoder loaded a truncated checkpoint")
	}
}

// TestDivergenceStops: a run that blows up stops with an error naming the
// step, and the last good checkpoint stays loadable.
func TestDivergenceStops(t *testing.T) {
	c := tinyConfig(t)
	c.EvalData = filepath.Join(t.TempDir(), "absent")
	c.Optimizer, c.LR, c.LRScaling, c.WarmupSteps = "sgd", 1e30, "none", 0
	c.Steps, c.CkptEvery = 10, 1
	_, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "step ") {
		t.Fatalf("divergent run: %v", err)
	}
	t.Log(err)
	base, err := checkpoint.Latest(c.Out)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := checkpoint.Load(base); err != nil {
		t.Errorf("last checkpoint %s: %v", base, err)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.N = 1 }, "-n 1"},
		{func(c *Config) { c.M = 1 }, "-m 1"},
		{func(c *Config) { c.Objective = "simclr" }, "simclr takes exactly 2"},
		{func(c *Config) { c.Objective = "infonce" }, "unknown objective"},
		{func(c *Config) { c.Tau = 0 }, "-tau"},
		{func(c *Config) { c.Optimizer = "rmsprop" }, "-optimizer"},
		{func(c *Config) { c.Views = "multicrop:2x32,4x16" }, "has 6 views; -m is 4"},
		{func(c *Config) { c.Views = "fancy" }, "unknown recipe"},
		{func(c *Config) { c.ProfileSteps = "9:3" }, "-profile-steps"},
		{func(c *Config) { c.Resume, c.InitFrom = "auto", "x" }, "exclude"},
	}
	for _, tc := range cases {
		c := DefaultConfig()
		tc.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want an error containing %q, got %v", tc.want, err)
		}
	}
	c := DefaultConfig()
	if err := c.Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	path := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(path, []byte(`{"objective": "apvc", "bogus": 1}`), 0o644)
	if err := c.LoadFile(path); err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Errorf("unknown field: %v", err)
	}
}

// TestInterruptCheckpoints: ending the context (what SIGINT and SIGTERM do
// in cmd/train) stops the run with a checkpoint that resumes.
func TestInterruptCheckpoints(t *testing.T) {
	c := tinyConfig(t)
	c.EvalData = filepath.Join(t.TempDir(), "absent")
	c.Steps = 1000
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the first step record is on disk.
		for {
			if recs, err := readSteps(filepath.Join(c.Out, "metrics.jsonl")); err == nil && recs > 0 {
				cancel()
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	res, err := Train(ctx, c, quietLog(), io.Discard)
	if !errors.Is(err, ErrInterrupted) {
		t.Fatalf("interrupted run: %v", err)
	}
	_, st, err := checkpoint.Load(res.LastCkpt)
	if err != nil || st.Step < 1 || st.Step >= 1000 {
		t.Fatalf("checkpoint %s: step %d, %v", res.LastCkpt, st.Step, err)
	}
}

func readSteps(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strings.Count(string(b), `"kind":"step"`), nil
}

// TestMultiCropSizes trains with 2 global 32 px and 2 local 16 px views:
// two encoder passes per step, one loss over all four views. The loss
// must fall over the run, and a resumed run must repeat it exactly.
func TestMultiCropSizes(t *testing.T) {
	c := tinyConfig(t)
	c.EvalData = filepath.Join(t.TempDir(), "absent")
	c.Views, c.Steps, c.WarmupSteps = "multicrop:2x32,2x16", 16, 2
	whole, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	first := (whole.Losses[0] + whole.Losses[1] + whole.Losses[2]) / 3
	last := (whole.Losses[13] + whole.Losses[14] + whole.Losses[15]) / 3
	if !(last < first) {
		t.Errorf("loss did not fall: first steps %.4f, last steps %.4f", first, last)
	}
	part := c
	part.Out, part.StopAfter = t.TempDir(), 7
	a, err := Train(context.Background(), part, quietLog(), io.Discard)
	if !errors.Is(err, ErrStopped) {
		t.Fatal(err)
	}
	part.StopAfter, part.Resume = 0, "auto"
	b, err := Train(context.Background(), part, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := append(append([]float64{}, a.Losses...), b.Losses...)
	for i := range whole.Losses {
		if got[i] != whole.Losses[i] {
			t.Fatalf("step %d: %.9g resumed, %.9g whole", i+1, got[i], whole.Losses[i])
		}
	}
}

// TestNewRunKeepsEarlierRun: a second fresh run with the same -out writes
// to a new folder and leaves the first run's checkpoints alone.
func TestNewRunKeepsEarlierRun(t *testing.T) {
	c := tinyConfig(t)
	c.EvalData = filepath.Join(t.TempDir(), "absent")
	c.Steps = 1
	first, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Train(context.Background(), c, quietLog(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(second.LastCkpt) != c.Out+"-2" {
		t.Errorf("second run wrote %s, want %s-2", second.LastCkpt, c.Out)
	}
	if _, _, err := checkpoint.Load(first.LastCkpt); err != nil {
		t.Errorf("first run's checkpoint: %v", err)
	}
}

// TestMixedPrecisionNeedsGPU: -precision bf16 on the CPU is refused with
// an error saying why, not silently run in fp32.
func TestMixedPrecisionNeedsGPU(t *testing.T) {
	cfg := tinyConfig(t)
	cfg.Precision, cfg.Device = "bf16", "cpu"
	_, err := Train(context.Background(), cfg, quietLog(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "mixed precision runs on a GPU") {
		t.Errorf("bf16 on the CPU: %v", err)
	}
}

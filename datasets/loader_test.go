package datasets

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// arrays returns n 2x2 gray images whose first pixel byte pair encodes the index, with
// label index mod 10.
func arrays(t testing.TB, n int) Dataset {
	t.Helper()
	pix := make([]byte, 4*n)
	labels := make([]int, n)
	for i := 0; i < n; i++ {
		pix[4*i], pix[4*i+1] = byte(i), byte(i>>8)
		labels[i] = i % 10
	}
	ds, err := FromArrays("arrays", 2, 2, 1, pix, labels, 10, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// smallShards writes count shards of per samples each, made from real CIFAR images,
// and opens them.
func smallShards(t testing.TB, count, per int) Dataset {
	t.Helper()
	refs := readRefShard(t, filepath.Join(cifarDir(t), "train-0001.tar"), count*per)
	dir := t.TempDir()
	for s := 0; s < count; s++ {
		name := filepath.Join(dir, fmt.Sprintf("train-%02d.tar", s))
		writeFile(t, name, tarBytes(t, membersOf(refs[s*per:(s+1)*per]), ""))
	}
	ds, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestLoaderOrder: the order repeats for the same (seed, epoch), changes with either,
// and (for indexed data) does not depend on the number of workers.
func TestLoaderOrder(t *testing.T) {
	for _, c := range []struct {
		name          string
		ds            Dataset
		workersMatter bool
	}{
		{"arrays", arrays(t, 1000), false},
		{"shards", smallShards(t, 6, 40), true},
	} {
		t.Run(c.name, func(t *testing.T) {
			order := func(seed uint64, epoch, workers int) []int {
				got, _ := drain(t, c.ds, LoaderConfig{BatchSize: 16, Seed: seed,
					Epoch: epoch, Workers: workers, ShuffleBuffer: 50})
				return indices(got)
			}
			base := order(1, 0, 2)
			if len(base) != c.ds.Len() {
				t.Fatalf("%d samples, want %d", len(base), c.ds.Len())
			}
			if !slices.Equal(base, order(1, 0, 2)) {
				t.Fatal("same seed and epoch gave a different order")
			}
			if slices.Equal(base, order(1, 1, 2)) || slices.Equal(base, order(2, 0, 2)) {
				t.Fatal("another epoch or seed gave the same order")
			}
			if !c.workersMatter && !slices.Equal(base, order(1, 0, 3)) {
				t.Fatal("the order changed with the number of workers")
			}
			sorted := slices.Clone(base)
			slices.Sort(sorted)
			if slices.Equal(base, sorted) {
				t.Fatal("the order is not shuffled")
			}
			seq, _ := drain(t, c.ds, LoaderConfig{BatchSize: 16, Sequential: true,
				Workers: 1})
			if !slices.Equal(indices(seq), sorted) {
				t.Fatalf("sequential order %v..., want 0, 1, 2...", indices(seq)[:8])
			}
		})
	}
}

// TestLoaderExactlyOnce: across ranks and workers, every sample of an epoch arrives
// once, and each rank gets the batches it announced.
func TestLoaderExactlyOnce(t *testing.T) {
	cases := []struct {
		name                  string
		ds                    Dataset
		batch, world, workers int
	}{
		{"arrays", arrays(t, 1003), 10, 3, 2},
		{"arrays one rank", arrays(t, 57), 8, 1, 4},
		{"shards", smallShards(t, 7, 30), 8, 3, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			count := make([]int, c.ds.Len())
			for rank := 0; rank < c.world; rank++ {
				l, err := NewLoader(c.ds, LoaderConfig{BatchSize: c.batch, Seed: 3,
					Epoch: 2, Rank: rank, WorldSize: c.world, Workers: c.workers})
				if err != nil {
					t.Fatal(err)
				}
				batches := 0
				for {
					b, err := l.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					if len(b.Samples) > c.batch || b.Position != batches {
						t.Fatalf("batch %d at position %d holds %d samples", batches,
							b.Position, len(b.Samples))
					}
					for _, s := range b.Samples {
						count[s.Index]++
					}
					batches++
					b.Release()
				}
				if batches != l.NumBatches() || l.Position() != batches {
					t.Fatalf("rank %d: %d batches, announced %d, position %d", rank,
						batches, l.NumBatches(), l.Position())
				}
				l.Close()
			}
			for i, n := range count {
				if n != 1 {
					t.Fatalf("sample %d delivered %d times", i, n)
				}
			}
		})
	}
}

func mustOpen(t testing.TB, path string, opts Options) Dataset {
	t.Helper()
	ds, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// TestLoaderSamples: a delivered sample carries the image and label of its index.
func TestLoaderSamples(t *testing.T) {
	ds := arrays(t, 300)
	got, _ := drain(t, ds, LoaderConfig{BatchSize: 7, Seed: 9, Workers: 3})
	for _, s := range got {
		if idx := int(s.Image.Pix[0]) | int(s.Image.Pix[1])<<8; idx != s.Index ||
			s.Label != s.Index%10 || s.Key != fmt.Sprintf("arrays#%d", s.Index) {
			t.Fatalf("sample %d: pixels say %d, label %d, key %q", s.Index, idx, s.Label,
				s.Key)
		}
	}
}

// TestLoaderResume: starting at batch k gives exactly the batches k... of a full epoch.
func TestLoaderResume(t *testing.T) {
	for _, c := range []struct {
		name string
		ds   Dataset
	}{
		{"arrays", arrays(t, 500)},
		{"shards", smallShards(t, 5, 37)},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := LoaderConfig{BatchSize: 12, Seed: 5, Epoch: 1, Workers: 2,
				ShuffleBuffer: 20}
			full, l := drain(t, c.ds, cfg)
			for _, k := range []int{1, 7, l.NumBatches() - 1, l.NumBatches()} {
				cfg.StartBatch = k
				tail, lt := drain(t, c.ds, cfg)
				// Batches hold 12 samples except the last of each shard worker, which
				// come at the end of the round-robin; count through positions.
				want := samplesFrom(t, c.ds, LoaderConfig{BatchSize: 12, Seed: 5, Epoch: 1,
					Workers: 2, ShuffleBuffer: 20}, k)
				if !slices.Equal(indices(tail), want) {
					t.Fatalf("start %d: got %v..., want %v...", k, head(indices(tail)),
						head(want))
				}
				if lt.Position() != l.NumBatches() {
					t.Fatalf("start %d: ended at position %d, want %d", k, lt.Position(),
						l.NumBatches())
				}
			}
			if len(full) != c.ds.Len() {
				t.Fatalf("full epoch: %d samples, want %d", len(full), c.ds.Len())
			}
		})
	}
}

// samplesFrom returns the indices of the batches at positions >= k of a full epoch.
func samplesFrom(t *testing.T, ds Dataset, cfg LoaderConfig, k int) []int {
	l, err := NewLoader(ds, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var out []int
	for {
		b, err := l.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if b.Position >= k {
			out = append(out, indices(b.Samples)...)
		}
		b.Release()
	}
}

func head(s []int) []int { return s[:min(len(s), 6)] }

// TestLoaderDropLast: the short final batch is left out only when asked.
func TestLoaderDropLast(t *testing.T) {
	ds := arrays(t, 25)
	for _, c := range []struct {
		drop             bool
		batches, samples int
	}{{false, 3, 25}, {true, 2, 20}} {
		got, l := drain(t, ds, LoaderConfig{BatchSize: 10, DropLast: c.drop})
		if l.NumBatches() != c.batches || len(got) != c.samples {
			t.Errorf("DropLast %v: %d batches, %d samples; want %d and %d", c.drop,
				l.NumBatches(), len(got), c.batches, c.samples)
		}
	}
}

// TestLoaderReusesBuffers: a released batch's pixel memory is filled again.
func TestLoaderReusesBuffers(t *testing.T) {
	l, err := NewLoader(arrays(t, 64), LoaderConfig{BatchSize: 4, Workers: 1, Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	seen := map[*byte]bool{}
	for i := 0; i < 16; i++ {
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		seen[&b.Samples[0].Image.Pix[0]] = true
		b.Release()
		b.Release() // a second release does nothing
	}
	if len(seen) != 2 { // Prefetch+1 buffers for the one worker
		t.Fatalf("16 batches used %d distinct buffers, want 2", len(seen))
	}
}

// TestLoaderHeldBuffers: holding every buffer makes Next fail instead of hanging.
func TestLoaderHeldBuffers(t *testing.T) {
	l, err := NewLoader(arrays(t, 64), LoaderConfig{BatchSize: 4, Workers: 1, Prefetch: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 2; i++ {
		if _, err := l.Next(); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error)
	go func() {
		_, err := l.Next()
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "buffers") {
			t.Fatalf("error %v, want one about held buffers", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Next hung while every buffer was held")
	}
}

// TestLoaderClose: closing mid-epoch stops every worker.
func TestLoaderClose(t *testing.T) {
	before := runtime.NumGoroutine()
	for _, ds := range []Dataset{arrays(t, 1000), smallShards(t, 4, 20)} {
		l, err := NewLoader(ds, LoaderConfig{BatchSize: 5, Workers: 3})
		if err != nil {
			t.Fatal(err)
		}
		b, err := l.Next()
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
		b.Release() // still allowed after Close
		if _, err := l.Next(); err == nil || !strings.Contains(err.Error(), "closed") {
			t.Fatalf("Next after Close: %v", err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("%d goroutines after Close, %d before", n, before)
	}
}

// slowDataset is an indexed dataset that takes a fixed time per sample, to measure the
// wait a slow pipeline leaves the consumer.
type slowDataset struct {
	*memoryDataset
	delay time.Duration
}

func (d slowDataset) reader() sampleReader { return d }

func (d slowDataset) load(i int, dst *Sample) error {
	time.Sleep(d.delay)
	return d.memoryDataset.load(i, dst)
}

// TestLoaderWaitStats: a consumer faster than the data waits most of the time; a
// consumer slower than the data hardly waits. The bounds leave wide margins because
// the test shares two cores with others: the first case waits for 3 ms of data per
// batch and does nothing else, the second sleeps 5 ms per batch for data already
// made (a few microseconds), so the true shares are near 1 and near 0.
func TestLoaderWaitStats(t *testing.T) {
	slow := slowDataset{arrays(t, 120).(*memoryDataset), time.Millisecond}
	_, l := drain(t, slow, LoaderConfig{BatchSize: 3, Workers: 1})
	ws := l.WaitStats()
	if ws.Batches != 40 || ws.Share() < 0.7 || ws.FirstWait <= 0 || ws.MaxWait <= 0 {
		t.Fatalf("slow data: %+v, share %.2f; want 40 batches and share >= 0.7", ws,
			ws.Share())
	}

	l2, err := NewLoader(arrays(t, 120), LoaderConfig{BatchSize: 3, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	var mid WaitStats
	for i := 0; ; i++ {
		b, err := l2.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // the training step
		b.Release()
		if i == 19 {
			mid = l2.WaitStats()
		}
	}
	ws = l2.WaitStats()
	if ws.Batches != 40 || ws.Share() > 0.3 || ws.Elapsed < 39*5*time.Millisecond {
		t.Fatalf("slow consumer: %+v, share %.2f; want share <= 0.3", ws, ws.Share())
	}
	if d := ws.Sub(mid); d.Batches != 20 || d.Elapsed <= 0 || d.Elapsed >= ws.Elapsed {
		t.Fatalf("interval stats %+v", d)
	}
}

// TestLoaderConfigErrors: bad configurations are errors that say what is wrong.
func TestLoaderConfigErrors(t *testing.T) {
	shards := smallShards(t, 2, 5)
	cases := []struct {
		ds   Dataset
		cfg  LoaderConfig
		want string
	}{
		{arrays(t, 10), LoaderConfig{}, "batch size 0"},
		{arrays(t, 10), LoaderConfig{BatchSize: 2, Rank: 2, WorldSize: 2}, "rank 2"},
		{arrays(t, 10), LoaderConfig{BatchSize: 2, Workers: -1}, "negative"},
		{arrays(t, 10), LoaderConfig{BatchSize: 2, StartBatch: 6}, "start batch 6"},
		{shards, LoaderConfig{BatchSize: 2, WorldSize: 3}, "2 shards cannot be split"},
	}
	for _, c := range cases {
		if _, err := NewLoader(c.ds, c.cfg); err == nil ||
			!strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", c.cfg, err, c.want)
		}
	}
}

// TestFromArraysErrors: shapes and labels are checked.
func TestFromArraysErrors(t *testing.T) {
	cases := []struct {
		h, w, c int
		pix     int
		labels  []int
		want    string
	}{
		{2, 2, 2, 8, nil, "1 or 3 channels"},
		{2, 2, 1, 7, nil, "not a positive multiple"},
		{2, 2, 1, 0, nil, "not a positive multiple"},
		{2, 2, 1, 8, []int{1}, "1 labels for 2 images"},
		{2, 2, 1, 8, []int{1, 10}, "image 1: label 10 out of range [0, 10)"},
	}
	for _, c := range cases {
		_, err := FromArrays("x", c.h, c.w, c.c, make([]byte, c.pix), c.labels, 10, Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c, err, c.want)
		}
	}
}

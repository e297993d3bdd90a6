package datasets

import (
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the zero fields of LoaderConfig.
const (
	DefaultWorkers       = 4    // at most; never more than GOMAXPROCS
	DefaultPrefetch      = 2    // batches each worker prepares ahead
	DefaultShuffleBuffer = 1000 // samples held by each shard worker's shuffle buffer
)

// LoaderConfig says which part of an epoch a Loader delivers, in which order.
type LoaderConfig struct {
	BatchSize int    // samples per batch; required
	Seed      uint64 // with Epoch, fixes the order
	Epoch     int    // 0-based

	// Rank and WorldSize split the epoch across data-parallel processes: rank r of w
	// gets a disjoint share, and the shares together hold every sample once. A zero
	// WorldSize means 1.
	Rank, WorldSize int

	// Workers decode in parallel; zero means min(DefaultWorkers, GOMAXPROCS). For
	// shard datasets each worker streams its own shards, so the order also depends on
	// Workers; for the others it does not.
	Workers int

	// Prefetch is how many batches each worker may have ready before they are asked
	// for; zero means DefaultPrefetch. Each worker owns Prefetch+1 batch buffers.
	Prefetch int

	// StartBatch resumes an epoch: the first StartBatch batches (see
	// Loader.Position) are passed over without being decoded.
	StartBatch int

	// ShuffleBuffer is the number of samples each shard worker holds to mix its stream;
	// zero means DefaultShuffleBuffer. It costs that many encoded images of memory
	// per worker. Unused by in-memory and ImageFolder datasets.
	ShuffleBuffer int

	// Sequential turns shuffling off (for evaluation): indexed datasets are read in
	// index order; shards are dealt to workers in name order and read without a
	// shuffle buffer (with several workers, batches of different shards alternate).
	Sequential bool

	// DropLast leaves out a final batch (per worker, for shards) that would hold fewer
	// than BatchSize samples. Those samples are then not delivered this epoch.
	DropLast bool
}

// withDefaults fills zero fields and checks the rest.
func (c LoaderConfig) withDefaults() (LoaderConfig, error) {
	if c.BatchSize <= 0 {
		return c, fmt.Errorf("batch size %d: must be positive", c.BatchSize)
	}
	if c.WorldSize == 0 {
		c.WorldSize = 1
	}
	if c.WorldSize < 0 || c.Rank < 0 || c.Rank >= c.WorldSize {
		return c, fmt.Errorf("rank %d of world size %d: want 0 <= rank < world size",
			c.Rank, c.WorldSize)
	}
	if c.Epoch < 0 || c.StartBatch < 0 || c.Workers < 0 || c.Prefetch < 0 ||
		c.ShuffleBuffer < 0 {
		return c, errors.New("epoch, start batch, workers, prefetch and shuffle " +
			"buffer must not be negative")
	}
	if c.Workers == 0 {
		c.Workers = min(DefaultWorkers, runtime.GOMAXPROCS(0))
	}
	if c.Prefetch == 0 {
		c.Prefetch = DefaultPrefetch
	}
	if c.ShuffleBuffer == 0 {
		c.ShuffleBuffer = DefaultShuffleBuffer
	}
	if c.Sequential {
		c.ShuffleBuffer = 1
	}
	return c, nil
}

// Batch is a set of decoded samples. Its memory is reused: after Release, the caller
// must not touch Samples or their pixels.
type Batch struct {
	// Samples holds at most BatchSize samples. A bad sample leaves its place out, so a
	// batch may be shorter; the last batches of an epoch may be shorter too.
	Samples []Sample

	Epoch    int
	Position int // index of this batch in the rank's epoch, in [0, Loader.NumBatches())

	slots    []Sample // Samples is slots[:n]; slots keep their pixel memory
	owner    *worker
	released atomic.Bool
}

// Release hands the batch's memory back to the loader. It is safe to call from any
// goroutine; calls after the first do nothing.
func (b *Batch) Release() {
	if b.released.Swap(true) {
		return
	}
	b.owner.held.Add(-1)
	b.owner.free <- b
}

// Loader delivers one epoch of a Dataset, for one rank, in batches decoded ahead of
// time by worker goroutines. Next and Close are for one goroutine; Release, WaitStats
// and Stats may be called from any.
type Loader struct {
	cfg        LoaderConfig
	rep        *reporter
	workers    []*worker
	rot        rotation
	numBatches int
	pos        int

	done      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
	err       error // sticky: the error Next returned

	clockMu sync.Mutex
	clock   WaitStats
	lastRet time.Time
}

// worker is one decode goroutine's share of the epoch and its buffers.
type worker struct {
	batches   int   // batches it delivers this epoch, counting those StartBatch skips
	positions []int // the epoch position of each of its batches, in order
	skip      int   // batches passed over because of StartBatch
	out       chan result
	free      chan *Batch
	pool      int
	held      atomic.Int32 // batches handed out by Next and not yet released
}

// result is a filled batch or the error that stopped a worker.
type result struct {
	b   *Batch
	err error
}

// NewLoader starts the workers for one epoch. The batches are a pure function of the
// dataset, cfg.Seed, cfg.Epoch, cfg.Rank, cfg.WorldSize and (for shards) cfg.Workers.
// Call Close when done.
func NewLoader(ds Dataset, cfg LoaderConfig) (*Loader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("loader for %s: %w", ds.Source(), err)
	}
	l := &Loader{cfg: cfg, rep: newReporter(ds.reader().options().Logger),
		done: make(chan struct{})}

	var run func(w int, wk *worker)
	switch r := ds.reader().(type) {
	case indexedReader:
		run = l.planIndexed(r, ds.Len())
	case *shardDataset:
		run, err = l.planShards(r)
	default:
		err = fmt.Errorf("unsupported dataset type %T", r)
	}
	if err != nil {
		return nil, fmt.Errorf("loader for %s: %w", ds.Source(), err)
	}
	if cfg.StartBatch > l.numBatches {
		return nil, fmt.Errorf("loader for %s: start batch %d is past the %d batches "+
			"of the epoch", ds.Source(), cfg.StartBatch, l.numBatches)
	}

	// Replay the round-robin once to learn which positions each worker fills and
	// how many of them StartBatch passes over.
	counts := make([]int, len(l.workers))
	for i, wk := range l.workers {
		counts[i] = wk.batches
	}
	l.rot = newRotation(counts)
	replay := newRotation(counts)
	for p := 0; p < l.numBatches; p++ {
		wk := l.workers[replay.take()]
		wk.positions = append(wk.positions, p)
		if p < cfg.StartBatch {
			wk.skip++
			l.rot.take()
		}
	}
	l.pos = cfg.StartBatch

	for w, wk := range l.workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			run(w, wk)
		}()
	}
	return l, nil
}

// newWorkers makes the workers with their batch counts.
func (l *Loader) newWorkers(batches []int) {
	pool := l.cfg.Prefetch + 1
	for _, n := range batches {
		wk := &worker{batches: n, out: make(chan result, l.cfg.Prefetch),
			free: make(chan *Batch, pool), pool: pool}
		for i := 0; i < pool; i++ {
			wk.free <- &Batch{slots: make([]Sample, l.cfg.BatchSize), owner: wk}
		}
		l.workers = append(l.workers, wk)
		l.numBatches += n
	}
}

// NumBatches is the number of batches in this rank's epoch, counting those before
// StartBatch. Ranks may differ by one unless DropLast is set (indexed datasets), or
// by more (shards, whose split follows shard sizes).
func (l *Loader) NumBatches() int { return l.numBatches }

// Position is the index of the batch the next call to Next returns; store it in a
// checkpoint and pass it back as StartBatch to resume.
func (l *Loader) Position() int { return l.pos }

// Next returns the next batch, or io.EOF after the last. A strict-mode bad sample or a
// closed loader is an error, after which Next keeps returning that error. Next fails
// rather than wait forever when the caller holds every buffer of the worker it needs.
func (l *Loader) Next() (*Batch, error) {
	select {
	case <-l.done:
		l.err = errors.New("next batch: loader closed")
	default:
	}
	if l.err != nil {
		return nil, l.err
	}
	start := time.Now()
	for {
		w, ok := l.rot.peek()
		if !ok {
			return nil, io.EOF
		}
		wk := l.workers[w]
		if int(wk.held.Load()) >= wk.pool {
			return nil, fmt.Errorf("next batch: all %d buffers of worker %d are held; "+
				"release batches before asking for more", wk.pool, w)
		}
		var res result
		select {
		case res = <-wk.out:
		case <-l.done:
			l.err = errors.New("next batch: loader closed")
			return nil, l.err
		}
		if res.err != nil {
			l.err = res.err
			return nil, l.err
		}
		l.rot.take()
		l.pos++
		if len(res.b.Samples) == 0 {
			wk.free <- res.b // every sample was bad: nothing to hand out
			continue
		}
		wk.held.Add(1)
		res.b.released.Store(false)
		l.rep.delivered(len(res.b.Samples))
		l.observeWait(start)
		return res.b, nil
	}
}

// Close stops the workers and waits for them. Batches still held stay valid until
// they are released. Close may be called more than once.
func (l *Loader) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	l.wg.Wait()
	return nil
}

// Stats counts the samples this loader delivered and left out.
func (l *Loader) Stats() Stats { return l.rep.snapshot() }

// send hands a result to the consumer, unless the loader is closed (false).
func (l *Loader) send(wk *worker, res result) bool {
	select {
	case wk.out <- res:
		return true
	case <-l.done:
		return false
	}
}

// acquire takes a free buffer of wk, unless the loader is closed (nil).
func (l *Loader) acquire(wk *worker, position int) *Batch {
	select {
	case b := <-wk.free:
		b.Samples = b.slots[:0]
		b.Epoch, b.Position = l.cfg.Epoch, position
		b.released.Store(true) // not handed out yet: Release before Next is a no-op
		return b
	case <-l.done:
		return nil
	}
}

// badSample records a bad sample; in strict mode it returns the error that stops the
// worker.
func (l *Loader) badSample(e *SampleError, strict bool) error {
	if strict {
		return e
	}
	l.rep.badSample(e)
	return nil
}

// rotation hands out batches round-robin over the workers, passing over workers that
// have delivered all of theirs. Replaying it gives every worker's share of a prefix.
type rotation struct {
	left []int // batches each worker has yet to deliver
	next int   // worker to ask first
}

func newRotation(counts []int) rotation {
	return rotation{left: append([]int(nil), counts...)}
}

// peek returns the worker that delivers the next batch, or false at the end.
func (r *rotation) peek() (int, bool) {
	for i := 0; i < len(r.left); i++ {
		w := (r.next + i) % len(r.left)
		if r.left[w] > 0 {
			r.next = w
			return w, true
		}
	}
	return 0, false
}

// take consumes the next batch and returns its worker; it must follow a successful
// peek (or be called only while batches remain).
func (r *rotation) take() int {
	w, _ := r.peek()
	r.left[w]--
	r.next = (w + 1) % len(r.left)
	return w
}

// WaitStats measures how long the caller of Next waited for data.
type WaitStats struct {
	Batches   int           // batches returned by Next
	FirstWait time.Duration // wait for the first batch: the pipeline filling up
	Wait      time.Duration // total wait for the later batches
	MaxWait   time.Duration // longest single wait for a later batch
	Elapsed   time.Duration // from the first batch's return to the last one's
}

// Share is the fraction of step time spent waiting for data: Wait / Elapsed, in
// [0, 1], or 0 before the second batch.
func (s WaitStats) Share() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return min(1, float64(s.Wait)/float64(s.Elapsed))
}

// Sub returns the statistics of the batches after prev, which must be an earlier
// value from the same Loader (for per-interval logging). MaxWait stays cumulative.
func (s WaitStats) Sub(prev WaitStats) WaitStats {
	s.Batches -= prev.Batches
	s.Wait -= prev.Wait
	s.Elapsed -= prev.Elapsed
	if prev.Batches > 0 {
		s.FirstWait = 0
	}
	return s
}

// WaitStats returns the data-wait measurements so far.
func (l *Loader) WaitStats() WaitStats {
	l.clockMu.Lock()
	defer l.clockMu.Unlock()
	return l.clock
}

// observeWait records one Next call that started at start and returns now.
func (l *Loader) observeWait(start time.Time) {
	now := time.Now()
	wait := now.Sub(start)
	l.clockMu.Lock()
	defer l.clockMu.Unlock()
	c := &l.clock
	if c.Batches == 0 {
		c.FirstWait = wait
	} else {
		c.Wait += wait
		c.MaxWait = max(c.MaxWait, wait)
		c.Elapsed += now.Sub(l.lastRet)
	}
	c.Batches++
	l.lastRet = now
}

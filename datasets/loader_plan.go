package datasets

import (
	"fmt"
	"io"
)

// This file decides what each worker of a Loader reads and runs it. Batches are cut
// from positions in a fixed order before anything is decoded, so a bad sample shortens
// its batch instead of shifting the ones after it, and a resumed epoch can pass over
// batches without decoding them.

// planIndexed plans an epoch of a dataset with random access. The epoch order is a
// permutation of [0, n) from (Seed, Epoch); rank r takes the positions r, r+w, r+2w...
// of it, and batch b of the rank holds its samples b*B ... b*B+B-1. Worker w decodes the
// batches b with b mod Workers == w, so the order does not depend on Workers.
func (l *Loader) planIndexed(r indexedReader, n int) func(int, *worker) {
	cfg := l.cfg
	var order []int
	if cfg.Sequential {
		order = make([]int, n)
		for i := range order {
			order[i] = i
		}
	} else {
		order = permutation(n, newRNG(cfg.Seed, uint64(cfg.Epoch), streamPermutation))
	}
	seq := make([]int, 0, n/cfg.WorldSize+1)
	for i := cfg.Rank; i < n; i += cfg.WorldSize {
		seq = append(seq, order[i])
	}

	numBatches := batchCount(len(seq), cfg.BatchSize, cfg.DropLast)
	workers := max(1, min(cfg.Workers, numBatches))
	counts := make([]int, workers)
	for b := 0; b < numBatches; b++ {
		counts[b%workers]++
	}
	l.newWorkers(counts)

	strict := r.options().Strict
	return func(w int, wk *worker) {
		for _, b := range wk.positions[wk.skip:] {
			batch := l.acquire(wk, b)
			if batch == nil {
				return
			}
			for _, idx := range seq[b*cfg.BatchSize : min((b+1)*cfg.BatchSize, len(seq))] {
				slot := &batch.slots[len(batch.Samples)]
				if err := r.load(idx, slot); err != nil {
					e := &SampleError{File: r.fileOf(idx), Key: slot.Key, Err: err}
					if err := l.badSample(e, strict); err != nil {
						l.send(wk, result{err: err})
						return
					}
					continue
				}
				batch.Samples = batch.slots[:len(batch.Samples)+1]
			}
			if !l.send(wk, result{b: batch}) {
				return
			}
		}
	}
}

// batchCount is the number of batches of size b that n samples fill.
func batchCount(n, b int, dropLast bool) int {
	if dropLast {
		return n / b
	}
	return (n + b - 1) / b
}

// planShards plans an epoch of a shard dataset. The shards are put in an order drawn
// from (Seed, Epoch); rank r takes the shards at positions r, r+w, ... of it, and its
// worker k streams the rank's shards k, k+Workers, ... through its own shuffle buffer,
// cutting batches of BatchSize from the mixed stream (the last one may be short).
// Batches are handed out round-robin over the workers.
func (l *Loader) planShards(d *shardDataset) (func(int, *worker), error) {
	cfg := l.cfg
	var order []int
	if cfg.Sequential {
		order = make([]int, len(d.shards))
		for i := range order {
			order[i] = i
		}
	} else {
		order = permutation(len(d.shards),
			newRNG(cfg.Seed, uint64(cfg.Epoch), streamShardOrder))
	}
	if len(order) < cfg.WorldSize {
		return nil, fmt.Errorf("%d shards cannot be split across %d ranks: each rank "+
			"needs at least one shard", len(order), cfg.WorldSize)
	}
	var mine []int
	for i := cfg.Rank; i < len(order); i += cfg.WorldSize {
		mine = append(mine, order[i])
	}

	workers := min(cfg.Workers, len(mine))
	lists := make([][]int, workers)
	counts := make([]int, workers)
	for i, id := range mine {
		lists[i%workers] = append(lists[i%workers], id)
	}
	for w, list := range lists {
		samples := 0
		for _, id := range list {
			samples += d.shards[id].count
		}
		counts[w] = batchCount(samples, cfg.BatchSize, cfg.DropLast)
	}
	l.newWorkers(counts)
	return func(w int, wk *worker) { l.streamShards(d, lists[w], w, wk) }, nil
}

// shardSample is a raw sample and the shard it came from.
type shardSample struct {
	rawSample
	shard int
}

// streamShards is the body of one shard worker.
func (l *Loader) streamShards(d *shardDataset, shards []int, w int, wk *worker) {
	cfg := l.cfg
	mixer := newShuffleBuffer[shardSample](cfg.ShuffleBuffer, newRNG(cfg.Seed,
		uint64(cfg.Epoch), streamShuffleBuf, uint64(cfg.Rank), uint64(w)))
	chunk := make([]shardSample, 0, cfg.BatchSize)
	next := 0 // index into wk.positions of the batch being cut

	// emit decodes a full chunk into the worker's next batch (or passes over it when
	// StartBatch says so); false means stop: the plan is done, the loader closed or a
	// strict error was sent.
	emit := func() bool {
		if next >= len(wk.positions) {
			return false
		}
		pos := next
		next++
		defer func() { chunk = chunk[:0] }()
		if pos < wk.skip {
			return true
		}
		return l.decodeChunk(d, wk, wk.positions[pos], chunk)
	}
	push := func(s shardSample) bool {
		chunk = append(chunk, s)
		return len(chunk) < cfg.BatchSize || emit()
	}

	for _, id := range shards {
		ok := l.readShard(d, id, wk, func(raw rawSample) bool {
			out, full := mixer.push(shardSample{raw, id})
			return !full || push(out)
		})
		if !ok {
			return
		}
	}
	for {
		out, ok := mixer.drain()
		if !ok {
			break
		}
		if !push(out) {
			return
		}
	}
	if len(chunk) > 0 && !cfg.DropLast && !emit() {
		return
	}
	// A shard that ended sooner than Open counted leaves batches of the plan unfilled;
	// they are sent empty so that the round-robin stays in step.
	for next < len(wk.positions) {
		if !emit() {
			return
		}
	}
}

// readShard passes the samples of shard id to yield until it returns false. A broken
// stream is a bad shard (in strict mode, an error sent to the consumer). The result is
// false when the worker must stop.
func (l *Loader) readShard(d *shardDataset, id int, wk *worker,
	yield func(rawSample) bool) bool {
	info := d.shards[id]
	sr, err := openShardFile(info.path, true, d.opts)
	if err != nil {
		return l.badShard(wk, &SampleError{File: info.path, Err: err}, d.opts.Strict)
	}
	defer sr.close()
	for {
		raw, err := sr.next()
		if err == io.EOF || (err == nil && raw.pos >= info.count) {
			return true
		}
		if err != nil {
			e := &SampleError{File: info.path,
				Err: fmt.Errorf("after %d samples: %w", sr.pos, err)}
			return l.badShard(wk, e, d.opts.Strict)
		}
		if !yield(raw) {
			return false
		}
	}
}

// badShard records a shard cut short; in strict mode it sends the error and stops the
// worker (false).
func (l *Loader) badShard(wk *worker, e *SampleError, strict bool) bool {
	if strict {
		l.send(wk, result{err: e})
		return false
	}
	l.rep.badShard(e)
	return true
}

// decodeChunk fills the batch at position pos from chunk and sends it.
func (l *Loader) decodeChunk(d *shardDataset, wk *worker, pos int, chunk []shardSample) bool {
	batch := l.acquire(wk, pos)
	if batch == nil {
		return false
	}
	for _, s := range chunk {
		slot := &batch.slots[len(batch.Samples)]
		if err := decodeShardSample(d, s, slot); err != nil {
			e := &SampleError{File: d.shards[s.shard].path, Key: s.key, Err: err}
			if err := l.badSample(e, d.opts.Strict); err != nil {
				l.send(wk, result{err: err})
				return false
			}
			continue
		}
		batch.Samples = batch.slots[:len(batch.Samples)+1]
	}
	return l.send(wk, result{b: batch})
}

// decodeShardSample turns a raw sample into slot.
func decodeShardSample(d *shardDataset, s shardSample, slot *Sample) error {
	if s.err != nil {
		return s.err
	}
	slot.Key = s.key
	slot.Index = d.shards[s.shard].offset + s.pos
	slot.Label = -1
	if s.labeled {
		if err := checkLabel(s.label, d.numClasses); err != nil {
			return err
		}
		slot.Label = s.label
	}
	return decodeImage(s.data, d.opts.MaxImageSide, &slot.Image)
}

package datasets

import (
	"fmt"
	"log/slog"
	"sync"
)

// SampleError describes one bad sample or shard: which file, which key, what is wrong.
// In strict mode it is the error a Loader or Open returns; otherwise it is logged and
// kept in Stats.Problems.
type SampleError struct {
	File string // the image file, or the shard holding the sample
	Key  string // the sample's key; empty when a whole shard is affected
	Err  error
}

// Error reads "file: key: problem" (without the key when a whole shard is affected).
func (e *SampleError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("%s: %v", e.File, e.Err)
	}
	return fmt.Sprintf("%s: %s: %v", e.File, e.Key, e.Err)
}

// Unwrap returns the underlying problem.
func (e *SampleError) Unwrap() error { return e.Err }

// Stats counts what a Loader delivered and left out (or, from Dataset.Stats, what Open
// found wrong).
type Stats struct {
	Delivered int64 // samples handed out in batches
	Skipped   int64 // bad samples left out: corrupt or oversized image, unreadable label
	BadShards int64 // shards whose tar stream broke; the samples after the break are lost

	// Problems holds the first maxProblems problems in the order they were found.
	Problems []*SampleError
}

const (
	maxProblems = 32 // kept in Stats.Problems
	maxLogged   = 20 // logged one by one; later ones are only counted
)

// reporter counts bad samples and logs the first of them; it is shared by the goroutines
// of one Loader (or by the scan in Open).
type reporter struct {
	mu     sync.Mutex
	stats  Stats
	logger *slog.Logger
	logged int
}

func newReporter(logger *slog.Logger) *reporter {
	return &reporter{logger: logger}
}

// badSample records a sample that is left out.
func (r *reporter) badSample(e *SampleError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Skipped++
	r.record(e, "skipped bad sample")
}

// badShard records a shard whose stream broke before its end.
func (r *reporter) badShard(e *SampleError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.BadShards++
	r.record(e, "shard cut short")
}

// record keeps and logs e; r.mu is held.
func (r *reporter) record(e *SampleError, msg string) {
	if len(r.stats.Problems) < maxProblems {
		r.stats.Problems = append(r.stats.Problems, e)
	}
	switch {
	case r.logged < maxLogged:
		r.logger.Warn(msg, "file", e.File, "key", e.Key, "err", e.Err)
	case r.logged == maxLogged:
		r.logger.Warn("more bad data: further problems are counted, not logged")
	}
	r.logged++
}

func (r *reporter) delivered(n int) {
	r.mu.Lock()
	r.stats.Delivered += int64(n)
	r.mu.Unlock()
}

// snapshot returns a copy of the counts that the caller may keep.
func (r *reporter) snapshot() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Problems = append([]*SampleError(nil), r.stats.Problems...)
	return s
}

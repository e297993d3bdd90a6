// Package metrics records a training run: one JSON object per line in
// metrics.jsonl, and PNG plots of its series.
package metrics

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sync"
)

// Record is one line of metrics.jsonl. Zero GPU fields are omitted, so a
// CPU run's records carry none.
type Record struct {
	Kind         string  `json:"kind"` // "step", "epoch" or "eval"
	Step         int64   `json:"step"`
	Epoch        int     `json:"epoch"`
	Loss         float64 `json:"loss,omitempty"`
	LR           float64 `json:"lr,omitempty"`
	ViewsPerSec  float64 `json:"views_per_sec,omitempty"`
	ImagesPerSec float64 `json:"images_per_sec,omitempty"`
	DataWait     float64 `json:"data_wait,omitempty"` // share of step time spent waiting
	KNNTop1      float64 `json:"knn_top1,omitempty"`
	ElapsedSec   float64 `json:"elapsed_sec,omitempty"`
	// SentPerStep is what this rank sent to the other data-parallel ranks
	// per step since the last record, in bytes (counted on TCP, computed
	// from the ring algorithms on NCCL).
	SentPerStep float64 `json:"sent_bytes_per_step,omitempty"`

	GPU *GPUReading `json:"gpu,omitempty"`
}

// GPUReading is one NVML sample of the training GPU.
type GPUReading struct {
	UtilPercent  int     `json:"util_percent"`
	MemUsedBytes uint64  `json:"mem_used_bytes"`
	MemTotal     uint64  `json:"mem_total_bytes"`
	PowerWatts   float64 `json:"power_watts"`
	TempC        int     `json:"temp_c"`
	SMClockMHz   int     `json:"sm_clock_mhz"`
	MemClockMHz  int     `json:"mem_clock_mhz"`
}

// Writer appends records to a metrics.jsonl file. Safe for concurrent use.
type Writer struct {
	mu sync.Mutex
	f  *os.File
	w  *bufio.Writer
}

// Open opens path for appending (a resumed run continues the same file).
func Open(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open metrics: %w", err)
	}
	return &Writer{f: f, w: bufio.NewWriter(f)}, nil
}

// Write appends one record and flushes it, so a crash loses at most it.
func (w *Writer) Write(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.w.Write(b)
	w.w.WriteByte('\n')
	return w.w.Flush()
}

// Close flushes and closes the file.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.w.Flush()
	return w.f.Close()
}

// ReadFile reads every record of a metrics.jsonl file, skipping nothing:
// a malformed line is an error naming its number.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Record
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", path, line, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

package checkpoint

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Format is the sidecar's format version; a reader refuses others.
const Format = 1

// State is everything a checkpoint holds besides tensors: enough to resume
// a run exactly where it stopped.
type State struct {
	Format int `json:"format"`
	// Step is the number of optimizer steps taken; Epoch the current epoch
	// and BatchInEpoch the next batch of it (the data stream's position).
	Step         int64 `json:"step"`
	Epoch        int   `json:"epoch"`
	BatchInEpoch int   `json:"batch_in_epoch"`
	// Seed keys every random draw (views, shuffles), so with the position
	// above it is the whole RNG state.
	Seed uint64 `json:"seed"`
	// Config is the run's resolved configuration, as JSON.
	Config json.RawMessage `json:"config"`
	// Tensors lists the names stored in the safetensors file, for checks.
	Tensors []string `json:"tensors"`
	// Extra holds small values (last loss, best kNN accuracy, ...).
	Extra map[string]float64 `json:"extra,omitempty"`
}

// Paths of a checkpoint with base name "ckpt-000100" in dir.
func Paths(dir, base string) (tensors, sidecar string) {
	return filepath.Join(dir, base+".safetensors"), filepath.Join(dir, base+".json")
}

// Save writes tensors and state as base.safetensors and base.json in dir,
// the tensors first: the sidecar, written last, marks the pair complete.
func Save(dir, base string, tensors map[string]Tensor, st State) error {
	st.Format = Format
	st.Tensors = st.Tensors[:0]
	for n := range tensors {
		st.Tensors = append(st.Tensors, n)
	}
	sort.Strings(st.Tensors)
	tpath, spath := Paths(dir, base)
	err := WriteFileAtomic(tpath, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := EncodeSafetensors(bw, tensors, map[string]string{"format": "polyview"}); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", tpath, err)
	}
	err = WriteFileAtomic(spath, func(w io.Writer) error {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	})
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", spath, err)
	}
	return nil
}

// Load reads a checkpoint given either file of the pair, or its base path
// without extension. Errors name the file and the problem.
func Load(path string) (map[string]Tensor, State, error) {
	base := strings.TrimSuffix(strings.TrimSuffix(path, ".json"), ".safetensors")
	tpath, spath := base+".safetensors", base+".json"
	var st State
	sb, err := os.ReadFile(spath)
	if err != nil {
		return nil, st, fmt.Errorf("load checkpoint: %w", err)
	}
	if err := json.Unmarshal(sb, &st); err != nil {
		return nil, st, fmt.Errorf("load checkpoint %s: not valid JSON: %v", spath, err)
	}
	if st.Format != Format {
		return nil, st, fmt.Errorf("load checkpoint %s: format %d, this polyview reads %d",
			spath, st.Format, Format)
	}
	tb, err := os.ReadFile(tpath)
	if err != nil {
		return nil, st, fmt.Errorf("load checkpoint: %w", err)
	}
	tensors, _, err := DecodeSafetensors(tb)
	if err != nil {
		return nil, st, fmt.Errorf("load checkpoint %s: %w", tpath, err)
	}
	for _, n := range st.Tensors {
		if _, ok := tensors[n]; !ok {
			return nil, st, fmt.Errorf("load checkpoint %s: tensor %q listed in %s is missing",
				tpath, n, filepath.Base(spath))
		}
	}
	if len(tensors) != len(st.Tensors) {
		return nil, st, fmt.Errorf("load checkpoint %s: %d tensors, the sidecar lists %d", tpath,
			len(tensors), len(st.Tensors))
	}
	return tensors, st, nil
}

// Latest returns the base path of the newest complete checkpoint in dir
// (highest step with both files present), or an error wrapping
// os.ErrNotExist when there is none.
func Latest(dir string) (string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "ckpt-*.json"))
	if err != nil {
		return "", err
	}
	sort.Strings(matches) // zero-padded steps sort in order
	for i := len(matches) - 1; i >= 0; i-- {
		base := strings.TrimSuffix(matches[i], ".json")
		if _, err := os.Stat(base + ".safetensors"); err == nil {
			return base, nil
		}
	}
	return "", fmt.Errorf("no checkpoint in %s: %w", dir, os.ErrNotExist)
}

// BaseName is the file base for a step: ckpt-000000123.
func BaseName(step int64) string { return fmt.Sprintf("ckpt-%09d", step) }

// IsNotExist reports whether err means there is no checkpoint.
func IsNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }

func dirOf(p string) string  { return filepath.Dir(p) }
func baseOf(p string) string { return filepath.Base(p) }

// Package checkpoint stores training state: tensors as safetensors, the
// rest (config, step, epoch, RNG and data position) as a JSON sidecar,
// both written atomically so that a crash never leaves a torn file.
package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// Tensor is one named array in a safetensors file. Data holds the raw
// little-endian bytes; DType is a safetensors dtype name ("F32", "F64",
// "BF16", "I64", "U8").
type Tensor struct {
	DType string
	Shape []int
	Data  []byte
}

var dtypeSize = map[string]int{
	"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1,
}

// FromFloat32 wraps float32 values as an F32 tensor of the given shape.
func FromFloat32(v []float32, shape ...int) Tensor {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	if shape == nil {
		shape = []int{}
	}
	return Tensor{DType: "F32", Shape: shape, Data: b}
}

// Float32 decodes an F32 tensor.
func (t Tensor) Float32() ([]float32, error) {
	if t.DType != "F32" {
		return nil, fmt.Errorf("tensor has dtype %s, want F32", t.DType)
	}
	out := make([]float32, len(t.Data)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.Data[4*i:]))
	}
	return out, nil
}

// Numel is the product of the shape.
func (t Tensor) Numel() int {
	n := 1
	for _, s := range t.Shape {
		n *= s
	}
	return n
}

type headerEntry struct {
	DType       string   `json:"dtype"`
	Shape       []int    `json:"shape"`
	DataOffsets [2]int64 `json:"data_offsets"`
}

// maxHeader bounds the JSON header a reader accepts (100 MB, the format's
// own recommendation), so a corrupt length cannot exhaust memory.
const maxHeader = 100 << 20

// EncodeSafetensors writes tensors (sorted by name) and string metadata in
// the safetensors format: an 8-byte little-endian header length, a JSON
// header, then the data, each tensor's bytes contiguous.
func EncodeSafetensors(w io.Writer, tensors map[string]Tensor, meta map[string]string) error {
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	header := map[string]any{}
	if len(meta) > 0 {
		header["__metadata__"] = meta
	}
	var off int64
	for _, n := range names {
		t := tensors[n]
		size, ok := dtypeSize[t.DType]
		if !ok {
			return fmt.Errorf("tensor %q: unknown dtype %q", n, t.DType)
		}
		if want := int64(t.Numel() * size); want != int64(len(t.Data)) {
			return fmt.Errorf("tensor %q: %d bytes for shape %v of %s (want %d)", n, len(t.Data),
				t.Shape, t.DType, want)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int{}
		}
		header[n] = headerEntry{t.DType, shape, [2]int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	hb, err := json.Marshal(header)
	if err != nil {
		return err
	}
	for len(hb)%8 != 0 { // pad with spaces so the data starts 8-aligned
		hb = append(hb, ' ')
	}
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hb)))
	if _, err := w.Write(lenBuf[:]); err != nil {
		return err
	}
	if _, err := w.Write(hb); err != nil {
		return err
	}
	for _, n := range names {
		if _, err := w.Write(tensors[n].Data); err != nil {
			return err
		}
	}
	return nil
}

// DecodeSafetensors parses a whole safetensors file held in memory. Every
// field is checked: header length, JSON, dtypes, shapes against byte
// ranges, ranges inside the data and not overlapping. Errors name the
// field and the problem.
func DecodeSafetensors(b []byte) (map[string]Tensor, map[string]string, error) {
	if len(b) < 8 {
		return nil, nil, fmt.Errorf("file is %d bytes, shorter than the 8-byte header length", len(b))
	}
	hlen := binary.LittleEndian.Uint64(b[:8])
	if hlen > maxHeader || hlen > uint64(len(b)-8) {
		return nil, nil, fmt.Errorf("header length %d exceeds the file (%d bytes)", hlen, len(b))
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+hlen], &raw); err != nil {
		return nil, nil, fmt.Errorf("header is not valid JSON: %v", err)
	}
	data := b[8+hlen:]
	meta := map[string]string{}
	tensors := map[string]Tensor{}
	type span struct {
		lo, hi int64
		name   string
	}
	var spans []span
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &meta); err != nil {
				return nil, nil, fmt.Errorf("__metadata__: want an object of strings: %v", err)
			}
			continue
		}
		var e headerEntry
		if err := json.Unmarshal(msg, &e); err != nil {
			return nil, nil, fmt.Errorf("tensor %q: bad header entry: %v", name, err)
		}
		size, ok := dtypeSize[e.DType]
		if !ok {
			return nil, nil, fmt.Errorf("tensor %q: unknown dtype %q", name, e.DType)
		}
		numel := int64(1)
		for _, s := range e.Shape {
			if s < 0 || (s > 0 && numel > math.MaxInt64/16/int64(s)) {
				return nil, nil, fmt.Errorf("tensor %q: bad shape %v", name, e.Shape)
			}
			numel *= int64(s)
		}
		lo, hi := e.DataOffsets[0], e.DataOffsets[1]
		if lo < 0 || hi < lo || hi > int64(len(data)) {
			return nil, nil, fmt.Errorf("tensor %q: data_offsets [%d, %d] outside the %d data bytes",
				name, lo, hi, len(data))
		}
		if hi-lo != numel*int64(size) {
			return nil, nil, fmt.Errorf("tensor %q: %d bytes for shape %v of %s", name, hi-lo,
				e.Shape, e.DType)
		}
		if hi > lo { // an empty tensor occupies no bytes and overlaps nothing
			spans = append(spans, span{lo, hi, name})
		}
		tensors[name] = Tensor{DType: e.DType, Shape: e.Shape, Data: data[lo:hi:hi]}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].lo < spans[j].lo })
	for i := 1; i < len(spans); i++ {
		if spans[i].lo < spans[i-1].hi {
			return nil, nil, fmt.Errorf("tensors %q and %q overlap", spans[i-1].name, spans[i].name)
		}
	}
	return tensors, meta, nil
}

// WriteFileAtomic writes data to path through a temporary file in the same
// folder: write, fsync, rename, fsync the folder. A reader sees the old
// file or the new one, never a torn one.
func WriteFileAtomic(path string, write func(io.Writer) error) error {
	dir := dirOf(path)
	f, err := os.CreateTemp(dir, ".tmp-"+baseOf(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := write(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

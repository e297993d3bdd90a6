package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func sample() map[string]Tensor {
	return map[string]Tensor{
		"conv.weight": FromFloat32([]float32{1, -2, 3.5, 4, 5, 6}, 2, 3),
		"bn.bias":     FromFloat32([]float32{0.25}, 1),
		"scalar":      FromFloat32([]float32{7}),
		"empty":       FromFloat32(nil, 0, 4),
	}
}

func TestSafetensorsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	meta := map[string]string{"format": "polyview"}
	if err := EncodeSafetensors(&buf, sample(), meta); err != nil {
		t.Fatal(err)
	}
	got, gotMeta, err := DecodeSafetensors(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(gotMeta, meta) {
		t.Errorf("metadata %v, want %v", gotMeta, meta)
	}
	for name, want := range sample() {
		g, ok := got[name]
		if !ok {
			t.Fatalf("tensor %q missing", name)
		}
		if g.DType != want.DType || !reflect.DeepEqual(g.Shape, want.Shape) ||
			!bytes.Equal(g.Data, want.Data) {
			t.Errorf("tensor %q: got %+v, want %+v", name, g, want)
		}
	}
	// The header length is a multiple of 8 (data alignment).
	if n := binary.LittleEndian.Uint64(buf.Bytes()); n%8 != 0 {
		t.Errorf("header length %d not 8-aligned", n)
	}
}

func TestSafetensorsRejects(t *testing.T) {
	header := func(h string) []byte {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(len(h)))
		return append(b[:], h...)
	}
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"short", []byte{1, 2}, "shorter than"},
		{"huge header", header(`{}`)[:8], "exceeds"},
		{"bad json", header(`{"a":`), "not valid JSON"},
		{"bad dtype", header(`{"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}`), "unknown dtype"},
		{"outside", append(header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`), 1, 2, 3, 4),
			"outside"},
		{"size mismatch", append(header(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`),
			1, 2, 3, 4), "bytes for shape"},
		{"negative dim", header(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`), "bad shape"},
		{"overlap", append(header(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},`+
			`"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`), 1, 2, 3), "overlap"},
	}
	// An empty tensor may share its offset with a neighbour, in either
	// header order: it holds no bytes, so nothing overlaps.
	for _, h := range []string{
		`{"e":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"s":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}`,
		`{"s":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"e":{"dtype":"F32","shape":[0],"data_offsets":[2,2]}}`,
		`{"s":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"e":{"dtype":"F32","shape":[0],"data_offsets":[1,1]}}`,
	} {
		if _, _, err := DecodeSafetensors(append(header(h), 1, 2)); err != nil {
			t.Errorf("empty tensor beside another: %v", err)
		}
	}
	for _, c := range cases {
		_, _, err := DecodeSafetensors(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

func TestSaveLoadLatest(t *testing.T) {
	dir := t.TempDir()
	cfg := json.RawMessage(`{"objective":"gpvc"}`)
	for _, step := range []int64{10, 200} {
		st := State{Step: step, Epoch: 1, BatchInEpoch: 3, Seed: 42, Config: cfg,
			Extra: map[string]float64{"loss": 1.5}}
		if err := Save(dir, BaseName(step), sample(), st); err != nil {
			t.Fatal(err)
		}
	}
	// An orphan sidecar without tensors is not complete: Latest skips it.
	os.WriteFile(filepath.Join(dir, BaseName(300)+".json"), []byte(`{}`), 0o644)
	base, err := Latest(dir)
	if err != nil || filepath.Base(base) != BaseName(200) {
		t.Fatalf("Latest = %q, %v", base, err)
	}
	tensors, st, err := Load(base + ".safetensors")
	if err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	json.Compact(&compact, st.Config)
	if st.Step != 200 || st.BatchInEpoch != 3 || st.Seed != 42 || st.Extra["loss"] != 1.5 ||
		compact.String() != string(cfg) {
		t.Errorf("state %+v", st)
	}
	w, _ := tensors["conv.weight"].Float32()
	if !reflect.DeepEqual(w, []float32{1, -2, 3.5, 4, 5, 6}) {
		t.Errorf("conv.weight %v", w)
	}
	// No temporary files are left behind.
	left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*"))
	if len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}
	if _, err := Latest(t.TempDir()); !IsNotExist(err) {
		t.Errorf("empty dir: %v", err)
	}
}

func TestLoadCorrupt(t *testing.T) {
	dir := t.TempDir()
	if err := Save(dir, "c", sample(), State{Step: 1}); err != nil {
		t.Fatal(err)
	}
	tpath, spath := Paths(dir, "c")
	// Truncated tensor file.
	b, _ := os.ReadFile(tpath)
	os.WriteFile(tpath, b[:len(b)-3], 0o644)
	if _, _, err := Load(spath); err == nil || !strings.Contains(err.Error(), tpath) {
		t.Errorf("truncated: %v", err)
	}
	os.WriteFile(tpath, b, 0o644)
	// Sidecar of another format version, then garbage.
	os.WriteFile(spath, []byte(`{"format": 99}`), 0o644)
	if _, _, err := Load(spath); err == nil || !strings.Contains(err.Error(), "format 99") {
		t.Errorf("format: %v", err)
	}
	os.WriteFile(spath, []byte(`not json`), 0o644)
	if _, _, err := Load(spath); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("garbage sidecar: %v", err)
	}
	// A sidecar listing a tensor the file lacks.
	os.WriteFile(spath, []byte(`{"format": 1, "tensors": ["nope"]}`), 0o644)
	if _, _, err := Load(spath); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
	if _, _, err := Load(filepath.Join(dir, "absent")); err == nil {
		t.Error("absent checkpoint loaded")
	}
}

// FuzzDecodeSafetensors: no input may panic the decoder, and whatever it
// accepts re-encodes to a file that decodes to the same tensors.
func FuzzDecodeSafetensors(f *testing.F) {
	var buf bytes.Buffer
	EncodeSafetensors(&buf, sample(), map[string]string{"k": "v"})
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Add([]byte{8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '})
	f.Fuzz(func(t *testing.T, b []byte) {
		tensors, meta, err := DecodeSafetensors(b)
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := EncodeSafetensors(&out, tensors, meta); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, _, err := DecodeSafetensors(out.Bytes())
		if err != nil {
			t.Fatalf("decode re-encoded: %v", err)
		}
		for n, tn := range tensors {
			if !bytes.Equal(again[n].Data, tn.Data) {
				t.Fatalf("tensor %q changed", n)
			}
		}
	})
}

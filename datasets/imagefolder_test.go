package datasets

import (
	"bytes"
	"errors"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// folderTree writes the first n CIFAR training images as an ImageFolder tree under
// root/<class name>/: most as the original JPEG, every fifth as a lossless PNG of the
// decoded pixels in a nested folder. It returns, by relative path, the pixels and class
// name each file must give.
func folderTree(t testing.TB, root string, n int) map[string]refImage {
	t.Helper()
	dir := cifarDir(t)
	names, err := readClassNames(filepath.Join(dir, "classes.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]refImage{}
	for i, r := range readRefShard(t, filepath.Join(dir, "train-0000.tar"), n) {
		class := names[r.label]
		pix := decodeRef(t, r.jpg)
		rel, data := class+"/"+r.key+".jpg", r.jpg
		if i%5 == 0 {
			rel, data = class+"/nested/deeper/"+r.key+".PNG", pngOf(t, pix)
		}
		writeFile(t, filepath.Join(root, filepath.FromSlash(rel)), data)
		want[rel] = refImage{class: class, pix: pix}
	}
	return want
}

type refImage struct {
	class string
	pix   Image
}

// pngOf encodes HWC RGB pixels as PNG.
func pngOf(t testing.TB, im Image) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, im.W, im.H))
	for y := 0; y < im.H; y++ {
		for x := 0; x < im.W; x++ {
			p := im.Pix[(y*im.W+x)*3:]
			img.SetRGBA(x, y, color.RGBA{p[0], p[1], p[2], 255})
		}
	}
	return encodePNG(t, img)
}

// TestImageFolder reads a tree made from real images and checks class labels, keys,
// indices and pixels against what was written.
func TestImageFolder(t *testing.T) {
	root := t.TempDir()
	want := folderTree(t, root, 200)
	// Things the reader must pass over.
	writeFile(t, filepath.Join(root, "cat", "notes.txt"), []byte("not an image"))
	writeFile(t, filepath.Join(root, "cat", ".hidden.jpg"), []byte("junk"))
	writeFile(t, filepath.Join(root, ".cache", "x", "a.jpg"), []byte("junk"))
	writeFile(t, filepath.Join(root, "README"), []byte("a file at the top"))

	ds, err := Open(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	classes := ds.ClassNames()
	if ds.Format() != FormatImageFolder || ds.Len() != 200 || ds.NumClasses() != 10 ||
		!slices.IsSorted(classes) {
		t.Fatalf("format %s, %d samples, classes %v; want imagefolder, 200, 10 sorted",
			ds.Format(), ds.Len(), classes)
	}
	got, l := drain(t, ds, LoaderConfig{BatchSize: 32, Seed: 4, Workers: 2})
	if len(got) != 200 || l.Stats().Skipped != 0 {
		t.Fatalf("delivered %d, skipped %d", len(got), l.Stats().Skipped)
	}
	seen := map[int]bool{}
	for _, s := range got {
		w, ok := want[s.Key]
		if !ok {
			t.Fatalf("unexpected key %q", s.Key)
		}
		if classes[s.Label] != w.class || !sameImage(s.Image, w.pix) || seen[s.Index] {
			t.Fatalf("%s: label %d (%s), want class %s; pixels equal: %v", s.Key, s.Label,
				classes[s.Label], w.class, sameImage(s.Image, w.pix))
		}
		seen[s.Index] = true
	}
}

// TestImageFolderSplitsAndErrors covers split subfolders, grayscale files and the
// errors for trees without images.
func TestImageFolderSplitsAndErrors(t *testing.T) {
	root := t.TempDir()
	folderTree(t, filepath.Join(root, "train"), 30)
	gray := image.NewGray(image.Rect(0, 0, 5, 3))
	writeFile(t, filepath.Join(root, "val", "g", "a.png"), encodePNG(t, gray))
	writeFile(t, filepath.Join(root, "val", "h", "b.png"), pngBytes(t, 4, 4))

	if ds := mustOpen(t, root, Options{}); ds.Len() != 30 {
		t.Fatalf("train split: %d samples, want 30", ds.Len())
	}
	ds := mustOpen(t, root, Options{Split: "test"})
	got, _ := drain(t, ds, LoaderConfig{BatchSize: 2, Sequential: true})
	if len(got) != 2 || got[0].Image.C != 1 || got[0].Key != "g/a.png" ||
		got[1].Image.C != 3 || got[1].Label != 1 {
		t.Fatalf("val split: %+v", got)
	}

	empty := t.TempDir()
	os.MkdirAll(filepath.Join(empty, "a", "b"), 0o755)
	writeFile(t, filepath.Join(empty, "a", "x.txt"), nil)
	flat := t.TempDir()
	writeFile(t, filepath.Join(flat, "x.jpg"), nil)
	for _, c := range []struct{ path, want string }{
		{empty, "1 class folders hold no .jpg"},
		{flat, "no class subfolders"},
		{filepath.Join(flat, "missing"), "no such file"},
	} {
		if _, err := Open(c.path, Options{}); err == nil ||
			!strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Open(%s): error %v, want one naming the path and saying %q", c.path,
				err, c.want)
		}
	}
	if _, err := Open(root, Options{NumClasses: 3}); err == nil ||
		!strings.Contains(err.Error(), "10 class folders") {
		t.Errorf("NumClasses mismatch: error %v", err)
	}
}

// TestImageFolderBadFiles: a corrupt, truncated, oversized or bomb image is skipped,
// counted and reported with its path; strict mode makes it an error.
func TestImageFolderBadFiles(t *testing.T) {
	cases := []struct {
		name string
		data func(good []byte) []byte
		opts Options
		want string
	}{
		{"corrupt", func([]byte) []byte { return []byte("\xff\xd8\xffgarbage") }, Options{},
			"JPEG"},
		{"truncated", func(g []byte) []byte { return g[:len(g)/3] }, Options{}, "jpeg"},
		{"empty", func([]byte) []byte { return nil }, Options{}, "image header"},
		{"bomb", func([]byte) []byte { return pngHeaderOnly(50000, 2) }, Options{},
			"exceeds the 8192-pixel limit"},
		{"too many bytes", func(g []byte) []byte { return bytes.Repeat(g, 20) },
			Options{MaxImageBytes: 10000}, "byte limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			folderTree(t, root, 10)
			// Replace one JPEG (a non-multiple of 5 is a JPEG in folderTree).
			ref := readRefShard(t, filepath.Join(cifarDir(t), "train-0000.tar"), 2)[1]
			names, _ := readClassNames(filepath.Join(cifarDir(t), "classes.txt"))
			rel := names[ref.label] + "/" + ref.key + ".jpg"
			bad := filepath.Join(root, filepath.FromSlash(rel))
			writeFile(t, bad, c.data(ref.jpg))

			logger, logs := newLogBuffer()
			opts := c.opts
			opts.Logger = logger
			ds := mustOpen(t, root, opts)
			got, l := drain(t, ds, LoaderConfig{BatchSize: 4, Seed: 1})
			st := l.Stats()
			if len(got) != 9 || st.Skipped != 1 || len(st.Problems) != 1 {
				t.Fatalf("delivered %d, stats %+v; want 9 delivered, 1 skipped", len(got), st)
			}
			p := st.Problems[0]
			if p.File != bad || p.Key != rel || !containsFold(p.Error(), c.want) {
				t.Fatalf("problem %q, want file %s, key %s, text %q", p, bad, rel, c.want)
			}
			if !strings.Contains(logs.String(), bad) {
				t.Fatalf("log does not name %s:\n%s", bad, logs)
			}

			opts.Strict = true
			err := drainErr(t, mustOpen(t, root, opts), LoaderConfig{BatchSize: 4})
			var se *SampleError
			if !errors.As(err, &se) || se.File != bad {
				t.Fatalf("strict: error %v, want a SampleError for %s", err, bad)
			}
		})
	}
}

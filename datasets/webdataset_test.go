package datasets

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

// TestWebDatasetRealShards reads the CIFAR-10 test shards on two ranks and checks every
// sample against a plain archive/tar reading of the same files: delivered once, with
// its key, label and global index, and (for the first 300 images) the decoded pixels.
func TestWebDatasetRealShards(t *testing.T) {
	dir := cifarDir(t)
	ds, err := Open(dir, Options{Split: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Format() != FormatWebDataset || ds.Len() != 10000 || ds.NumClasses() != 10 {
		t.Fatalf("got format %s, %d samples, %d classes; want webdataset, 10000, 10",
			ds.Format(), ds.Len(), ds.NumClasses())
	}
	if names := ds.ClassNames(); len(names) != 10 || names[0] != "airplane" ||
		names[9] != "truck" {
		t.Fatalf("class names %v", names)
	}

	// The reference: index = shard offset + position, in name order.
	type ref struct {
		index, label int
		jpg          []byte
	}
	want := map[string]ref{}
	for s, name := range []string{"test-0000.tar", "test-0001.tar"} {
		for i, r := range readRefShard(t, filepath.Join(dir, name), 0) {
			want[r.key] = ref{index: s*5000 + i, label: r.label, jpg: r.jpg}
		}
	}

	// Two data-parallel ranks (one shard each) must together deliver every sample once.
	var got []Sample
	for rank := 0; rank < 2; rank++ {
		part, l := drain(t, ds, LoaderConfig{BatchSize: 128, Seed: 7, Workers: 2,
			Rank: rank, WorldSize: 2})
		if st := l.Stats(); st.Delivered != 5000 || st.Skipped != 0 || st.BadShards != 0 {
			t.Fatalf("rank %d: stats %+v", rank, st)
		}
		got = append(got, part...)
	}
	if len(got) != 10000 {
		t.Fatalf("delivered %d samples, want 10000", len(got))
	}
	seen := map[string]bool{}
	for _, s := range got {
		w, ok := want[s.Key]
		switch {
		case !ok || seen[s.Key]:
			t.Fatalf("key %q unknown or repeated", s.Key)
		case s.Index != w.index || s.Label != w.label:
			t.Fatalf("%s: index %d label %d, want %d and %d", s.Key, s.Index, s.Label,
				w.index, w.label)
		case s.Image.H != 32 || s.Image.W != 32 || s.Image.C != 3:
			t.Fatalf("%s: image %dx%dx%d, want 32x32x3", s.Key, s.Image.H, s.Image.W,
				s.Image.C)
		}
		seen[s.Key] = true
		if w.index < 300 && !sameImage(s.Image, decodeRef(t, w.jpg)) {
			t.Fatalf("%s: pixels differ from image/jpeg's decoding", s.Key)
		}
	}
}

// TestWebDatasetCompression writes one shard as .tar, .tar.gz and .tar.zst: all three
// must give the same samples in the same order.
func TestWebDatasetCompression(t *testing.T) {
	refs := readRefShard(t, filepath.Join(cifarDir(t), "train-0000.tar"), 150)
	members := membersOf(refs)
	tmp := t.TempDir()
	var first []Sample
	for _, c := range []struct{ name, codec string }{
		{"s.tar", ""}, {"s.tar.gz", "gzip"}, {"s.tar.zst", "zstd"},
	} {
		path := filepath.Join(tmp, c.name)
		writeFile(t, path, tarBytes(t, members, c.codec))
		ds, err := Open(path, Options{NumClasses: 10})
		if err != nil {
			t.Fatal(err)
		}
		if ds.Len() != 150 {
			t.Fatalf("%s: %d samples, want 150", c.name, ds.Len())
		}
		got, _ := drain(t, ds, LoaderConfig{BatchSize: 16, Sequential: true, Workers: 1})
		if len(got) != 150 {
			t.Fatalf("%s: delivered %d, want 150", c.name, len(got))
		}
		for i, s := range got {
			if s.Key != refs[i].key || s.Label != refs[i].label || s.Index != i {
				t.Fatalf("%s: sample %d is %s/%d/%d, want %s/%d/%d", c.name, i, s.Key,
					s.Label, s.Index, refs[i].key, refs[i].label, i)
			}
		}
		if first == nil {
			first = got
			continue
		}
		for i := range got {
			if !sameImage(got[i].Image, first[i].Image) {
				t.Fatalf("%s: sample %d pixels differ from the .tar shard", c.name, i)
			}
		}
	}
}

// TestWebDatasetPaths covers the ways of naming shards: a glob, a folder with a split,
// a single file, and the errors for a missing path or split.
func TestWebDatasetPaths(t *testing.T) {
	dir := cifarDir(t)
	cases := []struct {
		path    string
		opts    Options
		want    int
		wantErr string
	}{
		{filepath.Join(dir, "train-000[0-1].tar"), Options{}, 10000, ""},
		{filepath.Join(dir, "test-0001.tar"), Options{}, 5000, ""},
		{filepath.Join(dir, "nothing-*.tar"), Options{}, 0, "no .tar"},
		{filepath.Join(dir, "missing.tar"), Options{}, 0, "no such file"},
		{dir, Options{Split: "validation"}, 0, `split "validation"`},
	}
	for _, c := range cases {
		ds, err := Open(c.path, c.opts)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("Open(%s): error %v, want one containing %q", c.path, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%s): %v", c.path, err)
		} else if ds.Len() != c.want {
			t.Errorf("Open(%s): %d samples, want %d", c.path, ds.Len(), c.want)
		}
	}

	// A folder of shards with no test split.
	tmp := t.TempDir()
	refs := readRefShard(t, filepath.Join(dir, "train-0000.tar"), 3)
	writeFile(t, filepath.Join(tmp, "train-0.tar"), tarBytes(t, membersOf(refs), ""))
	if _, err := Open(tmp, Options{Split: "test"}); err == nil ||
		!strings.Contains(err.Error(), `split "test"`) {
		t.Errorf("test split of a train-only folder: error %v", err)
	}
}

// TestWebDatasetLabels covers .json labels, samples without labels, and a dataset with
// no labels at all.
func TestWebDatasetLabels(t *testing.T) {
	refs := readRefShard(t, filepath.Join(cifarDir(t), "train-0000.tar"), 4)
	members := []tarMember{
		{"a/0.jpg", refs[0].jpg}, {"a/0.json", []byte(`{"label": 3, "x": [1]}`)},
		{"a/1.jpg", refs[1].jpg}, {"a/1.json", []byte(`5`)},
		{"a/2.jpg", refs[2].jpg}, // no label
		{"a/3.json", []byte(`{"cls": 1}`)}, {"a/3.jpeg", refs[3].jpg},
		{"a/3.cls", []byte("2")}, // .cls wins over .json
		{"a/4.txt", []byte("metadata only: not a sample")},
	}
	tmp := t.TempDir()
	path := filepath.Join(tmp, "l.tar")
	writeFile(t, path, tarBytes(t, members, ""))
	ds, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Len() != 4 || ds.NumClasses() != 6 {
		t.Fatalf("%d samples, %d classes; want 4 and 6 (largest label + 1)", ds.Len(),
			ds.NumClasses())
	}
	got, _ := drain(t, ds, LoaderConfig{BatchSize: 4, Sequential: true})
	wantLabels := map[string]int{"a/0": 3, "a/1": 5, "a/2": -1, "a/3": 2}
	for _, s := range got {
		if s.Label != wantLabels[s.Key] {
			t.Errorf("%s: label %d, want %d", s.Key, s.Label, wantLabels[s.Key])
		}
	}

	unlabelled := filepath.Join(tmp, "u.tar")
	writeFile(t, unlabelled, tarBytes(t, []tarMember{{"x.png", pngBytes(t, 4, 4)}}, ""))
	ds, err = Open(unlabelled, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = drain(t, ds, LoaderConfig{BatchSize: 4})
	if ds.NumClasses() != 0 || len(got) != 1 || got[0].Label != -1 {
		t.Fatalf("unlabelled: %d classes, %d samples; want 0 classes, 1 sample, label -1",
			ds.NumClasses(), len(got))
	}
}

// TestWebDatasetBadData: each kind of bad shard content is skipped, counted and
// reported with file and key, or is an error where the issue says so.
func TestWebDatasetBadData(t *testing.T) {
	refs := readRefShard(t, filepath.Join(cifarDir(t), "train-0000.tar"), 20)
	good := membersOf(refs)
	with := func(i int, m tarMember) []tarMember {
		out := append([]tarMember(nil), good...)
		out[i] = m
		return out
	}
	full := tarBytes(t, good, "")
	// Cut the stream 100 bytes into the image of the 11th sample: the first ten
	// samples end where a tar of them alone puts its 1024-byte end marker.
	end10 := len(tarBytes(t, good[:20], "")) - 1024
	cut := full[:end10+512+100]

	cases := []struct {
		name        string
		shard       []byte
		opts        Options
		openErr     string // Open fails with this
		scanBad     int    // problems Open counts (lenient)
		wantLen     int
		skipped     int
		badShards   int
		problemKey  string // the key reported first
		problemText string
	}{
		{name: "corrupt jpeg", shard: tarBytes(t, with(6, tarMember{refs[3].key + ".jpg",
			[]byte("\xff\xd8\xff not really a jpeg")}), ""),
			wantLen: 20, skipped: 1, problemKey: refs[3].key, problemText: "jpeg"},
		{name: "truncated jpeg", shard: tarBytes(t, with(8, tarMember{refs[4].key + ".jpg",
			refs[4].jpg[:len(refs[4].jpg)/2]}), ""),
			wantLen: 20, skipped: 1, problemKey: refs[4].key, problemText: "jpeg"},
		{name: "unreadable cls", shard: tarBytes(t, with(3, tarMember{refs[1].key + ".cls",
			[]byte("cat")}), ""),
			scanBad: 1, wantLen: 20, skipped: 1, problemKey: refs[1].key,
			problemText: "not a 32-bit decimal"},
		{name: "oversized member", shard: full, opts: Options{MaxImageBytes: 100},
			scanBad: 20, wantLen: 20, skipped: 20, problemText: "byte limit"},
		{name: "image too large", shard: tarBytes(t, with(0, tarMember{refs[0].key + ".png",
			pngHeaderOnly(100000, 2)}), ""),
			wantLen: 20, skipped: 1, problemKey: refs[0].key, problemText: "exceeds"},
		{name: "truncated shard", shard: cut,
			scanBad: 1, wantLen: 10, badShards: 1, problemText: "unexpected EOF"},
		{name: "label out of range", shard: tarBytes(t, with(5, tarMember{refs[2].key + ".cls",
			[]byte("10")}), ""), opts: Options{NumClasses: 10},
			openErr: "label 10 out of range [0, 10)"},
		{name: "negative label", shard: tarBytes(t, with(5, tarMember{refs[2].key + ".cls",
			[]byte("-4")}), ""), openErr: "label -4 is negative"},
		{name: "no images", shard: tarBytes(t, []tarMember{{"a.cls", []byte("1")}}, ""),
			openErr: "hold no sample"},
		{name: "empty file", shard: nil, openErr: "hold no sample"},
		{name: "not a tar", shard: []byte(strings.Repeat("garbage ", 200)),
			scanBad: 1, openErr: "hold no sample"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.tar")
			writeFile(t, path, c.shard)
			logger, logs := newLogBuffer()
			opts := c.opts
			opts.Logger = logger
			ds, err := Open(path, opts)
			if c.openErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.openErr) ||
					!strings.Contains(err.Error(), path) {
					t.Fatalf("Open: error %v, want one naming %s and saying %q", err, path,
						c.openErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			st := ds.Stats()
			if n := st.Skipped + st.BadShards; n != int64(c.scanBad) {
				t.Fatalf("Open counted %d problems, want %d", n, c.scanBad)
			}
			if ds.Len() != c.wantLen {
				t.Fatalf("Len %d, want %d", ds.Len(), c.wantLen)
			}
			got, l := drain(t, ds, LoaderConfig{BatchSize: 8, Seed: 1, Workers: 1})
			ls := l.Stats()
			wantSkipped := int64(c.skipped)
			if ls.Skipped != wantSkipped || ls.BadShards != int64(c.badShards) {
				t.Fatalf("loader stats %+v, want %d skipped and %d bad shards", ls,
					wantSkipped, c.badShards)
			}
			if int64(len(got)) != int64(c.wantLen)-wantSkipped || ls.Delivered !=
				int64(len(got)) {
				t.Fatalf("delivered %d (%d counted), want %d", len(got), ls.Delivered,
					int64(c.wantLen)-wantSkipped)
			}
			p := ls.Problems[0]
			if p.File != path || (c.problemKey != "" && p.Key != c.problemKey) ||
				!containsFold(p.Error(), c.problemText) {
				t.Fatalf("problem %q, want file %s, key %q, text %q", p, path,
					c.problemKey, c.problemText)
			}
			if !strings.Contains(logs.String(), "key="+p.Key) {
				t.Fatalf("log does not name key %q:\n%s", p.Key, logs)
			}

			// Strict mode fails where lenient mode skipped.
			opts.Strict = true
			ds, err = Open(path, opts)
			if err == nil {
				err = drainErr(t, ds, LoaderConfig{BatchSize: 8, Seed: 1, Workers: 1})
			}
			var se *SampleError
			if !errors.As(err, &se) || se.File != path ||
				!containsFold(err.Error(), c.problemText) {
				t.Fatalf("strict: error %v, want a SampleError for %s", err, path)
			}
		})
	}
}

// FuzzShardReader feeds arbitrary bytes to the shard reader in both of its modes and
// decodes whatever images come out; nothing may panic or hang.
func FuzzShardReader(f *testing.F) {
	refs := readRefShard(f, filepath.Join(cifarDir(f), "train-0000.tar"), 2)
	members := membersOf(refs)
	members = append(members, tarMember{"x/y.json", []byte(`{"label": 1}`)},
		tarMember{"x/y.png", pngBytes(f, 3, 2)})
	for _, codec := range []string{"", "gzip", "zstd"} {
		data := tarBytes(f, members, codec)
		f.Add(data)
		f.Add(data[:len(data)/2])
	}
	f.Add([]byte{})
	f.Add(tarBytes(f, []tarMember{{"a.cls", []byte("99999999999999")},
		{"b.json", []byte(`{"label": "x"}`)}, {"c.png", pngHeaderOnly(1<<20, 0)}}, ""))

	f.Fuzz(func(t *testing.T, data []byte) {
		const maxSide = 256
		for _, withImages := range []bool{true, false} {
			var sr *shardReader
			if withImages {
				var err error
				sr, err = newShardReader(bufio.NewReader(bytes.NewReader(data)), true, 1<<16)
				if err != nil {
					return
				}
			} else {
				sr = &shardReader{tr: tarReaderOver(bytes.NewReader(data)), maxBytes: 1 << 16}
			}
			for i := 0; i < 10000; i++ {
				raw, err := sr.next()
				if err != nil {
					break
				}
				if raw.pos != i {
					t.Fatalf("sample %d has position %d", i, raw.pos)
				}
				if withImages && raw.err == nil {
					var img Image
					if decodeImage(raw.data, maxSide, &img) == nil &&
						len(img.Pix) != img.H*img.W*img.C {
						t.Fatalf("decoded %d bytes for %dx%dx%d", len(img.Pix), img.H,
							img.W, img.C)
					}
				}
			}
			sr.close()
		}
	})
}

// TestSeekBuffer checks the buffered seeker the scan uses against bytes.Reader.
func TestSeekBuffer(t *testing.T) {
	data := make([]byte, 5000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	sb := newSeekBuffer(bytes.NewReader(data), 64)
	ref := bytes.NewReader(data)
	steps := []struct {
		off    int64
		whence int
		read   int
	}{
		{0, io.SeekCurrent, 10}, {5, io.SeekCurrent, 30}, {-20, io.SeekCurrent, 5},
		{1000, io.SeekCurrent, 100}, {3, io.SeekStart, 70}, {-10, io.SeekEnd, 20},
		{4990, io.SeekStart, 1}, {-4000, io.SeekCurrent, 64},
	}
	for i, s := range steps {
		p1, err1 := sb.Seek(s.off, s.whence)
		p2, err2 := ref.Seek(s.off, s.whence)
		if p1 != p2 || (err1 == nil) != (err2 == nil) {
			t.Fatalf("step %d: seek to %d (%v), want %d (%v)", i, p1, err1, p2, err2)
		}
		b1, _ := io.ReadAll(io.LimitReader(sb, int64(s.read)))
		b2, _ := io.ReadAll(io.LimitReader(ref, int64(s.read)))
		if !bytes.Equal(b1, b2) {
			t.Fatalf("step %d: read %v, want %v", i, b1, b2)
		}
	}
}

// tarReaderOver reads a tar stream the way the scan does, through a seekBuffer.
func tarReaderOver(r io.ReadSeeker) *tar.Reader {
	return tar.NewReader(newSeekBuffer(r, 4096))
}

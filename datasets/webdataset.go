package datasets

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// A WebDataset shard is a tar file (optionally gzip or zstd compressed, detected from
// its first bytes). Consecutive members sharing a key — the member path up to the first
// dot of its last element — form one sample: "a/b123.jpg" and "a/b123.cls" are the
// image and label of sample "a/b123". A run of members with no .jpg, .jpeg or .png is
// not a sample.

const (
	maxLabelBytes = 64      // a .cls member: a decimal integer
	maxJSONBytes  = 1 << 20 // a .json member holding the label
	maxZstdWindow = 1 << 27 // bytes; refuse zstd frames that ask for more memory
)

// shardDataset is a set of tar shards, streamed by the Loader. Open counts the samples
// of every shard once (reading headers only, for uncompressed shards) so that Len,
// global sample indices and batches per epoch are known before loading.
type shardDataset struct {
	opts       Options
	dir        string
	shards     []shardInfo // sorted by path
	total      int
	numClasses int // 0: unlabelled or unknown
	classNames []string
	stats      Stats
}

// shardInfo is what the scan learned about one shard.
type shardInfo struct {
	path   string
	count  int // samples before the end of the shard or the point where it breaks
	offset int // global index of its first sample
}

// openShards scans the shards and checks their labels. The scan reads every shard in
// full when it is compressed; uncompressed shards are read header by header.
func openShards(paths []string, dir string, opts Options) (Dataset, error) {
	d := &shardDataset{opts: opts, dir: dir}
	names, err := readClassNames(filepath.Join(dir, "classes.txt"))
	if err != nil {
		return nil, err
	}
	d.classNames = names
	limit := opts.NumClasses
	if limit == 0 {
		limit = len(names)
	}
	if opts.NumClasses > 0 && names != nil && len(names) != opts.NumClasses {
		return nil, fmt.Errorf("classes.txt lists %d classes, but Options.NumClasses is %d",
			len(names), opts.NumClasses)
	}

	rep := newReporter(opts.Logger)
	results, err := scanShards(paths, limit, opts, rep)
	if err != nil {
		return nil, err
	}
	maxLabel := -1
	for i, res := range results {
		d.shards = append(d.shards, shardInfo{path: paths[i], count: res.count,
			offset: d.total})
		d.total += res.count
		maxLabel = max(maxLabel, res.maxLabel)
	}
	d.stats = rep.snapshot()
	if d.total == 0 {
		return nil, fmt.Errorf("%d shards hold no sample (no .jpg, .jpeg or .png member)",
			len(paths))
	}
	d.numClasses = limit
	if limit == 0 {
		d.numClasses = maxLabel + 1
	}
	return d, nil
}

// readClassNames reads classes.txt (one name per line, in label order), or returns nil
// when there is none.
func readClassNames(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			names = append(names, line)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s: no class names", path)
	}
	return names, nil
}

// scanResult is the outcome of scanning one shard.
type scanResult struct {
	count    int
	maxLabel int
	err      error
}

// scanShards counts the samples of each shard in parallel. A label outside [0, limit)
// (limit 0: any non-negative label) is an error; other problems are reported to rep,
// or are errors in strict mode.
func scanShards(paths []string, limit int, opts Options, rep *reporter) ([]scanResult,
	error) {
	results := make([]scanResult, len(paths))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(runtime.GOMAXPROCS(0), len(paths)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				results[i] = scanShard(paths[i], limit, opts, rep)
			}
		}()
	}
	for i := range paths {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	for _, res := range results {
		if res.err != nil {
			return nil, res.err
		}
	}
	return results, nil
}

// scanShard counts one shard's samples without decoding images.
func scanShard(p string, limit int, opts Options, rep *reporter) scanResult {
	res := scanResult{maxLabel: -1}
	sr, err := openShardFile(p, false, opts)
	if err != nil {
		res.err = err
		return res
	}
	defer sr.close()
	for {
		raw, err := sr.next()
		if err == io.EOF {
			return res
		}
		if err != nil {
			e := &SampleError{File: p, Err: fmt.Errorf("after %d samples: %w", res.count, err)}
			if opts.Strict {
				res.err = e
				return res
			}
			rep.badShard(e)
			return res
		}
		res.count++
		if raw.err != nil {
			e := &SampleError{File: p, Key: raw.key, Err: raw.err}
			if opts.Strict {
				res.err = e
				return res
			}
			rep.badSample(e)
			continue
		}
		if !raw.labeled {
			continue
		}
		if err := checkLabel(raw.label, limit); err != nil {
			res.err = &SampleError{File: p, Key: raw.key, Err: err}
			return res
		}
		res.maxLabel = max(res.maxLabel, raw.label)
	}
}

// checkLabel accepts labels in [0, limit); limit 0 means the class count is unknown.
func checkLabel(label, limit int) error {
	if label < 0 || (limit > 0 && label >= limit) {
		if limit > 0 {
			return fmt.Errorf("label %d out of range [0, %d)", label, limit)
		}
		return fmt.Errorf("label %d is negative", label)
	}
	return nil
}

// The Dataset methods; Dataset states their contracts.
func (d *shardDataset) Format() Format       { return FormatWebDataset }
func (d *shardDataset) Len() int             { return d.total }
func (d *shardDataset) NumClasses() int      { return d.numClasses }
func (d *shardDataset) ClassNames() []string { return append([]string(nil), d.classNames...) }
func (d *shardDataset) Stats() Stats         { return d.stats }
func (d *shardDataset) reader() sampleReader { return d }
func (d *shardDataset) options() Options     { return d.opts }

func (d *shardDataset) Source() string {
	if len(d.shards) == 1 {
		return d.shards[0].path
	}
	return fmt.Sprintf("%s (%d shards)", d.dir, len(d.shards))
}

// rawSample is one sample as stored in a shard: the encoded image and the label.
type rawSample struct {
	key     string
	pos     int    // position among the shard's samples
	data    []byte // encoded image; nil when the reader skips images
	label   int
	labeled bool  // false: the sample has no label member
	err     error // why the sample is bad (oversized image, unreadable label), or nil
}

// shardReader yields a shard's samples in order.
type shardReader struct {
	tr         *tar.Reader
	closers    []func()
	withImages bool
	maxBytes   int64
	look       *tar.Header // first member of the next sample, payload not yet read
	pos        int
	err        error // sticky: io.EOF or the error that broke the stream
}

// openShardFile opens a shard for reading. Without images (the scan), an uncompressed
// shard is read through the file itself, so tar seeks over image payloads.
func openShardFile(p string, withImages bool, opts Options) (*shardReader, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	var magic [4]byte
	n, _ := f.ReadAt(magic[:], 0)
	if !withImages && codecOf(magic[:n]) == "" {
		return &shardReader{tr: tar.NewReader(newSeekBuffer(f, 1<<18)),
			closers: []func(){func() { f.Close() }}, maxBytes: opts.MaxImageBytes}, nil
	}
	sr, err := newShardReader(bufio.NewReaderSize(f, 1<<18), withImages, opts.MaxImageBytes)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	sr.closers = append(sr.closers, func() { f.Close() })
	return sr, nil
}

// seekBuffer is a buffered reader that can also seek, so that tar skips a large member
// with one seek while small members and headers come from the buffer.
type seekBuffer struct {
	f        io.ReadSeeker
	buf      []byte
	r, w     int   // unread bytes are buf[r:w]
	bufStart int64 // file offset of buf[0]
}

func newSeekBuffer(f io.ReadSeeker, size int) *seekBuffer {
	return &seekBuffer{f: f, buf: make([]byte, size)}
}

func (s *seekBuffer) Read(p []byte) (int, error) {
	if s.r == s.w {
		s.bufStart += int64(s.w)
		s.r, s.w = 0, 0
		n, err := s.f.Read(s.buf)
		s.w = n
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, s.buf[s.r:s.w])
	s.r += n
	return n, nil
}

// Seek moves within the buffer when it can, else seeks the file and empties the buffer.
func (s *seekBuffer) Seek(offset int64, whence int) (int64, error) {
	pos := s.bufStart + int64(s.r)
	switch whence {
	case io.SeekCurrent:
		offset += pos
	case io.SeekStart:
	default:
		s.bufStart += int64(s.w)
		s.r, s.w = 0, 0
		abs, err := s.f.Seek(offset, whence)
		s.bufStart = abs
		return abs, err
	}
	if offset >= s.bufStart && offset <= s.bufStart+int64(s.w) {
		s.r = int(offset - s.bufStart)
		return offset, nil
	}
	abs, err := s.f.Seek(offset, io.SeekStart)
	if err != nil {
		return pos, err
	}
	s.bufStart, s.r, s.w = abs, 0, 0
	return abs, nil
}

// codecOf names the compression that a stream's first bytes announce, "" for none.
func codecOf(magic []byte) string {
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return "gzip"
	case len(magic) >= 4 && bytes.Equal(magic[:4], []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return "zstd"
	}
	return ""
}

// newShardReader reads a tar stream from br, decompressing gzip or zstd when its first
// bytes say so.
func newShardReader(br *bufio.Reader, withImages bool, maxBytes int64) (*shardReader,
	error) {
	sr := &shardReader{withImages: withImages, maxBytes: maxBytes}
	magic, _ := br.Peek(4)
	var r io.Reader = br
	switch codecOf(magic) {
	case "gzip":
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip: %w", err)
		}
		r = zr
	case "zstd":
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxZstdWindow),
			zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			return nil, fmt.Errorf("zstd: %w", err)
		}
		sr.closers = append(sr.closers, zr.Close)
		r = zr
	}
	sr.tr = tar.NewReader(r)
	return sr, nil
}

func (s *shardReader) close() {
	for _, c := range s.closers {
		c()
	}
}

// group collects the members of one sample.
type group struct {
	key        string
	hasImage   bool
	data       []byte
	label      int
	labeled    bool
	labelIsCls bool // a .cls label wins over a .json one
	err        error
}

// next returns the next sample, io.EOF after the last, or the error that broke the tar
// stream (the sample being assembled then is dropped).
func (s *shardReader) next() (rawSample, error) {
	for s.err == nil {
		g, err := s.nextGroup()
		if err != nil {
			s.err = err
			break
		}
		if !g.hasImage {
			continue // labels or metadata without an image: not a sample
		}
		raw := rawSample{key: g.key, pos: s.pos, data: g.data, label: g.label,
			labeled: g.labeled, err: g.err}
		s.pos++
		return raw, nil
	}
	return rawSample{}, s.err
}

// nextGroup reads the members that share the next key.
func (s *shardReader) nextGroup() (group, error) {
	h := s.look
	s.look = nil
	if h == nil {
		var err error
		if h, err = s.nextMember(); err != nil {
			return group{}, err
		}
	}
	g := group{key: memberKey(h.Name)}
	if err := s.add(&g, h); err != nil {
		return group{}, err
	}
	for {
		h, err := s.nextMember()
		if err == io.EOF {
			return g, nil // the next call returns io.EOF
		}
		if err != nil {
			return group{}, err
		}
		if memberKey(h.Name) != g.key {
			s.look = h
			return g, nil
		}
		if err := s.add(&g, h); err != nil {
			return group{}, err
		}
	}
}

// nextMember returns the next regular file member with an extension.
func (s *shardReader) nextMember() (*tar.Header, error) {
	for {
		h, err := s.tr.Next()
		if err != nil {
			return nil, err
		}
		if h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA {
			continue
		}
		if memberExt(h.Name) == "" {
			continue
		}
		return h, nil
	}
}

// memberKey and memberExt split "dir/name.ext.more" into "dir/name" and "ext.more".
func memberKey(name string) string {
	dir, base := path.Split(name)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return dir + base
}

func memberExt(name string) string {
	_, base := path.Split(name)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		return strings.ToLower(base[i+1:])
	}
	return ""
}

// add reads member h (the tar reader's current entry) into g. Only an error that breaks
// the stream is returned; a bad member marks g instead.
func (s *shardReader) add(g *group, h *tar.Header) error {
	switch ext := memberExt(h.Name); ext {
	case "jpg", "jpeg", "png":
		if g.hasImage {
			return nil // a second image of the same sample is ignored
		}
		g.hasImage = true
		if h.Size > s.maxBytes {
			g.setErr(fmt.Errorf("member %s is %d bytes: more than the %d-byte limit",
				h.Name, h.Size, s.maxBytes))
			return nil
		}
		if !s.withImages {
			return nil
		}
		data, err := readMember(s.tr, h.Size)
		if err != nil {
			return fmt.Errorf("member %s: %w", h.Name, err)
		}
		g.data = data
	case "cls", "json":
		if g.labelIsCls {
			return nil
		}
		limit := int64(maxLabelBytes)
		if ext == "json" {
			limit = maxJSONBytes
		}
		if h.Size > limit {
			g.setErr(fmt.Errorf("member %s is %d bytes: more than the %d bytes a "+
				"label may take", h.Name, h.Size, limit))
			return nil
		}
		data, err := readMember(s.tr, h.Size)
		if err != nil {
			return fmt.Errorf("member %s: %w", h.Name, err)
		}
		label, ok, err := parseLabel(ext, data)
		if err != nil {
			g.setErr(fmt.Errorf("member %s: %w", h.Name, err))
			return nil
		}
		if ok {
			g.label, g.labeled, g.labelIsCls = label, true, ext == "cls"
		}
	}
	return nil
}

func (g *group) setErr(err error) {
	if g.err == nil {
		g.err = err
	}
}

// readMember reads the current member's size bytes.
func readMember(r io.Reader, size int64) ([]byte, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, noEOF(err)
	}
	return buf, nil
}

// parseLabel reads a label member: .cls holds a decimal integer; .json holds a number
// or an object with an integer "label" or "cls" field. ok is false for a .json without
// either. The range is checked by the caller.
func parseLabel(ext string, data []byte) (label int, ok bool, err error) {
	if ext == "cls" {
		text := strings.TrimSpace(string(data))
		n, err := strconv.ParseInt(text, 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("label %q is not a 32-bit decimal integer", text)
		}
		return int(n), true, nil
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return 0, false, fmt.Errorf("json: %w", err)
	}
	if obj, isObj := v.(map[string]any); isObj {
		if v, ok = obj["label"]; !ok {
			if v, ok = obj["cls"]; !ok {
				return 0, false, nil
			}
		}
	}
	num, isNum := v.(json.Number)
	if !isNum {
		return 0, false, fmt.Errorf("json label %v is not a number", v)
	}
	n, err := strconv.ParseInt(string(num), 10, 32)
	if err != nil {
		return 0, false, fmt.Errorf("json label %s is not a 32-bit integer", num)
	}
	return int(n), true, nil
}

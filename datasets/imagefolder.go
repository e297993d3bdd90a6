package datasets

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// folderDataset is an ImageFolder tree: root/<class>/**/<image>.{jpg,jpeg,png}. Class
// labels follow the sorted class folder names; files are listed once at Open and read
// and decoded on demand.
type folderDataset struct {
	root    string
	opts    Options
	classes []string
	files   []string // relative to root, with "/" separators; sorted within each class
	labels  []int32
}

// openImageFolder lists the images under root's class folders. Hidden files and folders
// (names starting with ".") are ignored; a class folder may be empty, the tree may not.
func openImageFolder(root string, opts Options) (Dataset, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	d := &folderDataset{root: root, opts: opts}
	for _, e := range entries {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			d.classes = append(d.classes, e.Name())
		}
	}
	if len(d.classes) == 0 {
		return nil, errors.New("no class subfolders and no known data files " +
			"(shards, IDX, CIFAR .bin)")
	}
	sort.Strings(d.classes)
	if opts.NumClasses > 0 && opts.NumClasses != len(d.classes) {
		return nil, fmt.Errorf("%d class folders, but Options.NumClasses is %d",
			len(d.classes), opts.NumClasses)
	}

	for label, class := range d.classes {
		files, err := listImages(root, class)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			d.files = append(d.files, f)
			d.labels = append(d.labels, int32(label))
		}
	}
	if len(d.files) == 0 {
		return nil, fmt.Errorf("%d class folders hold no .jpg, .jpeg or .png file",
			len(d.classes))
	}
	return d, nil
}

// listImages walks root/class recursively and returns its image files, sorted.
func listImages(root, class string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(filepath.Join(root, class),
		func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if strings.HasPrefix(e.Name(), ".") {
				if e.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
			if e.IsDir() || !isImageName(e.Name()) {
				return nil
			}
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
			return nil
		})
	sort.Strings(files)
	return files, err
}

func isImageName(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".jpg", ".jpeg", ".png":
		return true
	}
	return false
}

// The Dataset methods; Dataset states their contracts.
func (d *folderDataset) Format() Format       { return FormatImageFolder }
func (d *folderDataset) Source() string       { return d.root }
func (d *folderDataset) Len() int             { return len(d.files) }
func (d *folderDataset) NumClasses() int      { return len(d.classes) }
func (d *folderDataset) ClassNames() []string { return append([]string(nil), d.classes...) }
func (d *folderDataset) Stats() Stats         { return Stats{} }
func (d *folderDataset) reader() sampleReader { return d }
func (d *folderDataset) options() Options     { return d.opts }

// load reads and decodes file i into dst. A file larger than MaxImageBytes is refused
// before it is read.
func (d *folderDataset) load(i int, dst *Sample) error {
	if i < 0 || i >= len(d.files) {
		return fmt.Errorf("index %d out of range [0, %d)", i, len(d.files))
	}
	dst.Key, dst.Index, dst.Label = d.files[i], i, int(d.labels[i])
	data, err := readCapped(d.fileOf(i), d.opts.MaxImageBytes)
	if err != nil {
		return err
	}
	return decodeImage(data, d.opts.MaxImageSide, &dst.Image)
}

// fileOf is the file of sample i on disk.
func (d *folderDataset) fileOf(i int) string {
	return filepath.Join(d.root, filepath.FromSlash(d.files[i]))
}

// readCapped reads a whole file that must not exceed limit bytes. The size is checked
// before reading and again while reading, in case the file grows.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if info.Size() > limit {
		return nil, fmt.Errorf("%d bytes: more than the %d-byte limit per image",
			info.Size(), limit)
	}
	buf := bytes.NewBuffer(make([]byte, 0, info.Size()+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, fmt.Errorf("more than the %d-byte limit per image", limit)
	}
	return buf.Bytes(), nil
}
